"""Installed as a new user installs it: the wheel built from the checkout, put into a fresh
virtualenv, run from empty directories — ``aigw serve`` (C-ECHO, a study stored),
``aigw init`` + ``serve --config``, and ``aigw demo --exit-when-done`` with nothing on stderr.

Installing every dependency from scratch would take minutes, so the fresh venv reaches the
project's dependencies through a ``.pth`` line naming this interpreter's site-packages. A
plain path line does not run that folder's own ``.pth`` files, so the checkout's editable
install stays out: ``gateway``, ``models``, ``pacs_adapters`` and ``workers`` come only
from the wheel (asserted).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from models.manifest import load_manifest
from tests.services import ROOT, free_port, require_tool, wait_for_port, write_ct_series

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not list((ROOT / "models" / "zoo").glob("*/manifest.yaml")),
        reason="the reference devices are not built: run `make models`",
    ),
]

PACKAGES = ("gateway", "models", "pacs_adapters", "workers")
PURELIB = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
DEMO_KINDS = ("ct_chest", "ct_head", "fluorography", "chest_xray", "mammography")


@dataclass(frozen=True)
class Installed:
    venv: Path
    wheel: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def aigw(self) -> Path:
        return self.venv / "bin" / "aigw"

    def env(self) -> dict[str, str]:
        """The user's environment: no project paths, no AIGW_* settings."""
        drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
        return {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("AIGW_") and key not in drop
        }

    def run(self, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.aigw), *args],
            cwd=cwd,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("install")
    # Build from a copy of what the wheel is made of: setuptools writes build/ and
    # *.egg-info beside the sources, and a stale build/ would hide missing package data.
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    junk = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=junk)
    dist = work / "dist"
    build = ["wheel", "-q", "--no-deps", "--no-build-isolation", "--wheel-dir", str(dist)]
    _run(sys.executable, "-m", "pip", *build, str(source))
    (wheel,) = dist.glob("aigw-*.whl")
    venv = work / "venv"
    _run(sys.executable, "-m", "venv", str(venv))
    fresh = str(venv / "bin" / "python")
    _run(fresh, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel))
    site = Path(_run(fresh, "-c", PURELIB).strip())
    (site / "_aigw_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return Installed(venv, wheel)


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


@pytest.fixture
def serve(installed: Installed) -> Iterator[list[subprocess.Popen[str]]]:
    """Stops the ``aigw serve`` processes a test starts."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _start_serve(
    installed: Installed, started: list[subprocess.Popen[str]], cwd: Path, *args: str
) -> int:
    port = free_port()
    log = (cwd / "serve.log").open("w")
    process = subprocess.Popen(
        [str(installed.aigw), "serve", "--dicom-port", str(port), "--http-port", "0", *args],
        cwd=cwd,
        env=installed.env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    started.append(process)
    try:
        wait_for_port(port, timeout_s=120, process=process)  # type: ignore[arg-type]
    except (RuntimeError, TimeoutError) as exc:
        raise AssertionError((cwd / "serve.log").read_text()[-3000:]) from exc
    return port


def _echo(port: int, calling_ae: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("echoscu"), "-aet", calling_ae, "-aec", "AIGW", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_packages_come_from_the_wheel_alone(installed: Installed, empty_dir: Path) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    for config in sorted((ROOT / "gateway" / "configs").glob("*.yaml")):
        assert f"gateway/configs/{config.name}" in names
    for manifest in sorted((ROOT / "models" / "zoo").glob("*/manifest.yaml")):
        device = manifest.parent.name
        onnx = load_manifest(manifest).onnx.file
        assert f"models/zoo/{device}/manifest.yaml" in names
        assert f"models/zoo/{device}/{onnx}" in names
    assert not [name for name in names if name.startswith(("tests/", "benchmarks/"))]

    modules = (*PACKAGES, "pydicom")
    script = (
        f"import json, {', '.join(modules)}; "
        f"print(json.dumps({{m.__name__: m.__file__ for m in ({', '.join(modules)})}}))"
    )
    found = subprocess.run(
        [str(installed.python), "-c", script],
        cwd=empty_dir,
        env=installed.env(),
        capture_output=True,
        text=True,
        check=True,
    )
    files = {name: Path(path) for name, path in json.loads(found.stdout).items()}
    for package in PACKAGES:
        assert files[package].is_relative_to(installed.venv), files[package]
    # The dependencies come from this interpreter's environment, through the .pth line.
    assert files["pydicom"].is_relative_to(Path(sysconfig.get_paths()["purelib"]))


def test_serve_from_an_empty_directory_answers_and_stores(
    installed: Installed, empty_dir: Path, serve: list[subprocess.Popen[str]]
) -> None:
    port = _start_serve(installed, serve, empty_dir)
    echo = _echo(port, "IRK_CAMI")  # a source of the packaged sources.yaml
    assert echo.returncode == 0, echo.stdout + echo.stderr

    files = write_ct_series(empty_dir.parent / "series", 3, seed="install")
    sent = subprocess.run(
        [require_tool("storescu"), "-aet", "IRK_CAMI", "-aec", "AIGW", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr

    listed = installed.run(empty_dir, "studies", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["source"], row["region"], row["instance_count"]) == ("irk-cami", "38", 3)
    stored = list((empty_dir / "var" / "objects" / "studies" / row["study_uid"]).rglob("*.dcm"))
    assert len(stored) == 3
    assert {p.read_bytes()[128:132] for p in stored} == {b"DICM"}


def test_init_writes_a_configuration_that_serve_uses(
    installed: Installed, tmp_path: Path, empty_dir: Path, serve: list[subprocess.Popen[str]]
) -> None:
    conf = tmp_path / "conf"
    written = installed.run(tmp_path, "init", str(conf))
    assert written.returncode == 0, written.stderr
    sources = conf / "sources.yaml"
    sources.write_text(
        sources.read_text(encoding="utf-8").replace("ae_title: IRK_CAMI", "ae_title: EDITED_AE"),
        encoding="utf-8",
    )
    again = installed.run(tmp_path, "init", str(conf))
    assert again.returncode != 0 and str(sources) in again.stderr
    assert "EDITED_AE" in sources.read_text(encoding="utf-8")  # kept

    port = _start_serve(installed, serve, empty_dir, "--config", str(conf / "gateway.yaml"))
    assert _echo(port, "EDITED_AE").returncode == 0
    assert _echo(port, "IRK_CAMI").returncode != 0  # the packaged source is not used

    forced = installed.run(tmp_path, "init", str(conf), "--force")
    assert forced.returncode == 0, forced.stderr
    assert "ae_title: IRK_CAMI" in sources.read_text(encoding="utf-8")


def test_demo_from_an_empty_directory_without_warnings(
    installed: Installed, empty_dir: Path
) -> None:
    demo = installed.run(
        empty_dir,
        "demo",
        "--exit-when-done",
        "--dicom-port",
        str(free_port()),
        "--http-port",
        str(free_port()),
        timeout=600,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "5 studies received, assembled and routed" in demo.stdout
    findings = demo.stdout.split("AI findings", 1)[1].split("Results", 1)[0]
    for device in ("aigw-ref-cxr", "aigw-ref-ct-chest", "aigw-ref-ct-brain", "aigw-ref-mammo"):
        assert f"{device}@" in findings, findings
    results = empty_dir / "var" / "demo" / "results"
    for kind in DEMO_KINDS:
        files = {p.name for p in (results / kind).glob("job-*/*")}
        assert {"sr-1.dcm", "sc-1.dcm", "semd.xml", "semd.json"} <= files, (kind, files)
    # Nothing a user would have to wonder about: no warnings, no log lines, nothing.
    assert demo.stderr.splitlines() == []
