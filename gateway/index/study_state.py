"""The life of a study: its states and the timeline that records every transition.

``receiving → complete → routed → …`` with ``superseded`` when instances arrive after
completion (the study then completes again) and ``not_applicable`` / ``failed`` as ends.
Later stages add their states here so the whole life reads in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Connection, Table, insert
from sqlalchemy.orm import Session

from gateway.index.tables import StudyEventRow, StudyRow

EVENTS = cast(Table, StudyEventRow.__table__)
_INSERT_EVENTS = insert(EVENTS)  # built once: the recorder inserts in every transaction


class StudyState(StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    SUPERSEDED = "superseded"
    ROUTED = "routed"
    NOT_APPLICABLE = "not_applicable"
    FAILED = "failed"


# States in which the quiet-period timer runs: new instances are still expected.
OPEN_STATES = frozenset({StudyState.RECEIVING.value, StudyState.SUPERSEDED.value})
# The state with work pending on the gateway's side: routing the completion.
ROUTING_STATE = StudyState.COMPLETE


def set_state(
    session: Session,
    study: StudyRow,
    state: StudyState,
    at: datetime,
    detail: dict[str, Any] | None = None,
    note: str | None = None,
) -> None:
    """Move the study to ``state`` and put the transition on its timeline.

    A study that becomes ``complete`` is due to be routed now (a fresh attempt count, see
    :mod:`gateway.index.due`); in any other state nothing about it is due.
    """
    study.state = state.value
    study.state_changed_at = at
    if state == StudyState.COMPLETE:
        study.next_attempt_at, study.attempts, study.last_error = at, 0, None
    else:
        study.next_attempt_at = None
    record_event(session, study.id, "state", at, state=state, detail=detail, note=note)


def record_event(
    executor: Session | Connection,
    study_id: int,
    kind: str,
    at: datetime,
    *,
    state: StudyState | None = None,
    detail: dict[str, Any] | None = None,
    note: str | None = None,
) -> None:
    """Append to the study's timeline (from an ORM session or a Core connection)."""
    executor.execute(
        insert(EVENTS).values(event_row(study_id, kind, at, state=state, detail=detail, note=note))
    )


def event_row(
    study_id: int,
    kind: str,
    at: datetime,
    *,
    state: StudyState | None = None,
    detail: dict[str, Any] | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """One timeline entry's column values (for :func:`record_events`)."""
    return {
        "study_id": study_id,
        "at": at,
        "kind": kind,
        "state": state.value if state else None,
        "detail": detail or {},
        "note": note,
    }


def record_events(connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Append :func:`event_row` entries to their studies' timelines, in their order, in one
    statement (executemany where several)."""
    if rows:
        connection.execute(_INSERT_EVENTS, list(rows))
