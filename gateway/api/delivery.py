"""``/api/v1/destinations`` and ``/api/v1/outbox``: where results go, what is pending or
failed, and "retry now"."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Select, func, select

from gateway.access.http import Caller, Context, UidQuery, not_found
from gateway.api.errors import COMMON, responses
from gateway.api.params import IdPath, Limit, NameQuery
from gateway.delivery.outbox import OutboxState
from gateway.delivery.outbox import retry as outbox_retry
from gateway.index.database import Database
from gateway.index.tables import JobRow, OutboxRow, ResultRow, StudyRow

router = APIRouter(prefix="/api/v1", tags=["delivery"], responses=responses(*COMMON))

AnySelect = Select[*tuple[Any, ...]]


class DestinationStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    destination: str
    protocol: str
    pending: int
    delivered: int
    failed: int
    last_delivered_at: datetime | None
    last_error: str | None


class OutboxItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int
    result_id: int
    result_kind: str
    study_uid: str
    destination: str
    protocol: str
    state: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    remote_id: str | None
    created_at: datetime
    delivered_at: datetime | None


def _scoped(query: AnySelect, region: str | None) -> AnySelect:
    query = query.join(ResultRow, OutboxRow.result_id == ResultRow.id)
    query = query.join(JobRow, ResultRow.job_id == JobRow.id)
    query = query.join(StudyRow, JobRow.study_id == StudyRow.id)
    return query if region is None else query.where(StudyRow.region_code == region)


@router.get("/destinations")
def destinations(context: Context, caller: Caller) -> list[DestinationStatus]:
    """Each destination's deliveries by state (of the caller's region when scoped)."""
    query = _scoped(
        select(OutboxRow.destination, OutboxRow.protocol, OutboxRow.state, func.count()),
        caller.region,
    ).group_by(OutboxRow.destination, OutboxRow.protocol, OutboxRow.state)
    found: dict[str, DestinationStatus] = {}
    with context.db.session() as session:
        for destination, protocol, state, count in session.execute(query):
            item = found.setdefault(
                destination,
                DestinationStatus(
                    destination=destination,
                    protocol=protocol,
                    pending=0,
                    delivered=0,
                    failed=0,
                    last_delivered_at=None,
                    last_error=None,
                ),
            )
            if state in OutboxState.__members__.values():
                setattr(item, state, getattr(item, state) + count)
        for item in found.values():
            item.last_delivered_at = session.scalar(
                _scoped(select(func.max(OutboxRow.delivered_at)), caller.region).where(
                    OutboxRow.destination == item.destination
                )
            )
            item.last_error = session.scalar(
                _scoped(select(OutboxRow.last_error), caller.region)
                .where(
                    OutboxRow.destination == item.destination,
                    OutboxRow.state != OutboxState.DELIVERED,
                )
                .where(OutboxRow.last_error.is_not(None))
                .order_by(OutboxRow.id.desc())
                .limit(1)
            )
    return sorted(found.values(), key=lambda d: d.destination)


def _items(db: Database, query: AnySelect) -> list[OutboxItem]:
    with db.session() as session:
        return [
            OutboxItem(
                id=o.id,
                result_id=o.result_id,
                result_kind=kind,
                study_uid=uid,
                destination=o.destination,
                protocol=o.protocol,
                state=o.state,
                attempts=o.attempts,
                next_attempt_at=o.next_attempt_at,
                last_error=o.last_error,
                remote_id=o.remote_id,
                created_at=o.created_at,
                delivered_at=o.delivered_at,
            )
            for o, kind, uid in session.execute(query)
        ]


@router.get("/outbox")
def outbox(
    context: Context,
    caller: Caller,
    state: OutboxState | None = None,
    destination: NameQuery = None,
    study_uid: UidQuery = None,
    limit: Limit = 100,
) -> list[OutboxItem]:
    query = _scoped(select(OutboxRow, ResultRow.kind, StudyRow.study_uid), caller.region)
    if state:
        query = query.where(OutboxRow.state == state)
    if destination:
        query = query.where(OutboxRow.destination == destination)
    if study_uid:
        query = query.where(StudyRow.study_uid == study_uid)
    return _items(context.db, query.order_by(OutboxRow.id.desc()).limit(limit))


def _one(db: Database, outbox_id: int, region: str | None) -> OutboxItem | None:
    query = _scoped(select(OutboxRow, ResultRow.kind, StudyRow.study_uid), region)
    found = _items(db, query.where(OutboxRow.id == outbox_id))
    return found[0] if found else None


@router.get("/outbox/{outbox_id}", responses=responses(404))
def outbox_item(context: Context, caller: Caller, outbox_id: IdPath) -> OutboxItem:
    found = _one(context.db, outbox_id, caller.region)
    if found is None:
        raise not_found(f"outbox entry {outbox_id}")
    return found


@router.post("/outbox/{outbox_id}/retry", responses=responses(403, 404, 409))
def retry_now(context: Context, caller: Caller, outbox_id: IdPath) -> OutboxItem:
    """Make a delivery due now (pending or failed ones; a delivered one is left alone)."""
    if not caller.can_operate:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"role {caller.role.value} cannot retry")
    found = _one(context.db, outbox_id, caller.region)
    if found is None:
        raise not_found(f"outbox entry {outbox_id}")
    if found.state == OutboxState.DELIVERED:
        raise HTTPException(status.HTTP_409_CONFLICT, f"outbox entry {outbox_id} is delivered")
    if not outbox_retry(context.db, outbox_id):
        raise not_found(f"outbox entry {outbox_id}")
    after = _one(context.db, outbox_id, caller.region)
    assert after is not None
    return after
