"""Lost task messages are found in the database and sent again, once per period."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import delete, select, update

from gateway.demo.synthetic import chest_xray_study, write_study
from gateway.index.tables import JobRow, utcnow
from gateway.jobs.states import JobState
from gateway.jobs.sweeper import Sweeper
from gateway.settings import Settings
from pacs_adapters.dicom_scu import Peer, send
from tests.services import ROOT, make_uid

pytestmark = pytest.mark.skipif(
    not list((ROOT / "models" / "zoo").glob("*/manifest.yaml")),
    reason="the reference devices are not built: run `make models`",
)


def test_stale_jobs_and_missing_reports_are_sent_again(
    make_settings: Callable[..., Settings],
) -> None:
    from workers.app import build_gateway

    # No worker consumes the in-memory queue: the job's message is as good as lost.
    settings = make_settings(
        embedded_worker=False,
        quiet_period_s=0.3,
        routing_file=ROOT / "gateway" / "configs" / "routing.yaml",
        devices_dir=ROOT / "models" / "zoo",
    )
    gateway = build_gateway(settings)
    gateway.start()
    try:
        study = chest_xray_study(11, size=(256, 256))
        files = write_study(study, settings.data_dir / "in")
        peer = Peer("127.0.0.1", settings.dicom_port, "AIGW", "IRK_CAMI")
        assert send(files, peer).sent == 1
        deadline = time.monotonic() + 60
        job_ids: list[int] = []
        while time.monotonic() < deadline and not job_ids:
            with gateway.parts.db.session() as session:
                job_ids = list(session.scalars(select(JobRow.id)))
            time.sleep(0.1)
        assert job_ids, "the study was not routed"
        infer: list[int] = []
        report: list[int] = []
        sweeper = Sweeper(
            gateway.parts.db,
            resend_infer=lambda job_id, _queue, _priority: infer.append(job_id),
            resend_report=report.append,
            stale_after_s=5.0,
            report_after_s=5.0,
        )
        assert sweeper.sweep() == 0  # queued a moment ago: not stale yet
        past = utcnow() - timedelta(seconds=10)
        with gateway.parts.db.session() as session:
            session.execute(update(JobRow).values(created_at=past))
        assert sweeper.sweep() == len(job_ids) and infer == job_ids
        assert sweeper.sweep() == 0  # sent again at most once per period
        # Inferred with no results a while after it finished: its report task is re-sent.
        with gateway.parts.db.session() as session:
            session.execute(update(JobRow).values(state=JobState.INFERRED.value, finished_at=past))
        assert sweeper.sweep() == len(job_ids) and report == job_ids
    finally:
        gateway.stop()


def test_unreadable_inputs_withhold_the_results_with_the_reason(
    make_settings: Callable[..., Settings],
) -> None:
    """A job whose stored inputs cannot be read back gets withheld results saying why,
    instead of a report task retried forever."""
    from gateway.index.tables import FindingRow, OutboxRow, ResultRow
    from gateway.results.build import build_results, results_of
    from workers.app import build_gateway
    from workers.worker import report_context

    settings = make_settings(
        quiet_period_s=0.3,
        routing_file=ROOT / "gateway" / "configs" / "routing.yaml",
        devices_dir=ROOT / "models" / "zoo",
    )
    gateway = build_gateway(settings)
    gateway.start()
    try:
        study = chest_xray_study(12, size=(256, 256))
        files = write_study(study, settings.data_dir / "in")
        peer = Peer("127.0.0.1", settings.dicom_port, "AIGW", "IRK_CAMI")
        assert send(files, peer).sent == 1
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not results_of(
            gateway.parts.db, study.study_instance_uid
        ):
            time.sleep(0.2)
        rows = results_of(gateway.parts.db, study.study_instance_uid)
        assert rows and all(r.state == "stored" for r in rows if r.kind == "sr")
        job_id = rows[0].job_id
        # The results are forgotten, and the finding now names a damaged mask object.
        gateway.parts.store.put("results/masks/damaged.npz", b"not a mask")
        with gateway.parts.db.session() as session:
            session.execute(delete(OutboxRow))
            session.execute(delete(ResultRow))
            finding = session.scalars(select(FindingRow).where(FindingRow.job_id == job_id)).first()
            assert finding is not None
            finding.location = {**(finding.location or {}), "mask_key": "results/masks/damaged.npz"}
        assert build_results(report_context(gateway.parts), job_id) == 0
        withheld = results_of(gateway.parts.db, study.study_instance_uid)
        assert withheld and all(r.state == "withheld" for r in withheld)
        assert all("MaskError" in (r.reason or "") for r in withheld)
    finally:
        gateway.stop()


def test_a_whole_study_job_reads_every_series_it_was_routed(
    make_settings: Callable[..., Settings],
) -> None:
    """Mammography views split over two series make one job that names both series."""
    from gateway.demo.synthetic import mammography_study
    from gateway.index.tables import JobRow
    from workers.app import build_gateway

    settings = make_settings(
        embedded_worker=False,
        quiet_period_s=0.3,
        routing_file=ROOT / "gateway" / "configs" / "routing.yaml",
        devices_dir=ROOT / "models" / "zoo",
    )
    gateway = build_gateway(settings)
    gateway.start()
    try:
        study = mammography_study(13, size=(512, 416))
        second = make_uid("mlo series", 13)
        for dataset in study.datasets[2:]:  # the MLO views arrive as a series of their own
            dataset.SeriesInstanceUID = second
            dataset.SeriesNumber = 2
        files = write_study(study, settings.data_dir / "in")
        peer = Peer("127.0.0.1", settings.dicom_port, "AIGW", "IRK_CAMI")
        assert send(files, peer).sent == 4
        deadline = time.monotonic() + 60
        jobs: list[JobRow] = []
        while time.monotonic() < deadline and not jobs:
            with gateway.parts.db.session() as session:
                jobs = list(session.scalars(select(JobRow)))
                session.expunge_all()
            time.sleep(0.1)
        (job,) = jobs
        assert sorted(job.series_uids) == sorted({ds.SeriesInstanceUID for ds in study.datasets})
    finally:
        gateway.stop()
