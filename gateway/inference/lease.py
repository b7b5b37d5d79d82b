"""A running job's lease: the delivery that runs a job (``jobs.runner``: its task id and
retry count) renews ``jobs.heartbeat_at`` while it runs, so that the same delivery arriving
again can tell a live run from a dead one.

Redis delivers an unacknowledged task again once ``broker_visibility_timeout_s`` has passed,
even while its worker is still running it (a CT on a loaded node can take longer). That
second copy is the same delivery: it finds the heartbeat fresh and is skipped instead of
running the job a second time. Any other delivery — the task's own retry after a transient
error, a task sent again by ``aigw serve`` — takes the job over as before (the pipeline is
idempotent). A worker killed mid-job stops renewing: the broker's redelivery (after the
visibility timeout, longer than the lease) takes it over, or, where that copy was skipped
while the run lived, the redrive does (:func:`runner_stale_s`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import update

from gateway.errors import DatabaseError
from gateway.index.database import Database
from gateway.index.tables import JobRow, utcnow
from gateway.jobs.states import JobState
from gateway.jobs.task_queue import unacked_restore_interval_s
from gateway.settings import Settings

log = logging.getLogger(__name__)

STALE_LEASES = 3  # leases past the broker's own redelivery before aigw serve sends a job again


def lease_seconds(settings: Settings) -> float:
    """The lease in force: ``job_lease_s``, capped at half the visibility timeout, so that
    the broker's redelivery after a worker's death always finds the lease run out."""
    return min(settings.job_lease_s, settings.broker_visibility_timeout_s / 2)


def runner_stale_s(settings: Settings) -> float:
    """How old a running job's heartbeat is when ``aigw serve`` sends its task again: only
    after the broker's own redelivery had its chance (the visibility timeout and one restore
    interval), then three leases — else the two deliveries would both run it."""
    visibility = settings.broker_visibility_timeout_s
    return (
        visibility + unacked_restore_interval_s(settings) + STALE_LEASES * lease_seconds(settings)
    )


def a_live_run_of(job: JobRow, runner: str | None, now: datetime, lease_s: float) -> bool:
    """Whether ``runner`` is a second copy of the delivery that is running this job now
    (same runner, heartbeat renewed within the lease). A delivery without a name (a direct
    call) is never a copy."""
    return (
        runner is not None
        and job.runner == runner
        and job.state == JobState.RUNNING.value
        and job.heartbeat_at is not None
        and job.heartbeat_at > now - timedelta(seconds=lease_s)
    )


@contextmanager
def heartbeat(db: Database, job_id: int, runner: str | None, lease_s: float) -> Iterator[None]:
    """Renew the job's heartbeat every third of the lease while the block runs, for as long
    as this runner holds it."""
    stop = threading.Event()
    thread = threading.Thread(
        target=_beat,
        args=(db, job_id, runner, lease_s / 3, stop),
        name=f"heartbeat-{job_id}",
        daemon=True,
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=lease_s)


def _beat(
    db: Database, job_id: int, runner: str | None, every_s: float, stop: threading.Event
) -> None:
    held = JobRow.runner.is_(None) if runner is None else JobRow.runner == runner
    while not stop.wait(every_s):
        try:
            with db.transaction() as connection:
                connection.execute(
                    update(JobRow)
                    .where(JobRow.id == job_id, JobRow.state == JobState.RUNNING.value, held)
                    .values(heartbeat_at=utcnow())
                )
        except DatabaseError as exc:
            # The run goes on; a missed beat at worst lets the same delivery's copy run the
            # job again, and its results replace these in one transaction.
            log.warning("job heartbeat not renewed", extra={"job_id": job_id, "error": str(exc)})
