"""Default paths: a relative name is the working directory's; a default name the working
directory lacks (``configs/…``, ``models/zoo``) is the packaged file; anything else stays as
written. And the packaged gateway.yaml spells out the built-in defaults, nothing more."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.packaged import PACKAGED_CONFIGS, PACKAGED_DEVICES
from gateway.settings import DEFAULT_PATH_SETTINGS, Settings, load_settings
from workers.cli import main as cli


@pytest.fixture
def empty_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No AIGW_* variables from outside, and an empty working directory."""
    for key in list(os.environ):
        if key.startswith("AIGW_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_from_an_empty_directory_the_packaged_defaults_are_used(empty_cwd: Path) -> None:
    settings = Settings()
    assert settings.sources_file == PACKAGED_CONFIGS / "sources.yaml"
    assert settings.regions_file == PACKAGED_CONFIGS / "regions.yaml"
    assert settings.routing_file == PACKAGED_CONFIGS / "routing.yaml"
    assert settings.destinations_file == PACKAGED_CONFIGS / "destinations.yaml"
    assert settings.semd_file == PACKAGED_CONFIGS / "semd.yaml"
    assert settings.devices_dir == PACKAGED_DEVICES
    for name in DEFAULT_PATH_SETTINGS:
        assert getattr(settings, name).exists(), name
    assert len(list(PACKAGED_DEVICES.glob("*/manifest.yaml"))) == 4


def test_the_working_directory_wins_file_by_file(empty_cwd: Path) -> None:
    (empty_cwd / "configs").mkdir()
    (empty_cwd / "configs" / "routing.yaml").write_text("version: 1\nrules: []\n")
    (empty_cwd / "models" / "zoo").mkdir(parents=True)
    settings = Settings()
    assert settings.routing_file == Path("configs/routing.yaml")  # ours, as written
    assert settings.sources_file == PACKAGED_CONFIGS / "sources.yaml"  # not ours: packaged
    assert settings.devices_dir == Path("models/zoo")


def test_other_paths_stay_as_written_so_errors_name_them(
    empty_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(
        routing_file=Path("mine.yaml"),
        sources_file=Path("configs/not-packaged.yaml"),
        regions_file=empty_cwd / "absolute.yaml",
        devices_dir=None,
    )
    assert settings.routing_file == Path("mine.yaml")
    assert settings.sources_file == Path("configs/not-packaged.yaml")
    assert settings.regions_file == empty_cwd / "absolute.yaml"
    assert settings.devices_dir is None
    # From the environment as from a file: the same rule.
    monkeypatch.setenv("AIGW_ROUTING_FILE", "configs/routing.yaml")
    assert load_settings().routing_file == PACKAGED_CONFIGS / "routing.yaml"
    monkeypatch.setenv("AIGW_ROUTING_FILE", "elsewhere/routing.yaml")
    assert load_settings().routing_file == Path("elsewhere/routing.yaml")


def test_the_packaged_gateway_yaml_is_the_built_in_defaults(empty_cwd: Path) -> None:
    packaged = load_settings(PACKAGED_CONFIGS / "gateway.yaml")
    assert packaged.config_file == PACKAGED_CONFIGS / "gateway.yaml"
    built_in = load_settings()
    assert built_in.config_file is None
    assert packaged.model_dump(exclude={"config_file"}) == built_in.model_dump(
        exclude={"config_file"}
    )


def test_rules_commands_find_the_packaged_rules_and_devices(empty_cwd: Path) -> None:
    from gateway.demo.synthetic import chest_xray_study, write_study

    checked = CliRunner().invoke(cli, ["rules", "check"])
    assert checked.exit_code == 0, checked.output
    assert "1. ct-brain: ct_brain" in checked.output
    files = write_study(
        chest_xray_study(seed=3, kind="radiography", size=(256, 256)), empty_cwd / "in"
    )
    tested = CliRunner().invoke(cli, ["rules", "test", str(files[0])])
    assert tested.exit_code == 0, tested.output
    assert "aigw-ref-cxr" in tested.output
