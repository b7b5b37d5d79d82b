"""A running job's lease: a copy of the delivery that is running a job (Redis delivers an
unacknowledged task again after the visibility timeout even while its worker runs it) is
skipped while the run's heartbeat is fresh; any other delivery (the task's retry after a
transient error) takes the job over at once; a stale heartbeat is taken over, and
``aigw serve``'s redrive sends such a job again."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, select, update

from gateway.demo.synthetic import chest_xray_study, write_study
from gateway.index.read_model import JobItem
from gateway.index.tables import JobRow, OutboxRow, ResultRow, utcnow
from gateway.inference.lease import Heartbeats, heartbeat, lease_seconds
from gateway.inference.pipeline import run_job
from gateway.jobs.states import JobState, due_to_infer
from gateway.settings import Settings
from tests.inference.test_inference_flow import (  # noqa: F401 (the fixtures)
    _finished,
    _send,
    decode_memory_limit_mb,
    test_device_gateway,
)
from workers.serve import Gateway
from workers.worker import inference_context


def _analysed_job(gateway: Gateway, tmp_path: Path, seed: int) -> JobItem:
    """A fluorography study sent, analysed by the test device, and its one job, once its
    report has been recorded too: the results pool commits it ~0.5 s after the inference,
    and a test that changes the job meanwhile would race it."""
    study = chest_xray_study(
        seed=seed, kind="fluorography", modality="DX", sop="dx", size=(256, 256)
    )
    _send(gateway, write_study(study, tmp_path / "in"))
    _, (job,) = _finished(gateway, study.study_instance_uid)
    assert job.state == "inferred", job.reason  # a failed job gets no report to wait for
    deadline = time.monotonic() + 60  # a bound on a failing test's wait, not a timing goal
    while not _has_results(gateway, job.job_id):
        assert time.monotonic() < deadline, "the job's report was never recorded"
        time.sleep(0.05)
    return job


def _renewed(gateway: Gateway, job_id: int, after: datetime) -> None:
    """Wait until a heartbeat of the job's later than ``after`` has committed: a tick every
    0.1 s, but its UPDATE may queue behind another writer."""
    deadline = time.monotonic() + 30  # a bound on a failing test's wait, not a timing goal
    while (_job(gateway, job_id).heartbeat_at or after) <= after:
        assert time.monotonic() < deadline, f"job {job_id}'s heartbeat was never renewed"
        time.sleep(0.05)


def _has_results(gateway: Gateway, job_id: int) -> bool:
    with gateway.parts.db.session() as session:
        found = session.scalar(select(ResultRow.id).where(ResultRow.job_id == job_id).limit(1))
        return found is not None


def _job(gateway: Gateway, job_id: int) -> JobRow:
    with gateway.parts.db.session() as session:
        job = session.get(JobRow, job_id)
        assert job is not None
        session.expunge(job)
        return job


def _set_running(gateway: Gateway, job_id: int, beat_age_s: float, runner: str = "t1:0") -> None:
    with gateway.parts.db.transaction() as connection:
        connection.execute(
            update(JobRow)
            .where(JobRow.id == job_id)
            .values(
                state=JobState.RUNNING.value,
                heartbeat_at=utcnow() - timedelta(seconds=beat_age_s),
                runner=runner,
                next_attempt_at=None,
                finished_at=None,
            )
        )


def test_a_copy_of_a_live_runs_delivery_is_skipped_and_a_dead_runner_is_taken_over(
    test_device_gateway: Gateway,  # noqa: F811
    tmp_path: Path,
) -> None:
    gateway = test_device_gateway
    job = _analysed_job(gateway, tmp_path, seed=31)
    assert job.state == "inferred"
    context = inference_context(gateway.parts)
    assert context.lease_s == 30.0
    attempts = _job(gateway, job.job_id).attempts

    _set_running(gateway, job.job_id, beat_age_s=1)  # a live run renewed it a second ago
    assert run_job(context, job.job_id, runner="t1:0") == "skipped"  # its copy
    held = _job(gateway, job.job_id)
    assert (held.state, held.attempts) == ("running", attempts)

    _set_running(gateway, job.job_id, beat_age_s=31)  # its runner stopped renewing: dead
    assert run_job(context, job.job_id, runner="t1:0") == "inferred"
    taken = _job(gateway, job.job_id)
    assert (taken.state, taken.attempts, taken.runner) == ("inferred", attempts + 1, "t1:0")


def test_the_retry_after_a_transient_error_takes_over_at_once(
    test_device_gateway: Gateway,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A run that met an unavailable store or database leaves its job running with a fresh
    heartbeat; the task's retry (its retry count one higher) must not wait for the lease."""
    gateway = test_device_gateway
    job = _analysed_job(gateway, tmp_path, seed=34)
    attempts = _job(gateway, job.job_id).attempts
    _set_running(gateway, job.job_id, beat_age_s=1, runner="t1:0")
    assert run_job(inference_context(gateway.parts), job.job_id, runner="t1:1") == "inferred"
    assert _job(gateway, job.job_id).attempts == attempts + 1


