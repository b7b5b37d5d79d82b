"""The stuck made visible: what waits in each working state, since when, and the verdict.

A working state is one where the gateway owes the next step: a complete study to route, a
job to run (queued, running), an analysed job's results to build, a result to deliver. For
each, the count, the age of its oldest item and the last transient error; an item older
than its state's bound (``stuck_after_s``), or a dependency that does not answer, makes the
gateway ``degraded`` — with the reason. ``/api/v1/health``, ``/metrics`` and ``aigw health``
all read this one answer.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from gateway.delivery.outbox import OutboxState
from gateway.errors import GatewayError
from gateway.index.database import Database
from gateway.index.object_store import ObjectStore
from gateway.index.schema import SchemaState, read_schema
from gateway.index.study_state import ROUTING_STATE
from gateway.index.tables import JobRow, OutboxRow, StudyRow, utcnow
from gateway.jobs.broker import BrokerProbe
from gateway.jobs.states import JobState, unreported
from gateway.settings import Settings
from gateway.settings_groups import StuckBounds


class WorkingState(StrEnum):
    ROUTING = "routing"  # a complete study, not yet routed
    QUEUED = "queued"  # a job waiting for a worker
    RUNNING = "running"  # a job being analysed
    REPORTING = "reporting"  # an analysed job whose results are not recorded
    DELIVERING = "delivering"  # a result not yet acknowledged by its destination


class HealthStatus(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"


class Waiting(BaseModel):
    """One working state: how many items, the oldest one's age, its bound, the last error."""

    model_config = ConfigDict(extra="forbid")

    state: WorkingState
    count: int
    oldest_age_s: float | None
    bound_s: float
    last_error: str | None = None

    @property
    def stuck(self) -> bool:
        return self.oldest_age_s is not None and self.oldest_age_s > self.bound_s

    def reason(self) -> str:
        text = (
            f"{self.state.value}: {self.count} waiting, the oldest for {self.oldest_age_s:.0f} s "
            f"(bound {self.bound_s:.0f} s)"
        )
        return f"{text}; last error: {self.last_error}" if self.last_error else text


class HealthReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: HealthStatus
    reasons: list[str]
    dependencies: dict[str, str]  # name → "ok" or why not
    waiting: list[Waiting]


# state → (which rows, the time its wait started, the row type's last error)
def _states() -> dict[WorkingState, tuple[Any, ColumnElement[bool], InstrumentedAttribute[Any]]]:
    return {
        WorkingState.ROUTING: (
            StudyRow,
            StudyRow.state == ROUTING_STATE.value,
            StudyRow.completed_at,
        ),
        WorkingState.QUEUED: (JobRow, JobRow.state == JobState.QUEUED.value, JobRow.created_at),
        WorkingState.RUNNING: (JobRow, JobRow.state == JobState.RUNNING.value, JobRow.started_at),
        WorkingState.REPORTING: (JobRow, unreported(), JobRow.finished_at),
        WorkingState.DELIVERING: (
            OutboxRow,
            OutboxRow.state == OutboxState.PENDING.value,
            OutboxRow.created_at,
        ),
    }


def waiting(db: Database, bounds: StuckBounds, now: datetime | None = None) -> list[Waiting]:
    """Every working state, in the order a study meets them (DatabaseError when away)."""
    now = now or utcnow()
    found = []
    with db.session() as session:
        for state, (model, where, since) in _states().items():
            query = select(func.count(), func.min(since)).where(where)
            count, oldest = session.execute(query).one()
            age = (now - _aware(oldest)).total_seconds() if count and oldest else None
            found.append(
                Waiting(
                    state=state,
                    count=int(count),
                    oldest_age_s=None if age is None else round(max(age, 0.0), 1),
                    bound_s=float(getattr(bounds, state.value)),
                    last_error=_last_error(session, model, where) if count else None,
                )
            )
    return found


def _last_error(session: Session, model: Any, where: ColumnElement[bool]) -> str | None:
    query = (
        select(model.last_error)
        .where(where, model.last_error.is_not(None))
        .order_by(model.next_attempt_at.desc())
        .limit(1)
    )
    error = session.scalar(query)
    return str(error)[:300] if error else None


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=utcnow().tzinfo)


def dependencies(db: Database, store: ObjectStore, broker_url: str) -> dict[str, str]:
    """Each dependency: "ok", or why it does not answer now."""
    checks: dict[str, str] = {}
    probe = BrokerProbe(broker_url)
    try:
        for name, check in (
            ("database", db.check),
            ("object_store", store.check),
            ("broker", probe.identity),
        ):
            try:
                check()
                checks[name] = "ok"
            except GatewayError as exc:
                checks[name] = str(exc)[:300]
    finally:
        probe.close()
    if checks["database"] == "ok":
        checks["schema"] = _schema(db)
    return checks


def _schema(db: Database) -> str:
    try:
        schema = read_schema(db)
    except GatewayError as exc:
        return str(exc)[:300]
    return "ok" if schema.state == SchemaState.CURRENT else schema.explain()


def assess(db: Database, store: ObjectStore, settings: Settings) -> HealthReport:
    """Healthy, or degraded with every reason: a dependency down, an item stuck."""
    found = dependencies(db, store, settings.broker_url)
    reasons = [f"{name}: {why}" for name, why in found.items() if why != "ok"]
    items: list[Waiting] = []
    if found.get("schema") == "ok":
        try:
            items = waiting(db, settings.stuck_after_s)
        except GatewayError as exc:
            reasons.append(f"database unavailable: {exc}")
    reasons += [item.reason() for item in items if item.stuck]
    status = HealthStatus.DEGRADED if reasons else HealthStatus.HEALTHY
    return HealthReport(status=status, reasons=reasons, dependencies=found, waiting=items)
