"""One recorder transaction's job writes as Core statements: the group's jobs locked in one
statement, each write decided on what it reads as if it ran alone, then everything written
in a few executemany statements.

The rows are locked with ``SELECT … WHERE id IN (…) ORDER BY id FOR UPDATE`` (SQLite has
one writer and ignores FOR UPDATE): in id order, so two workers' groups never wait on each
other in a cycle. Writes are decided in id order (a job's own writes in their arrival
order) on the locked values, each seeing what the ones before it set — a second start of
a job in the same group finds it running — exactly as when each locked and wrote its row
in turn. What a move to a state sets is :func:`gateway.jobs.states.transition`'s, as for
the ORM's :func:`gateway.jobs.states.set_job_state`; the timeline entries too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, delete, insert, select, update

from gateway.index.study_state import record_events
from gateway.index.tables import FindingRow, JobRow
from gateway.jobs.states import JobState, job_event, transition

JOBS = cast(Table, JobRow.__table__)
FINDINGS = cast(Table, FindingRow.__table__)

# The columns a decision reads: its lease, its state, what its start hands the stages.
_LOCK = select(
    JOBS.c.id,
    JOBS.c.study_id,
    JOBS.c.series_uid,
    JOBS.c.series_uids,
    JOBS.c.device_key,
    JOBS.c.priority,
    JOBS.c.state,
    JOBS.c.attempts,
    JOBS.c.runner,
    JOBS.c.heartbeat_at,
)
# Built once: a statement made per call costs its construction and its cache key each time
# (~0.5 ms of the recorder's CPU a transaction, most of a small group's cost).
_LOCK_IDS = (
    _LOCK.where(JOBS.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(JOBS.c.id)
    .with_for_update()
)
# executemany, one row per job; the columns SET are the keys of its rows
_UPDATE = update(JOBS).where(JOBS.c.id == bindparam("job_row"))
_CLEAR_FINDINGS = delete(FINDINGS).where(FINDINGS.c.job_id.in_(bindparam("jobs", expanding=True)))
_INSERT_FINDINGS = insert(FINDINGS)


@dataclass
class LockedJob:
    """A job's row as the group's decisions see it: as locked, then as changed by the
    writes decided before (the lease's fields, :class:`gateway.inference.lease.Lease`)."""

    id: int
    study_id: int
    series_uid: str
    series_uids: list[str] | None
    device_key: str
    priority: int
    state: str
    attempts: int
    runner: str | None
    heartbeat_at: datetime | None


def lock_jobs(connection: Connection, job_ids: Iterable[int]) -> dict[int, LockedJob]:
    """The jobs that exist among ``job_ids``, locked for this transaction in id order."""
    rows = connection.execute(_LOCK_IDS, {"ids": sorted(set(job_ids))})
    return {row.id: LockedJob(**row._asdict()) for row in rows}


@dataclass
class GroupWrite:
    """What the group's decisions write, gathered in their order and written by
    :meth:`flush`."""

    now: datetime
    _columns: dict[int, dict[str, Any]] = field(default_factory=dict)  # job id → SET values
    _events: list[dict[str, Any]] = field(default_factory=list)
    _cleared: list[int] = field(default_factory=list)  # jobs whose findings are replaced
    _findings: list[dict[str, Any]] = field(default_factory=list)

    def move(
        self,
        job: LockedJob,
        state: JobState,
        detail: dict[str, Any] | None = None,
        **columns: Any,
    ) -> None:
        """``job`` to ``state`` (with ``columns`` set too), its timeline entry with
        ``detail``; later decisions of the group see the new values."""
        values = {**columns, **transition(state, self.now, job.attempts)}
        for name in ("state", "attempts", "runner", "heartbeat_at"):
            if name in values:
                setattr(job, name, values[name])
        self._columns.setdefault(job.id, {}).update(values)
        self._events.append(job_event(job, state, self.now, detail))

    def replace_findings(self, job_id: int, rows: Sequence[dict[str, Any]]) -> None:
        """The job's findings, replacing any an earlier run recorded."""
        self._cleared.append(job_id)
        self._findings.extend(rows)

    def flush(self, connection: Connection) -> None:
        """Everything decided, in as few statements as the rows' shapes allow."""
        if self._cleared:
            connection.execute(_CLEAR_FINDINGS, {"jobs": self._cleared})
        if self._findings:
            connection.execute(_INSERT_FINDINGS, self._findings)
        shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for job_id, values in sorted(self._columns.items()):  # rows written in id order
            shapes.setdefault(tuple(sorted(values)), []).append({**values, "job_row": job_id})
        for rows in shapes.values():
            connection.execute(_UPDATE, rows)
        record_events(connection, self._events)
