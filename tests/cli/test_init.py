"""``aigw init DIR``: an editable copy of the packaged configuration that the gateway then
reads, from any working directory; existing files are kept unless ``--force``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli.init import FILE_SETTINGS
from gateway.ingest.sources import load_directory
from gateway.packaged import PACKAGED_CONFIGS
from gateway.routing import load_rules
from gateway.settings import load_settings
from workers.cli import main as cli

WRITTEN = {
    "gateway.yaml",
    "sources.yaml",
    "regions.yaml",
    "routing.yaml",
    "destinations.yaml",
    "semd.yaml",
}


@pytest.fixture
def elsewhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No AIGW_* variables from outside; the working directory is not the configuration's."""
    for key in list(os.environ):
        if key.startswith("AIGW_"):
            monkeypatch.delenv(key)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_init_writes_the_packaged_files_and_the_settings_point_at_them(
    elsewhere: Path, tmp_path: Path
) -> None:
    target = tmp_path / "conf"
    result = CliRunner().invoke(cli, ["init", str(target)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in target.iterdir()} == WRITTEN
    for name in WRITTEN - {"gateway.yaml"}:
        assert (target / name).read_bytes() == (PACKAGED_CONFIGS / name).read_bytes(), name
    assert f"aigw serve --config {target / 'gateway.yaml'}" in result.output

    # The copies are what the settings name, whatever the working directory.
    settings = load_settings(target / "gateway.yaml")
    for key in FILE_SETTINGS:
        assert getattr(settings, key).parent == target, key
    # The packaged comments came along.
    text = (target / "gateway.yaml").read_text(encoding="utf-8")
    assert "AIGW_<KEY>" in text and "# Who may send" in text


def test_an_edited_copy_is_what_the_gateway_reads(elsewhere: Path, tmp_path: Path) -> None:
    target = tmp_path / "conf"
    assert CliRunner().invoke(cli, ["init", str(target)]).exit_code == 0
    sources = target / "sources.yaml"
    sources.write_text(
        sources.read_text(encoding="utf-8").replace("ae_title: IRK_CAMI", "ae_title: EDITED_AE"),
        encoding="utf-8",
    )
    settings = load_settings(target / "gateway.yaml")
    directory = load_directory(settings.sources_file, settings.regions_file, settings.open_mode)
    edited = directory.match("EDITED_AE", "127.0.0.1")
    assert edited is not None and edited.name == "irk-cami"
    assert directory.match("IRK_CAMI", "127.0.0.1") is None
    assert load_rules(settings.routing_file).rules  # the routing copy loads as rules


def test_init_refuses_to_overwrite_and_writes_nothing(elsewhere: Path, tmp_path: Path) -> None:
    target = tmp_path / "conf"
    target.mkdir()
    (target / "routing.yaml").write_text("# my rules\n")
    refused = CliRunner().invoke(cli, ["init", str(target)])
    assert refused.exit_code == 1
    assert str(target / "routing.yaml") in refused.output and "--force" in refused.output
    assert (target / "routing.yaml").read_text() == "# my rules\n"
    assert [p.name for p in target.iterdir()] == ["routing.yaml"]  # nothing else written

    forced = CliRunner().invoke(cli, ["init", str(target), "--force"])
    assert forced.exit_code == 0, forced.output
    assert (target / "routing.yaml").read_bytes() == (
        PACKAGED_CONFIGS / "routing.yaml"
    ).read_bytes()
    assert {p.name for p in target.iterdir()} == WRITTEN


def test_init_into_a_file_is_refused(elsewhere: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "gateway.yaml"
    a_file.write_text("ae_title: MINE\n")
    result = CliRunner().invoke(cli, ["init", str(a_file)])
    assert result.exit_code != 0
    assert a_file.read_text() == "ae_title: MINE\n"
