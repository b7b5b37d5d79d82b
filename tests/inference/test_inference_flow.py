"""The embedded default end to end with a test device: studies over DICOM → assembly →
routing → the in-process Celery worker → findings, and the ways a job can end badly."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from gateway.demo.synthetic import chest_xray_study, ct_chest_study, write_study
from gateway.index.read_model import (
    JobFilter,
    JobItem,
    StudyFilter,
    StudyItem,
    list_jobs,
    list_studies,
)
from gateway.settings import Settings
from pacs_adapters.dicom_scu import Peer, send
from tests.inference import hostile
from tests.onnx_models import classifier_with_heatmap, write_device
from workers.serve import Gateway


@pytest.fixture
def decode_memory_limit_mb() -> int:
    return 8192  # the default: decoding in the pool, under its ceiling


@pytest.fixture
def test_device_gateway(
    tmp_path: Path, make_settings: Callable[..., Settings], decode_memory_limit_mb: int
) -> Iterator[Gateway]:
    """The embedded gateway with one fast test device (a chest X-ray classifier)."""
    from workers.app import build_gateway

    devices = tmp_path / "devices"
    write_device(devices / "test-cxr", classifier_with_heatmap())
    regions = tmp_path / "regions.yaml"
    regions.write_text(
        yaml.safe_dump(
            {"regions": {"38": "Иркутская", "71": "Тульская"}, "devices": {"38": ["test-cxr"]}},
            allow_unicode=True,
        )
    )
    gateway = build_gateway(
        make_settings(
            devices_dir=devices,
            regions_file=regions,
            quiet_period_s=0.3,
            decode_memory_limit_mb=decode_memory_limit_mb,
        )
    )
    gateway.start()
    yield gateway
    gateway.stop()


def _send(gateway: Gateway, files: list[Path]) -> None:
    report = send(files, Peer("127.0.0.1", gateway.parts.settings.dicom_port, "AIGW", "IRK_CAMI"))
    assert report.sent == len(files), report.failed


def _finished(
    gateway: Gateway, study_uid: str, timeout_s: float = 60
) -> tuple[StudyItem, list[JobItem]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # The jobs first: routing commits them with the study's move to 'routed', so a study
        # read after them is routed. Read before them, it could still say 'receiving' when
        # completion, routing and a fast job all fell between the two queries (seen in CI).
        jobs = list_jobs(gateway.parts.db, JobFilter(study_uid=study_uid, limit=1000))
        studies = [
            s
            for s in list_studies(gateway.parts.db, StudyFilter(limit=1000))
            if s.study_uid == study_uid
        ]
        if studies and studies[0].state == "not_applicable":
            return studies[0], []
        if studies and jobs and all(j.state in ("inferred", "failed") for j in jobs):
            return studies[0], jobs
        time.sleep(0.1)
    raise AssertionError(f"study {study_uid} did not finish")


def test_a_fluorography_study_is_routed_and_analysed(
    test_device_gateway: Gateway, tmp_path: Path
) -> None:
    study = chest_xray_study(seed=21, kind="fluorography", modality="DX", sop="dx", size=(256, 256))
    _send(test_device_gateway, write_study(study, tmp_path / "in"))
    summary, (job,) = _finished(test_device_gateway, study.study_instance_uid)
    assert summary.state == "routed"
    assert (job.state, job.device, job.study_type, job.service_code) == (
        "inferred",
        "test-cxr@1.0.0",
        "fluorography",
        "7003320",
    )
    assert set(job.timings_ms) == {"load", "decode", "preprocess", "infer", "postprocess"}
    (finding,) = job.findings
    assert 0.0 <= finding.probability <= 1.0
    assert finding.location is not None
    assert finding.location["sop_instance_uid"] == study.datasets[0].SOPInstanceUID


def test_corrupt_pixel_data_fails_the_job_with_the_reason_and_the_worker_goes_on(
    test_device_gateway: Gateway, tmp_path: Path
) -> None:
    broken = chest_xray_study(seed=22, kind="radiography", modality="CR", sop="cr", size=(256, 256))
    hostile.rle_cut_short(broken.datasets[0])  # headers agree: only the decoder can tell
    _send(test_device_gateway, write_study(broken, tmp_path / "broken"))
    _summary, (job,) = _finished(test_device_gateway, broken.study_instance_uid)
    assert job.state == "failed"
    assert job.reason is not None and "cannot decode pixel data" in job.reason

    healthy = chest_xray_study(
        seed=23, kind="radiography", modality="CR", sop="cr", size=(256, 256)
    )
    _send(test_device_gateway, write_study(healthy, tmp_path / "healthy"))
    _summary, (after,) = _finished(test_device_gateway, healthy.study_instance_uid)
    assert after.state == "inferred"


def test_studies_no_device_can_read_end_not_applicable_with_the_reason(
    test_device_gateway: Gateway, tmp_path: Path
) -> None:
    ct = ct_chest_study(seed=24, n_slices=8, size=(64, 64), with_nodule=False)
    _send(test_device_gateway, write_study(ct, tmp_path / "ct"))
    summary, jobs = _finished(test_device_gateway, ct.study_instance_uid)
    assert jobs == [] and summary.state == "not_applicable"
    assert summary.state_reason  # says which rule/device refused and why
    assert "ct" in summary.state_reason.lower()


# The embedded worker is a thread of the test process, and the bombs are stopped there, by
# the checks, before the decode pool gets them: this process's peak RSS covers all that was
# done with them. Decoded in-process without the checks, the J2K bomb alone peaked at 7.5 GB.
DECODE_PEAK_BUDGET_MB = 400


def _reset_peak_rss() -> int:
    """Reset the kernel's high-water mark of this process's RSS; return the RSS now (MB)."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _status_mb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    raise AssertionError(f"{field} not in /proc/self/status")