def test_the_heartbeat_is_renewed_while_the_job_runs_and_only_while_running(
    test_device_gateway: Gateway,  # noqa: F811
    tmp_path: Path,
) -> None:
    gateway = test_device_gateway
    job = _analysed_job(gateway, tmp_path, seed=32)
    _set_running(gateway, job.job_id, beat_age_s=100)
    before = _job(gateway, job.job_id).heartbeat_at
    assert before is not None
    beats = Heartbeats(gateway.parts.db, lease_s=0.3)  # a worker's, for all its jobs
    with beats.holding(job.job_id, "t1:0"):
        _renewed(gateway, job.job_id, before + timedelta(seconds=90))
    with gateway.parts.db.transaction() as connection:
        connection.execute(
            update(JobRow).where(JobRow.id == job.job_id).values(state=JobState.INFERRED.value)
        )
    # Read after the job left RUNNING: a renewal still in flight from the block above has
    # either landed by now or no longer matches the job.
    renewed = _job(gateway, job.job_id).heartbeat_at
    assert renewed is not None and renewed > before + timedelta(seconds=90)

    with beats.holding(job.job_id, "t1:0"):
        time.sleep(0.5)
    assert _job(gateway, job.job_id).heartbeat_at == renewed  # a finished job is left alone

    _set_running(gateway, job.job_id, beat_age_s=100, runner="t2:0")  # taken over by another
    beats.close()
    with heartbeat(gateway.parts.db, job.job_id, "t1:0", lease_s=0.3):  # one job's own
        time.sleep(0.5)
    stale = _job(gateway, job.job_id).heartbeat_at
    assert stale is not None and stale < utcnow() - timedelta(seconds=90)  # not the old one's


def test_one_heartbeat_renews_every_job_the_worker_holds_and_only_those(
    test_device_gateway: Gateway,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A worker's jobs share one heartbeat thread: each job is renewed for the runner that
    holds it, a job another delivery took over is not, and a job let go is not either."""
    gateway = test_device_gateway
    first, second, taken, left = (
        _analysed_job(gateway, tmp_path / str(seed), seed) for seed in (35, 36, 37, 38)
    )
    for job, runner in ((first, "t1:0"), (second, "t2:0"), (taken, "t9:0"), (left, "t4:0")):
        _set_running(gateway, job.job_id, beat_age_s=100, runner=runner)
    beats = Heartbeats(gateway.parts.db, lease_s=0.3)
    try:
        with beats.holding(left.job_id, "t4:0"):
            pass  # let go before the first tick
        with (
            beats.holding(first.job_id, "t1:0"),
            beats.holding(second.job_id, "t2:0"),
            beats.holding(taken.job_id, "t3:0"),  # another delivery holds it now
        ):
            # One tick renews every held job: once the first two are, it passed the third.
            stale = utcnow() - timedelta(seconds=90)
            _renewed(gateway, first.job_id, stale)
            _renewed(gateway, second.job_id, stale)
    finally:
        beats.close()
    fresh = utcnow() - timedelta(seconds=10)
    for job, renewed in ((first, True), (second, True), (taken, False), (left, False)):
        beat = _job(gateway, job.job_id).heartbeat_at
        assert beat is not None and (beat > fresh) is renewed


def test_the_redrive_sends_a_running_job_again_only_when_its_heartbeat_is_stale(
    test_device_gateway: Gateway,  # noqa: F811
    tmp_path: Path,
) -> None:
    gateway = test_device_gateway
    job = _analysed_job(gateway, tmp_path, seed=33)

    def due(runner_stale_s: float | None) -> bool:
        query = select(JobRow.id).where(
            JobRow.id == job.job_id, due_to_infer(utcnow(), 3600, runner_stale_s)
        )
        with gateway.parts.db.session() as session:
            return session.scalar(query) is not None

    _set_running(gateway, job.job_id, beat_age_s=10)
    assert not due(90) and not due(None)
    _set_running(gateway, job.job_id, beat_age_s=100)
    assert due(90)
    assert not due(None)  # without the heartbeat rule only the long grace applies


def test_the_lease_is_capped_at_half_the_visibility_timeout() -> None:
    assert lease_seconds(Settings(job_lease_s=30, broker_visibility_timeout_s=600)) == 30
    assert lease_seconds(Settings(job_lease_s=30, broker_visibility_timeout_s=10)) == 5


def test_a_retry_finding_its_job_inferred_without_results_asks_for_the_report(
    test_device_gateway: Gateway,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The database went away during the commit of a job's inference: the commit landed,
    the run never heard so, and its task's retry finds the job done. Without results yet,
    the retry answers "inferred" (its task then sends the report) instead of "skipped",
    which left the report to the re-drive's job_requeue_after_s (15 min by default)."""
    gateway = test_device_gateway
    job = _analysed_job(gateway, tmp_path, seed=33)
    context = inference_context(gateway.parts)
    attempts = _job(gateway, job.job_id).attempts
    with gateway.parts.db.transaction() as connection:  # as if the report never ran
        results = select(ResultRow.id).where(ResultRow.job_id == job.job_id)
        connection.execute(delete(OutboxRow).where(OutboxRow.result_id.in_(results)))
        connection.execute(delete(ResultRow).where(ResultRow.job_id == job.job_id))
    assert run_job(context, job.job_id, runner="t9:1") == "inferred"
    again = _job(gateway, job.job_id)
    assert (again.state, again.attempts) == ("inferred", attempts)  # not analysed twice

    with gateway.parts.db.transaction() as connection:  # another end state: nothing to send
        connection.execute(
            update(JobRow).where(JobRow.id == job.job_id).values(state=JobState.FAILED.value)
        )
    assert run_job(context, job.job_id, runner="t9:2") == "skipped"
