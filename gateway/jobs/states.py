"""Jobs: one (series, device) analysis each, with states and timeline entries.

``queued → running → inferred`` (results and delivery follow), or ``failed`` with the reason
and the attempt count; a job of an external device goes ``running → sent`` once the vendor
has the study, and waits there without holding a worker until its results arrive
(``inferred``) or its deadline passes (``failed``: "no answer from <device> within N s").
A run that met a transient error (database, object store) goes back to ``queued`` with the
error and a time it is due again, never to ``failed``. Every
transition is also written on the study's timeline, so a study's whole life reads in one
place.

What is due (:mod:`gateway.index.due`): a queued job's infer task when its
``next_attempt_at`` has come; a running job's again only when it has run longer than a
grace (its worker may be gone with the message) or was made due; an inferred job without
results its report task likewise.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import ColumnElement, and_, exists, or_, select, update
from sqlalchemy.orm import Session

from gateway.errors import StorageError
from gateway.index.database import Database
from gateway.index.instances import current_instance_keys
from gateway.index.object_store import ObjectStore
from gateway.index.study_state import event_row, record_events
from gateway.index.tables import DeviceRow, JobRow, ResultRow, utcnow


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    INFERRED = "inferred"
    FAILED = "failed"
    # An external device has the study; due (next_attempt_at) is its deadline.
    SENT = "sent"


DONE_STATES = frozenset({JobState.INFERRED.value, JobState.FAILED.value})


def set_job_state(
    session: Session,
    job: JobRow,
    state: JobState,
    detail: dict[str, Any] | None = None,
    reason: str | None = None,
    due_at: datetime | None = None,
) -> None:
    """Move the job to ``state``; ``due_at``: when its task is next due (back to queued)."""
    now = utcnow()
    for column, value in transition(state, now, job.attempts, reason, due_at).items():
        setattr(job, column, value)
    # Core: not the ORM's insert path, ~1 ms a job less, no autoflush
    record_events(session.connection(), [job_event(job, state, now, detail, reason)])


def transition(
    state: JobState,
    now: datetime,
    attempts: int,
    reason: str | None = None,
    due_at: datetime | None = None,
) -> dict[str, Any]:
    """The columns a move to ``state`` sets, ``attempts`` being the job's count before it:
    the one place that decides, for an ORM object (:func:`set_job_state`) and for the
    recorder's Core statements (:mod:`gateway.inference.group_write`) alike."""
    values: dict[str, Any] = {"state": state.value}
    # Running, inferred and failed jobs are due only after their grace or when made due; a
    # sent job at its deadline.
    if state == JobState.QUEUED:
        values["next_attempt_at"] = due_at or now
    else:
        values["next_attempt_at"] = due_at if state == JobState.SENT else None
    if state == JobState.RUNNING:
        values.update(started_at=now, heartbeat_at=now, attempts=attempts + 1)
    if state in (JobState.INFERRED, JobState.FAILED):
        values["finished_at"] = now
    if reason is not None:
        values["reason"] = reason
    return values


class EventJob(Protocol):
    """What a job's timeline entry names (a :class:`JobRow`, or a row read by Core)."""

    @property
    def id(self) -> int: ...
    @property
    def study_id(self) -> int: ...
    @property
    def device_key(self) -> str: ...
    @property
    def series_uid(self) -> str: ...


