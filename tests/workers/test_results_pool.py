"""The results stage runs in its own pool: a study's results being built never holds the
thread the next study's inference needs (issue 13, item 4)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.demo.synthetic import chest_xray_study, write_study
from gateway.index.read_model import JobFilter, list_jobs
from gateway.results.build import build_results
from gateway.settings import Settings
from pacs_adapters.dicom_scu import Peer, send
from tests.onnx_models import classifier_with_heatmap, write_device
from workers.serve import Gateway
from workers.worker import RESULTS_QUEUES, split_queues

WAIT_S = 60


@pytest.fixture
def held_results(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, list[int]]]:
    """Every results task waits until the test releases it."""
    release, started = threading.Event(), []

    def held(ctx: Any, job_id: int) -> int:
        started.append(job_id)
        release.wait(WAIT_S)
        return build_results(ctx, job_id)

    monkeypatch.setattr("workers.tasks.build_results", held)
    yield release, started
    release.set()


@pytest.fixture
def one_thread_each(tmp_path: Path, make_settings: Callable[..., Settings]) -> Iterator[Gateway]:
    """The embedded gateway with one inference thread and one results thread."""
    from workers.app import build_gateway

    devices = tmp_path / "devices"
    write_device(devices / "test-cxr", classifier_with_heatmap())
    regions = tmp_path / "regions.yaml"
    regions.write_text(
        yaml.safe_dump(
            {"regions": {"38": "Иркутская", "71": "Тульская"}, "devices": {"38": ["test-cxr"]}}
        )
    )
    gateway = build_gateway(
        make_settings(
            devices_dir=devices,
            regions_file=regions,
            quiet_period_s=0.3,
            worker_concurrency=1,
            report_concurrency=1,
            decode_memory_limit_mb=0,
        )
    )
    gateway.start()
    yield gateway
    gateway.stop()


def _send_study(gateway: Gateway, seed: int, folder: Path) -> str:
    study = chest_xray_study(seed=seed, kind="fluorography", modality="DX", sop="dx", size=(64, 64))
    files = write_study(study, folder)
    peer = Peer("127.0.0.1", gateway.parts.settings.dicom_port, "AIGW", "IRK_CAMI")
    assert send(files, peer).sent == len(files)
    return str(study.study_instance_uid)


def _job_state(gateway: Gateway, study_uid: str) -> str | None:
    jobs = list_jobs(gateway.parts.db, JobFilter(study_uid=study_uid, limit=10))
    return jobs[0].state if jobs else None


def _until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} within {WAIT_S} s")


def test_a_study_is_inferred_while_the_only_results_thread_is_busy(
    one_thread_each: Gateway, held_results: tuple[threading.Event, list[int]], tmp_path: Path
) -> None:
    release, started = held_results
    first = _send_study(one_thread_each, 31, tmp_path / "first")
    _until(lambda: len(started) == 1, "the first study's results did not start")
    second = _send_study(one_thread_each, 32, tmp_path / "second")
    _until(
        lambda: _job_state(one_thread_each, second) == "inferred",
        "the second study was not inferred while the first one's results were held",
    )
    assert len(started) == 1  # the results thread is still held by the first study
    release.set()
    _until(lambda: len(started) == 2, "the second study's results did not follow")
    assert _job_state(one_thread_each, first) == "inferred"


def test_a_worker_given_queues_sends_each_to_its_pool() -> None:
    assert split_queues(["infer", "gpu-a", *RESULTS_QUEUES]) == (
        ["infer", "gpu-a"],
        list(RESULTS_QUEUES),
    )
    assert split_queues(["reports"]) == ([], ["reports"])


def test_each_pool_on_redis_has_its_own_event_loop(make_settings: Callable[..., Settings]) -> None:
    """kombu keeps one current event loop per process: the second pool built on Redis took
    the first one's, whose timer never ran its own countdowns (retries were received and
    never run)."""
    from gateway.jobs.task_queue import create_celery
    from workers.worker import _controller, inference_queues

    settings = make_settings(broker_url="redis://127.0.0.1:1/0")  # never connected here
    results = _controller(create_celery(settings), list(RESULTS_QUEUES), 1, settings)
    infer = _controller(create_celery(settings), inference_queues(settings), 1, settings)
    assert results.hub is not None and infer.hub is not None
    assert infer.hub is not results.hub
    assert infer.hub.timer is infer.timer and results.hub.timer is results.timer
