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
from typing import Protocol

from sqlalchemy import and_, or_, select, update

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


class Lease(Protocol):
    """What a job's lease is read from (a :class:`JobRow`, or the recorder's row)."""

    @property
    def runner(self) -> str | None: ...
    @property
    def state(self) -> str: ...
    @property
    def heartbeat_at(self) -> datetime | None: ...


def a_live_run_of(job: Lease, runner: str | None, now: datetime, lease_s: float) -> bool:
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


class Heartbeats:
    """One thread per worker renewing the heartbeat of every job it runs, every third of the
    lease, in one UPDATE: each job only while it is running and this runner holds it (a job
    taken over by another delivery, or finished, is left alone)."""

    def __init__(self, db: Database, lease_s: float) -> None:
        self.db = db
        self.every_s = lease_s / 3
        self._held: dict[int, list[str | None]] = {}  # job id → its runners here
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._thread.start()

    @contextmanager
    def holding(self, job_id: int, runner: str | None) -> Iterator[None]:
        """The job's heartbeat renewed for ``runner`` while the block runs."""
        with self._lock:
            self._held.setdefault(job_id, []).append(runner)
        try:
            yield
        finally:
            with self._lock:
                runners = self._held[job_id]
                runners.remove(runner)
                if not runners:
                    del self._held[job_id]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3 * self.every_s)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            with self._lock:
                held = [(job_id, r) for job_id, runners in self._held.items() for r in runners]
            if held:
                self._renew(held)

    def _renew(self, held: list[tuple[int, str | None]]) -> None:
        # The set changes every tick: an expanding statement, once a third of the lease.
        holders = [
            and_(JobRow.id == job_id, JobRow.runner.is_(None) if r is None else JobRow.runner == r)
            for job_id, r in held
        ]
        # Locked in id order first, as the recorder locks its groups: the two never wait on
        # each other in a cycle (PostgreSQL; SQLite has one writer and ignores FOR UPDATE).
        mine = (
            select(JobRow.id)
            .where(JobRow.state == JobState.RUNNING.value, or_(*holders))
            .order_by(JobRow.id)
            .with_for_update()
        )
        try:
            with self.db.transaction() as connection:
                connection.execute(
                    update(JobRow).where(JobRow.id.in_(mine)).values(heartbeat_at=utcnow())
                )
        except DatabaseError as exc:
            # The runs go on; a missed beat at worst lets the same delivery's copy run a job
            # again, and its results replace these in one transaction.
            log.warning("job heartbeats not renewed", extra={"jobs": len(held), "error": str(exc)})


@contextmanager
def heartbeat(db: Database, job_id: int, runner: str | None, lease_s: float) -> Iterator[None]:
    """One job's heartbeat renewed while the block runs, by a thread of its own (an external
    device's send; inference shares its context's :class:`Heartbeats`)."""
    beats = Heartbeats(db, lease_s)
    try:
        with beats.holding(job_id, runner):
            yield
    finally:
        beats.close()
