"""The inference benchmark runs end to end (``--quick``) on the test device and writes a
complete, sane JSON report. Wall-clock figures are never asserted on, only their form."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.onnx_models import classifier_with_heatmap, write_device
from tests.services import ROOT

STAGES = {"load", "decode", "preprocess", "infer", "postprocess", "bookkeeping"}
BARE_FIELDS = {
    "batch",
    "batches",
    "images_per_s",
    "batch_ms_median",
    "batch_ms_p90",
    "ms_per_image",
    "cpu_ms_per_image",
    "wall_s",
    "other_load_cores",
}
PIPELINE_FIELDS = {
    "threads",
    "jobs",
    "images",
    "images_per_s",
    "steady_images_per_s",
    "studies_per_s",
    "job_ms_median",
    "job_ms_p95",
    "ms_per_image",
    "cpu_ms_per_image",
    "cpu_ms_per_image_with_children",
    "stages_ms_per_job",
    "stage_share",
    "batches",
    "mean_batch",
    "wall_s",
    "other_load_cores",
}
RATIOS = {"pipeline_vs_bare", "sequential_vs_bare", "concurrent_vs_bare", "cpu_bare_vs_pipeline"}
# Figures that are legitimately zero: an idle machine.
MAY_BE_ZERO = {"other_load_cores", "pipeline_beyond_stages"}


def _numbers(value: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """Every number in a JSON value, with its dotted path (booleans are not numbers)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _numbers(item, f"{path}[{index}]")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path, float(value)


def assert_providers_follow_what_is_present(used: list[str], preferred: list[str]) -> None:
    """The sessions run on the settings' providers that this onnxruntime has, in their
    order, the CPU last: only the CPU on a CPU node; CUDA wherever onnxruntime has it.
    TensorRT may be listed by onnxruntime and still lack its libraries, in which case the
    session leaves it out."""
    import onnxruntime as ort

    present = set(ort.get_available_providers())
    wanted = [provider for provider in preferred if provider in present]
    assert used == [provider for provider in wanted if provider in used], (used, wanted)
    assert used[-1] == "CPUExecutionProvider"
    assert set(wanted) - set(used) <= {"TensorrtExecutionProvider"}, (used, wanted)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("bench-infer")
    write_device(tmp / "devices" / "test-cxr", classifier_with_heatmap())
    out = tmp / "results"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.inference",
            "--quick",
            "--devices-dir",
            str(tmp / "devices"),
            "--out",
            str(out),
            "--work-dir",
            str(tmp / "work"),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| test-cxr@1.0.0 |" in done.stdout  # the printed table
    assert "| bench-vendor-scale-cxr@1.0.0 (**workload: vendor-scale" in done.stdout
    (folder,) = out.iterdir()
    latest = folder / "inference-latest.json"
    (stamped,) = folder.glob("inference-2*.json")
    assert latest.read_text() == stamped.read_text()
    data: dict[str, Any] = json.loads(latest.read_text())
    data["_folder"] = folder.name
    return data


