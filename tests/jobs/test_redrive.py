"""Every job's task reaches the broker from the database, when it is due: once after it is
recorded, again after a send failed (with a backoff) or the broker restarted (its messages
may be gone), and never while the broker is away. A real Redis, killed with SIGKILL."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import delete, select, update

from gateway.demo.synthetic import chest_xray_study, mammography_study, write_study
from gateway.index.due import Backoff
from gateway.index.tables import JobRow, utcnow
from gateway.jobs.broker import BrokerProbe, BrokerWatch
from gateway.jobs.dispatch import Dispatcher
from gateway.jobs.redrive import JobRedrive, RedrivePolicy
from gateway.jobs.states import JobState, report_due
from gateway.jobs.task_queue import CeleryTasks, create_celery
from gateway.settings import Settings
from pacs_adapters.dicom_scu import Peer, send
from tests.services import ROOT, RedisServer, free_port, make_uid, redis_server
from workers.serve import Gateway

pytestmark = pytest.mark.skipif(
    not list((ROOT / "models" / "zoo").glob("*/manifest.yaml")),
    reason="the reference devices are not built: run `make models`",
)

REQUEUE_AFTER_S = 600.0


@dataclass
class Routed:
    gateway: Gateway
    job_ids: list[int]

    def jobs(self) -> list[JobRow]:
        with self.gateway.parts.db.session() as session:
            rows = list(session.scalars(select(JobRow).order_by(JobRow.id)))
            session.expunge_all()
            return rows


@pytest.fixture
def broker() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
def routed(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Gateway],
    broker: RedisServer,
) -> Routed:
    """A gateway with no worker and no re-drive of its own: two chest X-ray studies routed,
    their jobs recorded and due."""
    from workers.app import prepare_registry
    from workers.serve import Parts

    settings = make_settings(broker_url=broker.url, embedded_worker=False, quiet_period_s=0.3)
    parts = Parts.build(settings)
    dispatcher = Dispatcher(settings, parts.db, prepare_registry(parts))
    gateway = start_gateway(settings, on_complete=dispatcher)
    peer = Peer("127.0.0.1", settings.dicom_port, "AIGW", "IRK_CAMI")
    for seed in (21, 22):
        study = chest_xray_study(seed, size=(256, 256))
        assert send(write_study(study, settings.data_dir / "in" / str(seed)), peer).sent == 1
    deadline = time.monotonic() + 60
    ids: list[int] = []
    while time.monotonic() < deadline and len(ids) < 2:
        with gateway.parts.db.session() as session:
            ids = list(session.scalars(select(JobRow.id).order_by(JobRow.id)))
        time.sleep(0.1)
    assert len(ids) == 2, "both studies routed, one job each"
    return Routed(gateway, ids)


def redrive(gateway: Gateway, broker_url: str, tasks_url: str | None = None) -> JobRedrive:
    settings = gateway.parts.settings
    app = create_celery(settings.model_copy(update={"broker_url": tasks_url or broker_url}))
    policy = RedrivePolicy(
        poll_s=0.1,
        backoff=Backoff(1.0, 4.0),
        lease_s=4.0,
        requeue_after_s=REQUEUE_AFTER_S,
        running_grace_s=REQUEUE_AFTER_S,
    )
    watch = BrokerWatch(BrokerProbe(broker_url))
    return JobRedrive(gateway.parts.db, CeleryTasks(app, settings), watch, policy)


def test_due_tasks_are_sent_once_and_again_when_the_broker_restarted(
    routed: Routed, broker: RedisServer
) -> None:
    driver = redrive(routed.gateway, broker.url)
    assert driver.run_once() == 2  # recorded due: sent
    assert broker.waiting_messages() == 2
    for job in routed.jobs():
        assert job.state == JobState.QUEUED and job.sends == 1 and job.last_error is None
        assert job.next_attempt_at is not None
        left = (job.next_attempt_at - utcnow()).total_seconds()
        assert REQUEUE_AFTER_S - 30 < left <= REQUEUE_AFTER_S  # the safety net, not sooner
    assert driver.run_once() == 0  # nothing due: nothing sent twice

    before = broker.run_id()
    broker.kill()  # no persistence: both messages are gone
    assert driver.run_once() == 0  # nothing sent while the broker is away
    assert [job.sends for job in routed.jobs()] == [1, 1]
    broker.start()
    assert broker.run_id() != before and broker.waiting_messages() == 0
    assert driver.run_once() == 2  # another broker instance: what it may have lost is due
    assert broker.waiting_messages() == 2
    assert [job.sends for job in routed.jobs()] == [2, 2]

    # The safety net: a job whose task was sent long ago and is still queued.
    first = routed.job_ids[0]
    with routed.gateway.parts.db.session() as session:
        session.execute(update(JobRow).where(JobRow.id == first).values(next_attempt_at=utcnow()))
    assert driver.run_once() == 1
    assert [job.sends for job in routed.jobs()] == [3, 2]


def test_a_send_that_fails_is_due_again_after_a_bounded_backoff(
    routed: Routed, broker: RedisServer
) -> None:
    # The watch sees a live broker, the sends go to a port where none listens.
    driver = redrive(routed.gateway, broker.url, tasks_url=f"redis://127.0.0.1:{free_port()}/0")
    assert driver.run_once() == 0
    first, second = routed.jobs()
    assert first.sends == 1 and "send failed" in (first.last_error or "")
    assert first.next_attempt_at is not None
    wait = (first.next_attempt_at - utcnow()).total_seconds()
    assert 0 < wait <= 1.0  # the first backoff
    assert second.sends == 1  # claimed with it; its lease ends within the longest backoff
    assert driver.run_once() == 0
    assert [job.sends for job in routed.jobs()] == [1, 1]  # not due yet: not tried
    waits = []
    for expected in (2, 3, 4):
        job = routed.jobs()[0]
        assert job.next_attempt_at is not None
        time.sleep(max(0.0, (job.next_attempt_at - utcnow()).total_seconds()) + 0.05)
        driver.run_once()
        job = routed.jobs()[0]
        assert job.sends == expected
        assert job.next_attempt_at is not None
        waits.append(round((job.next_attempt_at - utcnow()).total_seconds()))
    assert waits == [2, 4, 4]  # doubling, bounded by the longest backoff
    assert broker.waiting_messages() == 0


def test_an_inferred_job_without_results_gets_its_report_sent_when_due(
    routed: Routed, broker: RedisServer
) -> None:
    driver = redrive(routed.gateway, broker.url)
    assert driver.run_once() == 2
    db = routed.gateway.parts.db
    first, second = routed.job_ids
    past = utcnow() - timedelta(seconds=5)
    with db.session() as session:  # both analysed; their workers send the reports
        session.execute(update(JobRow).values(state=JobState.INFERRED.value, finished_at=past))
        session.execute(update(JobRow).values(next_attempt_at=None))
    assert driver.run_once() == 0  # within the grace: the worker's own send counts
    report_due(db, first, "report not sent: OperationalError")  # a worker could not send
    assert driver.run_once() == 1
    assert [job.sends for job in routed.jobs()] == [2, 1]
    long_ago = utcnow() - timedelta(seconds=REQUEUE_AFTER_S + 1)
    with db.session() as session:
        session.execute(update(JobRow).where(JobRow.id == second).values(finished_at=long_ago))
    assert driver.run_once() == 1  # the grace passed with no results: sent again
    assert broker.waiting_messages() == 2 + 2


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


def test_a_lost_broker_is_tried_again_within_the_longest_backoff(
    make_settings: Callable[..., Settings],
) -> None:
    """kombu alone waits up to 30 s between tries (Celery's worker passes no bound)."""
    settings = make_settings(
        broker_url=f"redis://127.0.0.1:{free_port()}/0", retry_max_backoff_s=0.3
    )
    waits: list[float] = []
    connection = create_celery(settings).connection_for_write()
    try:
        with pytest.raises(Exception, match=r"Connection refused|Error 111"):
            connection.ensure_connection(lambda _exc, wait: waits.append(wait), 6)
    finally:
        connection.release()
    assert len(waits) >= 5 and max(waits) <= 0.3


def test_a_run_that_met_an_unavailable_dependency_is_queued_again_not_failed(
    routed: Routed,
) -> None:
    from gateway.index.instances import current_instance_keys
    from gateway.index.tables import StudyEventRow
    from gateway.jobs.states import hand_back, missing_inputs, set_job_state

    db, store = routed.gateway.parts.db, routed.gateway.parts.store
    first, second = routed.job_ids
    # It met the outage before it started: still queued, its task due again soon.
    assert hand_back(db, first, "DatabaseError: away", 4.0)
    job = routed.jobs()[0]
    assert job.state == JobState.QUEUED and job.last_error == "DatabaseError: away"
    assert job.next_attempt_at is not None
    assert 3.0 < (job.next_attempt_at - utcnow()).total_seconds() <= 4.0
    with db.session() as session:
        taken = session.get(JobRow, first)
        assert taken is not None
        set_job_state(session, taken, JobState.RUNNING)
    assert hand_back(db, first, "StorageError: S3 away", 4.0)
    job = routed.jobs()[0]
    assert job.state == JobState.QUEUED and job.last_error == "StorageError: S3 away"
    assert job.next_attempt_at is not None
    assert 3.0 < (job.next_attempt_at - utcnow()).total_seconds() <= 4.0
    with db.session() as session:
        states = [
            e.detail["state"]
            for e in session.scalars(select(StudyEventRow).where(StudyEventRow.kind == "job"))
            if e.detail["job_id"] == first
        ]
    assert states == ["running", "queued"]  # on the timeline, never "failed"
    # Inputs really gone are another matter: named, so the job can fail with the reason.
    assert missing_inputs(db, store, second) == []
    with db.session() as session:
        row = session.get(JobRow, second)
        assert row is not None
        keys = current_instance_keys(session, row.series_uids)
    store.delete(keys[0])
    assert missing_inputs(db, store, second) == [keys[0]]
