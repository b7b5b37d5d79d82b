"""Distributed mode with real parts: a Redis broker, the gateway, and separate ``aigw worker``
processes. A worker killed in the middle of a task: the task is delivered again and the job
completes exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from gateway.demo.synthetic import chest_xray_study, write_study
from gateway.devices.registry import DeviceRegistry
from gateway.index.tables import FindingRow, JobRow, StudyEventRow
from gateway.settings import Settings
from pacs_adapters.dicom_scu import Peer, send
from tests.onnx_models import slow_classifier, write_device
from tests.services import ROOT, redis_server
from workers.serve import Gateway

pytestmark = pytest.mark.slow


def _worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIGW_")}
    env.update(
        {
            "AIGW_DATA_DIR": str(settings.data_dir),
            "AIGW_BROKER_URL": settings.broker_url,
            "AIGW_SOURCES_FILE": str(settings.sources_file),
            "AIGW_REGIONS_FILE": str(settings.regions_file),
            "AIGW_DEVICES_DIR": str(settings.devices_dir),
            "AIGW_BROKER_VISIBILITY_TIMEOUT_S": str(settings.broker_visibility_timeout_s),
            "AIGW_WORKER_CONCURRENCY": "1",
            "AIGW_LOG_JSON": "true",
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "worker"],
        env=env,
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_worker_killed_mid_task_redelivers_and_the_job_completes_once(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Gateway],
) -> None:
    from workers.app import build_gateway

    devices = tmp_path / "devices"
    write_device(devices / "test-cxr", slow_classifier())
    regions = tmp_path / "regions.yaml"
    regions.write_text(
        yaml.safe_dump(
            {"regions": {"38": "Иркутская", "71": "Тульская"}, "devices": {"38": ["test-cxr"]}},
            allow_unicode=True,
        )
    )
    with redis_server() as redis:
        settings = make_settings(
            broker_url=redis.url,
            embedded_worker=False,
            devices_dir=devices,
            regions_file=regions,
            quiet_period_s=0.3,
            broker_visibility_timeout_s=2,
        )
        gateway = build_gateway(settings)
        gateway.start()
        registered = [
            d.key for d in DeviceRegistry(gateway.parts.db, gateway.parts.store).devices()
        ]
        assert registered == ["test-cxr@1.0.0"]
        first = second = None
        try:
            first = _worker(settings, tmp_path / "worker1.log")
            study = chest_xray_study(
                seed=11, kind="fluorography", modality="DX", sop="dx", size=(256, 256)
            )
            report = send(
                write_study(study, tmp_path / "in"),
                Peer("127.0.0.1", settings.dicom_port, "AIGW", "IRK_CAMI"),
            )
            assert report.sent == 1

            def job_state() -> tuple[int, str, int] | None:
                with gateway.parts.db.session() as session:
                    job = session.scalars(select(JobRow)).first()
                    return (job.id, job.state, job.attempts) if job else None

            _wait(lambda: (job_state() or (0, "", 0))[1] == "running", 120, "the job to run")
            os.killpg(first.pid, signal.SIGKILL)  # the worker dies mid-inference
            first.wait(timeout=10)
            job_id, state, attempts = job_state() or (0, "", 0)
            assert (state, attempts) == ("running", 1)

            second = _worker(settings, tmp_path / "worker2.log")
            _wait(lambda: (job_state() or (0, "", 0))[1] == "inferred", 180, "redelivery")
            time.sleep(3)  # a duplicate delivery, if any, would have finished by now
            with gateway.parts.db.session() as session:
                job = session.get(JobRow, job_id)
                assert job is not None and job.state == "inferred" and job.attempts == 2
                findings = session.scalars(select(FindingRow).where(FindingRow.job_id == job_id))
                assert len(findings.all()) == 1  # one label, one image: nothing duplicated
                events = session.scalars(
                    select(StudyEventRow).where(StudyEventRow.kind == "job")
                ).all()
                states = [e.detail["state"] for e in events if e.detail.get("job_id") == job_id]
                assert states == ["running", "running", "inferred"]
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
            gateway.stop()
