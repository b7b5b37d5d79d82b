"""The README stays true to the code, and the CLI works as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gateway.settings import Settings
from tests.services import ROOT, GatewayProcess, free_port, gateway_env


def test_readme_documents_every_setting_with_its_environment_variable() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in Settings.model_fields:
        assert f"`{name}`" in readme, f"README does not document setting {name}"
        assert f"`AIGW_{name.upper()}`" in readme, f"README lacks AIGW_{name.upper()}"


def test_shipped_configuration_loads() -> None:
    from gateway.ingest.sources import load_directory
    from gateway.settings import load_settings

    settings = load_settings(ROOT / "gateway" / "configs" / "gateway.yaml")
    directory = load_directory(
        ROOT / settings.sources_file, ROOT / settings.regions_file, settings.open_mode
    )
    assert settings.ae_title == "AIGW" and not settings.open_mode
    assert {s.region for s in directory.sources} <= set(directory.regions)


def _aigw(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def test_send_echo_and_studies_commands_against_a_served_gateway(tmp_path: Path) -> None:
    from gateway.demo.synthetic import chest_xray_study, write_study

    port = free_port()
    env = gateway_env(quiet_period_s="0.5")
    server = GatewayProcess(tmp_path / "var", port, env, [])
    server.data_dir.mkdir()
    server.start()
    try:
        echo = _aigw("echo", "--port", str(port), "--calling-aet", "IRK_CAMI", env=env)
        assert echo.returncode == 0 and "status 0x0000" in echo.stdout, echo.stderr

        study = chest_xray_study(
            seed=7, kind="fluorography", modality="DX", sop="dx", size=(256, 256)
        )
        files = write_study(study, tmp_path / "in")
        (tmp_path / "in" / "notes.txt").write_text("not DICOM")
        sent = _aigw(
            "send", str(tmp_path / "in"), "--port", str(port), "--calling-aet", "IRK_CAMI", env=env
        )
        assert sent.returncode == 0, sent.stderr
        assert f"sent {len(files)}, failed 0, skipped 1" in sent.stdout

        refused = _aigw(
            "send", str(files[0]), "--port", str(port), "--calling-aet", "NOBODY", env=env
        )
        assert refused.returncode != 0 and "rejected" in refused.stderr

        listed = _aigw("studies", "--data-dir", str(server.data_dir), "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        (row,) = [r for r in rows if r["study_uid"] == study.study_instance_uid]
        assert row["source"] == "irk-cami" and row["region"] == "38"
        assert row["modalities"] == ["DX"] and row["instance_count"] == len(files)
    finally:
        server.stop()


def test_studies_complete_command_completes_a_receiving_study(tmp_path: Path) -> None:
    from gateway.demo.synthetic import mammography_study, write_study

    port = free_port()
    env = gateway_env(quiet_period_s="3600")  # only the command can complete it
    server = GatewayProcess(tmp_path / "var", port, env, [])
    server.data_dir.mkdir()
    server.start()
    try:
        study = mammography_study(seed=3, size=(256, 208))
        files = write_study(study, tmp_path / "in")
        assert (
            _aigw(
                "send", *map(str, files), "--port", str(port), "--calling-aet", "IRK_CAMI", env=env
            ).returncode
            == 0
        )
        uid = study.study_instance_uid
        before = _aigw(
            "studies", "--data-dir", str(server.data_dir), "--state", "receiving", "--json", env=env
        )
        assert uid in before.stdout
        done = _aigw("studies", "--data-dir", str(server.data_dir), "complete", uid, env=env)
        assert done.returncode == 0 and "complete" in done.stdout, done.stderr
        # Once complete, the serve process routes it at once (here: no device applies).
        after = _aigw("studies", "--data-dir", str(server.data_dir), "--json", env=env)
        (row,) = [json.loads(line) for line in after.stdout.splitlines() if uid in line]
        assert row["state"] in ("complete", "routed", "not_applicable")
        again = _aigw("studies", "--data-dir", str(server.data_dir), "complete", uid, env=env)
        assert "already complete" in again.stdout
        unknown = _aigw("studies", "--data-dir", str(server.data_dir), "complete", "1.2.3", env=env)
        assert unknown.returncode != 0 and "no study" in unknown.stderr
        timeline = _aigw("studies", "--data-dir", str(server.data_dir), "timeline", uid, env=env)
        states = [line.split()[2] for line in timeline.stdout.splitlines() if " state " in line]
        assert states[:2] == ["receiving", "complete"]
    finally:
        server.stop()


def test_invalid_settings_are_refused_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.yaml"
    bad.write_text("dicom_port: 70000\nno_such_key: 1\n")
    result = _aigw("studies", "--config", str(bad))
    assert result.returncode != 0
    assert "dicom_port" in result.stderr and "no_such_key" in result.stderr


def test_aigw_bench_runs_the_suite_from_the_checkout() -> None:
    """`aigw bench ARGS` is `python -m benchmarks.suite ARGS` in the repository: its own
    options reach the suite (here --help, which the suite answers, not click)."""
    result = subprocess.run(
        [sys.executable, "-m", "workers.cli", "bench", "--help"],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "python -m benchmarks.suite" in result.stdout and "--quick" in result.stdout