def test_report_has_the_documented_shape(report: dict[str, Any]) -> None:
    assert report["benchmark"] == "inference"
    assert report["_folder"] == report["machine"]
    assert report["parameters"]["quick"] is True
    target = report["target"]
    assert target["pipeline_vs_bare_2d_min"] == 0.7
    # The target is applied to the device and to the workload, each named with its verdict.
    assert [(c["device"], c["workload"]) for c in target["checks"]] == [
        ("test-cxr@1.0.0", None),
        ("bench-vendor-scale-cxr@1.0.0", "vendor-scale, random weights"),
    ]
    for check, device in zip(target["checks"], report["devices"], strict=True):
        assert check["ratio"] == device["ratio"]["pipeline_vs_bare"]
        assert check["meets_target"] is device["meets_target"]
    assert target["registered_devices_meet"] is report["devices"][0]["meets_target"]
    assert target["vendor_scale_meets"] is report["devices"][1]["meets_target"]
    environment = report["environment"]
    assert environment["cpu_count"] >= 1
    assert "onnxruntime" in environment["packages"]
    assert "CPUExecutionProvider" in environment["onnxruntime_available_providers"]
    assert environment["settings_inference_providers"]
    assert isinstance(report["busy_machine_phases"], list)

    device, vendor_scale = report["devices"]
    assert device["device"] == "test-cxr@1.0.0"
    assert device["workload"] is None
    assert (device["dims"], device["unit"]) == (2, "images")
    assert device["study"]["kind"] == "chest_xray"
    assert device["study"]["instances_per_job"] == 1
    assert_providers_follow_what_is_present(
        device["providers"], environment["settings_inference_providers"]
    )
    batch = device["pipeline_batch"]
    assert batch == 1
    assert {"batch_1", f"batch_{batch}"} <= set(device["bare"])
    for figures in device["bare"].values():
        assert set(figures) == BARE_FIELDS
    for threads, mode in ((1, "sequential"), (None, "concurrent")):
        run = device["pipeline"][mode]
        assert set(run) == PIPELINE_FIELDS
        assert threads is None or run["threads"] == threads
        assert set(run["stages_ms_per_job"]) == STAGES == set(run["stage_share"])
        assert math.isclose(sum(run["stage_share"].values()), 1.0, abs_tol=1e-3)
        assert run["images"] == run["jobs"] * device["study"]["model_inputs_per_job"]
    assert (
        device["pipeline"]["concurrent"]["threads"] == report["environment"]["worker_concurrency"]
    )
    # The sequential phase runs each study once; the concurrent one the studies again, as
    # new jobs, until its minimum time has passed.
    studies = device["study"]["studies_per_phase"]
    assert device["pipeline"]["sequential"]["jobs"] == studies
    assert device["pipeline"]["concurrent"]["jobs"] >= 1
    assert report["parameters"]["pipeline_seconds"] == 0.3  # --quick
    assert device["study"]["concurrent_phase_min_s"] == 0.3
    assert set(device["ratio"]) >= RATIOS
    assert device["target"] == 0.7 and isinstance(device["meets_target"], bool)
    for run in device["pipeline"].values():  # every job's inputs went through the batcher
        assert run["mean_batch"] >= 1 and run["batches"] <= run["images"]

    # Stage overlap: the concurrent pipeline against the slowest stage alone, same round.
    overlap = device["stage_overlap"]
    alone = overlap["stages_alone_images_per_s"]
    assert "decode_preprocess" in alone and len(alone) == 2
    assert overlap["slowest_stage"] in alone
    assert alone[overlap["slowest_stage"]] == min(alone.values())
    assert math.isclose(
        overlap["value"],
        overlap["pipeline_images_per_s"] / alone[overlap["slowest_stage"]],
        rel_tol=0.01,
    )
    assert overlap["target"] == 0.8
    steady = device["pipeline"]["concurrent"]["steady_images_per_s"]
    assert (overlap["value_steady"] is None) == (steady is None)
    cpu = overlap["cpu_ms_per_image"]
    assert set(cpu) == {*alone, "pipeline", "pipeline_beyond_stages"}
    assert 0 < overlap["ceiling_on_shared_cores"] <= 1
    assert len(device["stage_overlap_rounds"]) == report["parameters"]["rounds"]
    assert report["target"]["stage_overlap_min"] == 0.8
    assert [c["device"] for c in report["target"]["stage_overlap_checks"]] == [
        d["device"] for d in report["devices"]
    ]

    assert "prototype" not in device  # the obsolete phases are gone

    # The vendor-scale workload: measured exactly as the device, labelled as what it is.
    assert vendor_scale["device"] == "bench-vendor-scale-cxr@1.0.0"
    assert vendor_scale["workload"] == "vendor-scale, random weights"
    assert "random weights" in vendor_scale["workload_note"]
    assert "--quick" in vendor_scale["workload_note"]  # the smaller quick input is labelled
    assert vendor_scale["input"]["shape"] == [1, 256, 256]
    assert set(vendor_scale) == set(device) | {"workload_note"}
    assert vendor_scale["study"] == device["study"]  # the same DX study
    assert vendor_scale["providers"] == device["providers"]
    assert vendor_scale["target"] == 0.7 and isinstance(vendor_scale["meets_target"], bool)
    assert "random weights" in vendor_scale["build"]


def test_every_figure_is_finite_and_every_device_figure_positive(report: dict[str, Any]) -> None:
    numbers = list(_numbers(report))
    assert numbers
    for path, value in numbers:
        assert math.isfinite(value), path
    device_numbers = list(_numbers(report["devices"]))
    assert len(device_numbers) > 50
    for path, value in device_numbers:
        if path.rsplit(".", 1)[-1] in MAY_BE_ZERO:
            assert value >= 0, path
        else:
            assert value > 0, path


def test_the_vendor_scale_workload_is_labelled_and_not_clinical(tmp_path: Path) -> None:
    """Its manifest is the chest X-ray reference device's with its own identity, size,
    file and provenance, and it registers like any device (the registry's own checks)."""
    from benchmarks.inference import REFERENCE_CXR, write_vendor_scale_device
    from gateway.devices.registry import DeviceRegistry
    from gateway.settings import load_settings
    from models.manifest import load_manifest
    from workers.serve import Parts

    path = write_vendor_scale_device(tmp_path / "device", 64, seed=7)
    manifest = load_manifest(path)
    base = load_manifest(REFERENCE_CXR)
    assert manifest.id == "bench-vendor-scale-cxr"
    assert "random weights, not a device" in manifest.name
    assert manifest.provenance.clinical_use is False and manifest.registration is None
    assert "Not for clinical use" in manifest.provenance.notice_en
    assert manifest.input.size == [64, 64]
    assert (manifest.study_types, manifest.accepts, manifest.outputs) == (
        base.study_types,
        base.accepts,
        base.outputs,
    )
    assert manifest.onnx.sha256 != base.onnx.sha256
    again = write_vendor_scale_device(tmp_path / "again", 64, seed=7)
    assert load_manifest(again).onnx.sha256 == manifest.onnx.sha256  # seeded: reproducible

    parts = Parts.build(load_settings(None, data_dir=tmp_path / "var", min_free_bytes=0))
    try:
        device, new = DeviceRegistry(parts.db, parts.store).register(path)
    finally:
        parts.db.dispose()
    assert new and device.key == "bench-vendor-scale-cxr@1.0.0"


def test_a_device_that_is_not_there_is_named(tmp_path: Path) -> None:
    write_device(tmp_path / "devices" / "test-cxr", classifier_with_heatmap())
    from benchmarks.inference import main

    code = main(
        [
            "--quick",
            "--devices-dir",
            str(tmp_path / "devices"),
            "--device",
            "no-such-device",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 1
    assert not (tmp_path / "out").exists()
