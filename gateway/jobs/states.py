"""Jobs: one (series, device) analysis each, with states and timeline entries.

``queued → running → inferred`` (results and delivery add ``reported`` and ``delivered``),
or ``failed`` with the reason and the attempt count. Every transition is also written on the
study's timeline, so a study's whole life reads in one place.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from gateway.index.database import Database
from gateway.index.study_state import record_event
from gateway.index.tables import JobRow, ResultRow, utcnow


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    INFERRED = "inferred"
    FAILED = "failed"


DONE_STATES = frozenset({JobState.INFERRED.value, JobState.FAILED.value})


def set_job_state(
    session: Session,
    job: JobRow,
    state: JobState,
    detail: dict[str, Any] | None = None,
    reason: str | None = None,
) -> None:
    now = utcnow()
    job.state = state.value
    if state == JobState.RUNNING:
        job.started_at = now
        job.attempts += 1
    if state in (JobState.INFERRED, JobState.FAILED):
        job.finished_at = now
    if reason is not None:
        job.reason = reason
    record_event(
        session,
        job.study_id,
        "job",
        now,
        detail={
            "job_id": job.id,
            "device": job.device_key,
            "series_uid": job.series_uid,
            "state": state.value,
            **(detail or {}),
        },
        note=reason,
    )


def fail_job(db: Database, job_id: int, reason: str) -> None:
    with db.session() as session:
        job = session.get(JobRow, job_id)
        if job is not None and job.state not in DONE_STATES:
            set_job_state(session, job, JobState.FAILED, {"attempts": job.attempts}, reason=reason)


def pending_jobs(db: Database) -> list[JobRow]:
    """Jobs queued but not finished: after a restart their tasks may be gone with the
    in-memory broker, so they are sent again (the task is idempotent)."""
    with db.session() as session:
        return list(
            session.scalars(
                select(JobRow).where(
                    JobRow.state.in_([JobState.QUEUED.value, JobState.RUNNING.value])
                )
            )
        )


def stale_jobs(
    db: Database, queued_for_s: float, running_for_s: float
) -> list[tuple[int, str, int]]:
    """(id, queue, priority) of jobs queued or running for longer than these: their task may
    have been lost with the broker (a Redis restart without persistence)."""
    now = utcnow()
    queued_before = now - timedelta(seconds=queued_for_s)
    running_before = now - timedelta(seconds=running_for_s)
    with db.session() as session:
        query = select(JobRow.id, JobRow.queue, JobRow.priority).where(
            ((JobRow.state == JobState.QUEUED.value) & (JobRow.created_at <= queued_before))
            | ((JobRow.state == JobState.RUNNING.value) & (JobRow.started_at <= running_before))
        )
        return [(row.id, row.queue, row.priority) for row in session.execute(query)]


def jobs_awaiting_results(db: Database, older_than_s: float, limit: int = 100) -> list[int]:
    """Inferred jobs with no results recorded a while after they finished (their report
    task was lost with a worker): to be queued again."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with db.session() as session:
        query = (
            select(JobRow.id)
            .where(
                JobRow.state == JobState.INFERRED.value,
                JobRow.finished_at <= cutoff,
                ~exists().where(ResultRow.job_id == JobRow.id),
            )
            .order_by(JobRow.id)
            .limit(limit)
        )
        return list(session.scalars(query))
