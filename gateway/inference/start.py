"""The start stage: a job claimed for this delivery and its instances' object keys read, in
one write that the group recorder (:mod:`gateway.inference.record`) commits with whatever
other jobs start or finish at the same moment.

A job alone would cost two transactions before its first byte is decoded — its claim and
the key lookup — and on SQLite every transaction takes the one writer's lock and the claim
an fsync; with a few jobs in flight, those commits and not the cores set the pace. The
claim is what it was alone: the row locked, a finished job or a live copy of the same
delivery left alone (:func:`gateway.inference.lease.a_live_run_of`), ``running`` set with
the runner; only the commit is shared.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.orm import Session

from gateway.index.instances import current_instance_keys
from gateway.index.tables import JobRow, utcnow
from gateway.inference.lease import a_live_run_of
from gateway.jobs.states import DONE_STATES, JobState, set_job_state

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


def write_start(session: Session, start: Start) -> StartedJob | None:
    """Claim the job in ``session`` and read its keys; None when it is done or a live copy
    of this delivery runs it."""
    job = session.get(JobRow, start.job_id, with_for_update=True)  # one runner records
    if job is None or job.state in DONE_STATES:
        return None
    if a_live_run_of(job, start.runner, utcnow(), start.lease_s):
        log.info("a copy of the delivery running this job: skipped", extra={"job_id": job.id})
        return None
    set_job_state(session, job, JobState.RUNNING, {"attempt": job.attempts + 1})
    job.runner = start.runner
    series = tuple(job.series_uids or [job.series_uid])
    keys = tuple(current_instance_keys(session, series))
    return StartedJob(job.id, series, job.device_key, job.priority, keys)
