"""The benchmark suite runs once (``--quick``) on the reference devices and writes a report
that matches its schema, with every figure positive and finite, a markdown report and real
PNG plots. Wall-clock figures are never asserted on, only their form."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.suite_schema import SuiteReport
from tests.services import ROOT

ZOO = ROOT / "models" / "zoo"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Figures that can legitimately be zero: an idle machine, an idle GPU.
MAY_BE_ZERO = {"other_load_cores", "utilisation_percent_mean", "utilisation_percent_max"}


def _numbers(value: Any, path: str = "") -> Iterator[tuple[str, float]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _numbers(item, f"{path}[{index}]")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path, float(value)


def present_gpus() -> list[str]:
    """The GPUs NVML reports, asked here rather than through the suite's own monitor; none
    where pynvml (nvidia-ml-py) or a driver is missing."""
    try:
        import pynvml  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        count = pynvml.nvmlDeviceGetCount()
        return [
            str(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)))
            for i in range(count)
        ]
    finally:
        pynvml.nvmlShutdown()


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    if not list(ZOO.glob("*/model.onnx")):
        pytest.skip("the reference devices are not built (make models)")
    out = tmp_path_factory.mktemp("bench-suite")
    command = [sys.executable, "-m", "benchmarks.suite", "--quick", "--out", str(out / "results")]
    command += ["--seconds", "10", "--studies", "6", "--work-dir", str(out / "work")]
    done = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    (folder,) = (out / "results").iterdir()
    data: dict[str, Any] = json.loads((folder / "suite-latest.json").read_text())
    return data, folder, done.stdout


def test_the_report_matches_the_schema(suite: tuple[dict[str, Any], Path, str]) -> None:
    data, folder, stdout = suite
    report = SuiteReport.model_validate(data)
    assert report.quick and report.machine == folder.name
    assert "Not for clinical use" in report.notice
    assert {d.device.split("@")[0] for d in report.devices} == {
        path.parent.name for path in ZOO.glob("*/manifest.yaml")
    }
    for device in report.devices:
        assert device.notice_en == "Trained on synthetic phantoms. Not for clinical use."
        combos = {(p.provider, p.precision) for p in device.bare}
        assert ("CPUExecutionProvider", "fp32") in combos
        measured = {p.precision for p in device.bare} | {s.precision for s in device.skipped}
        assert measured == {"fp32", "fp16"}  # fp16 measured, or the reason it could not be
        batches = {p.batch for p in device.bare if p.precision == "fp32"}
        assert batches == ({1, 4, 16} if device.dims == 2 else {1, 2})
        assert device.pipeline is not None and device.pipeline.ratio > 0
        assert set(device.pipeline.stages_ms_per_job) >= {"decode", "preprocess", "infer"}
    assert "| device | best bare /s" in stdout  # the headline table is printed
    if shutil.which("storescu") is None:
        assert report.ingest is None and report.end_to_end is None
        return
    assert report.ingest is not None
    assert [r.name for r in report.ingest.receivers] == ["storescp", "aigw-folder-1p"]
    e2e = report.end_to_end
    assert e2e is not None
    assert e2e.studies_with_result == e2e.studies_sent and not e2e.unfinished and not e2e.failed
    assert set(e2e.latency_by_type) == {"fluorography", "mammography", "ct_chest", "ct_head"}
    assert e2e.latency_end in {"outbox.delivered_at", "jobs.finished_at"}
    gpus = present_gpus()
    if gpus:  # sampled through NVML during the run, every GPU named
        assert e2e.gpu is not None and e2e.gpu.gpus == gpus and e2e.gpu_unavailable is None
    else:  # nothing sampled, and the report says why
        assert e2e.gpu is None and e2e.gpu_unavailable


def test_every_number_is_positive_and_finite(suite: tuple[dict[str, Any], Path, str]) -> None:
    data = suite[0]
    numbers = list(_numbers(data))
    assert len(numbers) > 50
    for path, value in numbers:
        assert math.isfinite(value), path
        if path.rsplit(".", 1)[-1] in MAY_BE_ZERO:
            assert value >= 0, path
        else:
            assert value > 0, path


def test_markdown_and_plots_are_written(suite: tuple[dict[str, Any], Path, str]) -> None:
    data, folder, _ = suite
    files = data["files"]
    assert (folder / files["json_report"]).read_text() == (folder / "suite-latest.json").read_text()
    text = (folder / files["markdown"]).read_text()
    for device in data["devices"]:
        assert device["device"] in text
    assert "Не для клинического применения" in text
    for name in files["plots"]:
        image = (folder / name).read_bytes()
        assert image.startswith(PNG_SIGNATURE), name
        assert len(image) > 10_000, name  # axes, lines and labels, not an empty canvas
        assert f"]({name})" in text


def test_a_bad_skip_is_refused() -> None:
    from benchmarks.suite import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--skip", "everything"])
