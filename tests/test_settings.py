"""The one settings object: YAML overlaid by the environment and flags; bad values are
refused naming the field, also through the CLI, without a traceback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pydantic
import pytest
from click.testing import CliRunner

from gateway.errors import ConfigError
from gateway.settings import Settings, load_settings
from tests.services import ROOT
from workers.cli import main as cli

SOURCES = ROOT / "gateway" / "configs" / "sources.yaml"
REGIONS = ROOT / "gateway" / "configs" / "regions.yaml"


# --- settings --------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No AIGW_* variables from outside, and a working directory without configs/."""
    for key in list(os.environ):
        if key.startswith("AIGW_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def _yaml(tmp_path: Path, text: str, name: str = "gateway.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_settings_precedence(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = _yaml(tmp_path, "dicom_port: 2000\nae_title: FROMYAML\nquiet_period_s: 3\n")
    # YAML over defaults
    settings = load_settings(config)
    assert (settings.dicom_port, settings.ae_title, settings.quiet_period_s) == (
        2000,
        "FROMYAML",
        3,
    )
    assert settings.max_pdu_bytes == 131072  # not in the file: the default
    # environment over YAML
    clean_env.setenv("AIGW_DICOM_PORT", "3000")
    settings = load_settings(config)
    assert (settings.dicom_port, settings.ae_title) == (3000, "FROMYAML")
    # explicit (a command-line flag) over environment; an absent flag (None) masks nothing
    assert load_settings(config, dicom_port=4000).dicom_port == 4000
    assert load_settings(config, dicom_port=None).dicom_port == 3000
    # $AIGW_CONFIG_FILE chooses the file when none is given
    clean_env.setenv("AIGW_CONFIG_FILE", str(config))
    assert load_settings().ae_title == "FROMYAML"


def test_settings_defaults_without_a_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.config_file is None
    assert (settings.ae_title, settings.dicom_port, settings.open_mode) == ("AIGW", 11112, False)
    assert settings.object_store == "folder"
    assert settings.resolved_database_url == f"sqlite:///{(tmp_path / 'var' / 'aigw.db')}"
    assert settings.resolved_store_dir == Path("var/objects")
    clean_env.setenv("AIGW_DATA_DIR", str(tmp_path / "elsewhere"))
    assert load_settings().resolved_store_dir == tmp_path / "elsewhere" / "objects"


@pytest.mark.parametrize(
    ("yaml_text", "env", "explicit", "named"),
    [
        ("dicom_port: 70000\n", {}, {}, "dicom_port"),
        ("", {"AIGW_DICOM_PORT": "not-a-port"}, {}, "dicom_port"),
        ("", {}, {"dicom_port": 0}, "dicom_port"),
        ("dicom_prot: 104\n", {}, {}, "dicom_prot"),  # a typo is not silently ignored
        ("object_store: ftp\n", {}, {}, "object_store"),
        ("object_store: s3\n", {}, {}, "needs s3_access_key and s3_secret_key"),
        ("ae_title: 'A\\B'\n", {}, {}, "backslash"),
        ("", {}, {"ae_title": "X" * 17}, "ae_title"),
        ("quiet_period_s: 0\n", {}, {}, "quiet_period_s"),
        ("log_level: LOUD\n", {}, {}, "log_level"),
    ],
)
def test_bad_settings_are_refused_with_what_is_wrong(
    clean_env: pytest.MonkeyPatch,
    tmp_path: Path,
    yaml_text: str,
    env: dict[str, str],
    explicit: dict[str, Any],
    named: str,
) -> None:
    config = _yaml(tmp_path, yaml_text)
    for key, value in env.items():
        clean_env.setenv(key, value)
    with pytest.raises(pydantic.ValidationError) as refused:
        load_settings(config, **explicit)
    assert named in str(refused.value)


def test_missing_settings_file_is_named(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.yaml"):
        load_settings(tmp_path / "nowhere.yaml")


def test_cli_reports_bad_settings_without_a_traceback(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = _yaml(tmp_path, "dicom_port: 70000\n")
    result = CliRunner().invoke(cli, ["studies", "--config", str(config)])
    assert result.exit_code == 1
    assert "invalid settings" in result.output and "dicom_port" in result.output
    assert isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("text", ["dicom_port: [unclosed\n", "- a list\n- not a mapping\n"])
def test_settings_file_that_is_not_a_yaml_mapping(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, text: str
) -> None:
    config = _yaml(tmp_path, text)
    with pytest.raises(ConfigError, match=r"gateway\.yaml"):
        load_settings(config)
    result = CliRunner().invoke(cli, ["studies", "--config", str(config)])
    assert result.exit_code == 1 and "invalid settings" in result.output


def test_settings_object_refuses_unknown_fields() -> None:
    with pytest.raises(pydantic.ValidationError, match="dicom_prot"):
        Settings.model_validate({"dicom_prot": 1})


def test_the_gpu_group_from_yaml_and_the_environment(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The GPU settings need no GPU: valid on a CPU node, one key each in the environment."""
    config = tmp_path / "gateway.yaml"
    config.write_text("data_dir: ./var\ngpu:\n  cuda_device_id: 1\n")
    clean_env.setenv("AIGW_GPU__DECODE_BACKEND", "cpu")
    settings = load_settings(config)
    assert settings.gpu.cuda_device_id == 1 and settings.gpu.decode_backend == "cpu"
    assert settings.trt_engine_cache_dir == Path("./var/trt-engines")
    clean_env.setenv("AIGW_GPU__DECODE_BACKEND", "cuda")
    with pytest.raises(pydantic.ValidationError, match="decode_backend"):
        load_settings(config)
