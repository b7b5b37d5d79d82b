"""The start stage: a job claimed for this delivery and its instances' object keys read, in
one write that the group recorder (:mod:`gateway.inference.record`) commits with whatever
other jobs start or finish at the same moment.

A job alone would cost two transactions before its first byte is decoded — its claim and
the key lookup — and on SQLite every transaction takes the one writer's lock and the claim
an fsync; with a few jobs in flight, those commits and not the cores set the pace. The
claim is what it was alone: the row locked, a finished job or a live copy of the same
delivery left alone (:func:`gateway.inference.lease.a_live_run_of`), ``running`` set with
the runner; only the transaction (:mod:`gateway.inference.group_write`) is shared, and the
keys of all the jobs it starts are read together.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection

from gateway.index.instances import current_instance_keys, current_keys_by_series
from gateway.inference.group_write import GroupWrite, LockedJob
from gateway.inference.lease import a_live_run_of
from gateway.jobs.states import DONE_STATES, JobState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Start:
    """A delivery asking to run a job (``runner``: its task id and retry count)."""

    job_id: int
    runner: str | None
    lease_s: float


@dataclass(frozen=True)
class StartedJob:
    """A job this delivery now runs, with what its stages read."""

    id: int
    series_uids: tuple[str, ...]
    device_key: str
    priority: int  # gateway.routing.Priority: urgent studies are batched first
    keys: tuple[str, ...]  # the series' current instances, in the order they are decoded
    # The series of the prior studies its device asked for (filled in after the start);
    # the reference devices read none.
    prior_series_uids: tuple[str, ...] = ()


def start_job(group: GroupWrite, job: LockedJob | None, start: Start) -> bool:
    """Claim the locked ``job`` for ``start.runner`` in ``group``; False when it is done or
    a live copy of this delivery runs it."""
    if job is None or job.state in DONE_STATES:
        return False
    if a_live_run_of(job, start.runner, group.now, start.lease_s):
        log.info("a copy of the delivery running this job: skipped", extra={"job_id": job.id})
        return False
    group.move(job, JobState.RUNNING, {"attempt": job.attempts + 1}, runner=start.runner)
    return True


def started_jobs(connection: Connection, jobs: Sequence[LockedJob]) -> dict[int, StartedJob]:
    """Job id → what the stages of each claimed job read, its instances' keys included:
    one query for every job of one series (nearly all), one more per job of several."""
    series = {job.id: tuple(job.series_uids or [job.series_uid]) for job in jobs}
    by_series = current_keys_by_series(
        connection, (uids[0] for uids in series.values() if len(uids) == 1)
    )
    started = {}
    for job in jobs:
        uids = series[job.id]
        if len(uids) == 1:
            keys = by_series.get(uids[0], [])
        else:
            keys = current_instance_keys(connection, uids)
        started[job.id] = StartedJob(job.id, uids, job.device_key, job.priority, tuple(keys))
    return started
