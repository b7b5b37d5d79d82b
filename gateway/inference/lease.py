"""A running job's lease: the worker that runs a job renews ``jobs.heartbeat_at`` while it
runs, so that another delivery of the same task can tell a live runner from a dead one.

Redis delivers an unacknowledged task again once ``broker_visibility_timeout_s`` has passed,
even while its worker is still running it (a CT on a loaded node can take longer). That
delivery finds the heartbeat fresh and is skipped, instead of running the job a second time.
A worker killed mid-job stops renewing: the broker's own redelivery (after the visibility
timeout, which is longer than the lease) or ``aigw serve``'s redrive (after three leases)
finds the heartbeat stale and the job is taken over.
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
from gateway.settings import Settings

log = logging.getLogger(__name__)

STALE_LEASES = 3  # aigw serve sends a running job again when its heartbeat is this many leases old


def lease_seconds(settings: Settings) -> float:
    """The lease in force: ``job_lease_s``, capped at half the visibility timeout, so that
    the broker's redelivery after a worker's death always finds the lease run out."""
    return min(settings.job_lease_s, settings.broker_visibility_timeout_s / 2)


def held_by_a_live_runner(job: JobRow, now: datetime, lease_s: float) -> bool:
    """Whether another runner renewed this running job's heartbeat within the lease."""
    return (
        job.state == JobState.RUNNING.value
        and job.heartbeat_at is not None
        and job.heartbeat_at > now - timedelta(seconds=lease_s)
    )


@contextmanager
def heartbeat(db: Database, job_id: int, lease_s: float) -> Iterator[None]:
    """Renew the job's heartbeat every third of the lease while the block runs."""
    stop = threading.Event()
    thread = threading.Thread(
        target=_beat, args=(db, job_id, lease_s / 3, stop), name=f"heartbeat-{job_id}", daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=lease_s)


def _beat(db: Database, job_id: int, every_s: float, stop: threading.Event) -> None:
    while not stop.wait(every_s):
        try:
            with db.transaction() as connection:
                connection.execute(
                    update(JobRow)
                    .where(JobRow.id == job_id, JobRow.state == JobState.RUNNING.value)
                    .values(heartbeat_at=utcnow())
                )
        except DatabaseError as exc:
            # The run goes on; a missed beat at worst lets another runner take the job over,
            # and its results replace these in one transaction (the pipeline is idempotent).
            log.warning("job heartbeat not renewed", extra={"job_id": job_id, "error": str(exc)})