@pytest.mark.shared_data
def test_pixel_bombs_fail_their_jobs_before_decoding_and_the_next_study_is_inferred(
    test_device_gateway: Gateway, tmp_path: Path
) -> None:
    bombs = {
        "j2k": (
            hostile.j2k_bomb,
            "JPEG 2000 header has 60000 rows, the dataset's Rows is 256",
        ),
        "65535": (hostile.huge_j2k, "65535 × 65535 = 4294836225 pixels"),
        "rle": (hostile.rle_offsets_past_the_end, "RLE segment 2 starts at byte 2147483632"),
        "jpeg": (hostile.jpeg_with_wrong_rows, "JPEG SOF0 header has 1024 rows"),
    }
    before_mb = _reset_peak_rss()
    for number, (name, (make, phrase)) in enumerate(bombs.items()):
        study = hostile.radiograph(31 + number, size=(256, 256))
        make(study.datasets[0])
        _send(test_device_gateway, write_study(study, tmp_path / name))
        _summary, (job,) = _finished(test_device_gateway, study.study_instance_uid)
        assert job.state == "failed", name
        assert job.reason is not None and phrase in job.reason, job.reason
        assert study.datasets[0].SOPInstanceUID in job.reason
    peak_mb = _status_mb("VmHWM")
    assert peak_mb - before_mb < DECODE_PEAK_BUDGET_MB, (before_mb, peak_mb)

    # Native Pixel Data whose length contradicts 65535² never gets that far: refused at ingest.
    native = hostile.radiograph(39, size=(256, 256))
    hostile.huge_header(native.datasets[0])
    report = send(
        write_study(native, tmp_path / "native"),
        Peer("127.0.0.1", test_device_gateway.parts.settings.dicom_port, "AIGW", "IRK_CAMI"),
    )
    (reason,) = report.failed.values()
    assert reason.startswith("0xC000 Pixel Data has 10 bytes, not 8589672450"), reason

    healthy = hostile.radiograph(40, size=(256, 256))
    _send(test_device_gateway, write_study(healthy, tmp_path / "healthy"))
    _summary, (after,) = _finished(test_device_gateway, healthy.study_instance_uid)
    assert after.state == "inferred"


@pytest.mark.parametrize("decode_memory_limit_mb", [64])
def test_a_decode_over_the_memory_limit_fails_its_job_and_the_worker_goes_on(
    test_device_gateway: Gateway, tmp_path: Path
) -> None:
    # 6300² 16-bit: within the pixel budget, consistent, and more than 64 MB beyond the
    # child's imports to load (79 MB stored and mapped; read in place, it needs no more).
    large = hostile.radiograph(61)
    dataset = large.datasets[0]
    dataset.Rows = dataset.Columns = 6300
    dataset.PixelData = bytes(6300 * 6300 * 2)
    _send(test_device_gateway, write_study(large, tmp_path / "large"))
    _summary, (job,) = _finished(test_device_gateway, large.study_instance_uid)
    assert job.state == "failed"
    assert job.reason is not None and "MemoryError" in job.reason, job.reason

    healthy = hostile.radiograph(62, size=(256, 256))
    _send(test_device_gateway, write_study(healthy, tmp_path / "healthy"))
    _summary, (after,) = _finished(test_device_gateway, healthy.study_instance_uid)
    assert after.state == "inferred"