def job_event(
    job: EventJob,
    state: JobState,
    now: datetime,
    detail: dict[str, Any] | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """The study timeline's entry for the job's move to ``state`` (for
    :func:`gateway.index.study_state.record_events`)."""
    return event_row(
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
    """End the job ``failed``: only for what is wrong with its input or its device."""
    with db.session() as session:
        job = session.get(JobRow, job_id)
        if job is not None and job.state not in DONE_STATES:
            set_job_state(session, job, JobState.FAILED, {"attempts": job.attempts}, reason=reason)


def hand_back(db: Database, job_id: int, error: str, retry_in_s: float) -> bool:
    """A run that met a transient error: the job is queued (again), due after
    ``retry_in_s``, with the error kept — never its final outcome. False when it is done
    already (or gone)."""
    with db.session() as session:
        job = session.get(JobRow, job_id, with_for_update=True)
        if job is None or job.state in DONE_STATES:
            return False
        job.last_error = error[:2000]
        due = utcnow() + timedelta(seconds=retry_in_s)
        if job.state == JobState.QUEUED.value:  # it never started: only its task is due
            job.next_attempt_at = due
        else:
            set_job_state(session, job, JobState.QUEUED, {"retry_in_s": retry_in_s}, due_at=due)
        return True


def mark_sent(db: Database, job_id: int, deadline: datetime, detail: dict[str, Any]) -> bool:
    """The vendor has the job's series: ``sent`` until ``deadline``; False when the job
    moved on meanwhile (another delivery finished it, results came back already)."""
    with db.session() as session:
        job = session.get(JobRow, job_id, with_for_update=True)
        if job is None or job.state != JobState.RUNNING.value:
            return False
        set_job_state(session, job, JobState.SENT, detail, due_at=deadline)
        return True


def fail_overdue(db: Database, now: datetime, limit: int = 200) -> int:
    """Every ``sent`` job past its deadline ends ``failed`` with "no answer from <device>
    within N s" (a malfunction, counted as one); returns how many."""
    with db.session() as session:
        query = (
            select(JobRow)
            .where(JobRow.state == JobState.SENT.value, JobRow.next_attempt_at <= now)
            .order_by(JobRow.id)
            .limit(limit)
        )
        if not db.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        jobs = list(session.scalars(query))
        for job in jobs:
            name, deadline_s = _device_and_deadline(session, job.device_key)
            reason = f"no answer from {name} within {deadline_s:g} s"
            set_job_state(session, job, JobState.FAILED, {"deadline_s": deadline_s}, reason)
        return len(jobs)


def _device_and_deadline(session: Session, device_key: str) -> tuple[str, float]:
    device_id, _, version = device_key.partition("@")
    manifest = session.scalar(
        select(DeviceRow.manifest).where(
            DeviceRow.device_id == device_id, DeviceRow.version == version
        )
    )
    external = (manifest or {}).get("external") or {}
    return str((manifest or {}).get("name") or device_key), float(external.get("deadline_s", 0))


def report_due(db: Database, job_id: int, error: str | None, retry_in_s: float = 0.0) -> None:
    """An inferred job's report task is due again after ``retry_in_s`` (its last try met
    a transient error, or it could not be sent)."""
    with db.session() as session:
        session.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.state == JobState.INFERRED.value)
            .values(
                next_attempt_at=utcnow() + timedelta(seconds=retry_in_s),
                last_error=error[:2000] if error else None,
            )
        )


def unreported() -> ColumnElement[bool]:
    """Inferred jobs with no results recorded yet."""
    return and_(
        JobRow.state == JobState.INFERRED.value, ~exists().where(ResultRow.job_id == JobRow.id)
    )


def due_to_infer(
    now: datetime, running_grace_s: float, runner_stale_s: float | None = None
) -> ColumnElement[bool]:
    """Jobs whose infer task is to be sent: queued and due, or running and either made due,
    or with a heartbeat older than ``runner_stale_s`` (its worker died, and the delivery
    that would have taken it over was skipped while the heartbeat was fresh), or running
    for longer than ``running_grace_s`` (worker and message both gone)."""
    started_before = now - timedelta(seconds=running_grace_s)
    running = JobRow.state == JobState.RUNNING.value
    clauses = [
        and_(JobRow.state == JobState.QUEUED.value, JobRow.next_attempt_at <= now),
        and_(running, JobRow.next_attempt_at <= now),
        and_(running, JobRow.next_attempt_at.is_(None), JobRow.started_at <= started_before),
    ]
    if runner_stale_s is not None:
        beat_before = now - timedelta(seconds=runner_stale_s)
        clauses.append(
            and_(running, JobRow.next_attempt_at.is_(None), JobRow.heartbeat_at <= beat_before)
        )
    return or_(*clauses)


def due_to_report(now: datetime, grace_s: float) -> ColumnElement[bool]:
    """Inferred jobs without results whose report task is to be sent: made due, or
    finished longer than ``grace_s`` ago (the worker sends it itself when it finishes)."""
    finished_before = now - timedelta(seconds=grace_s)
    return and_(
        unreported(),
        or_(
            JobRow.next_attempt_at <= now,
            and_(JobRow.next_attempt_at.is_(None), JobRow.finished_at <= finished_before),
        ),
    )


def make_due_now(db: Database, *, running: bool = False) -> int:
    """Every queued job and every inferred job without results (and, with ``running``,
    every running job) is due now: their messages may be gone with the broker."""
    now = utcnow()
    states = [JobState.QUEUED.value] + ([JobState.RUNNING.value] if running else [])
    with db.session() as session:
        changed = session.execute(
            update(JobRow)
            .where(or_(JobRow.state.in_(states), unreported()))
            .values(next_attempt_at=now)
        )
        return int(getattr(changed, "rowcount", 0) or 0)


def missing_inputs(db: Database, store: ObjectStore, job_id: int) -> list[str] | None:
    """The job's source objects that are gone from the store; None when the store cannot
    tell now (it is away: the error is transient)."""
    with db.session() as session:
        job = session.get(JobRow, job_id)
        if job is None:
            return []
        keys = current_instance_keys(session, job.series_uids or [job.series_uid])
    try:
        return [key for key in keys if not store.exists(key)]
    except StorageError:
        return None
