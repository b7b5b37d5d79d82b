"""Work that is due: rows that carry a durable next attempt, claimed for one lease at a time.

Every state with work pending — a complete study to route, a job whose task is to be sent,
a result to deliver — keeps on its row when that work is next due (``next_attempt_at``), an
attempt counter and the last error. A claimer takes due rows by pushing ``next_attempt_at``
one lease ahead and counting the attempt (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so two
claimers never take the same row; SQLite serialises writers), does the work, and then
records the outcome while its claim still holds: done, or the error and the next attempt
after a backoff. A claim whose outcome cannot be recorded — the process died, or the
database went away — simply becomes due again when its lease ends. Nothing that is pending
lives only in memory, and the longest wait after a dependency returns is bounded by the
longest backoff and the lease.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from gateway.index.tables import Base, utcnow

Row = TypeVar("Row", bound=Base)


@dataclass(frozen=True)
class Backoff:
    """Waits between attempts: ``first_s`` doubling up to ``max_s``."""

    first_s: float
    max_s: float

    def delay_s(self, attempt: int) -> float:
        """The wait after the ``attempt``-th failure (1 = the first)."""
        return float(min(self.max_s, self.first_s * 2 ** max(0, attempt - 1)))


# The settings' defaults (retry_backoff_s, retry_max_backoff_s), for parts built without them.
DEFAULT_BACKOFF = Backoff(1.0, 10.0)


def backoff_s(attempt: int, first_s: float, max_s: float) -> float:
    return Backoff(first_s, max_s).delay_s(attempt)


def claim_rows(
    session: Session,
    model: type[Row],
    due: ColumnElement[bool],
    *,
    order_by: Sequence[Any],  # columns or their .desc()
    counter: InstrumentedAttribute[int],
    limit: int,
    lease_until: datetime,
    skip_locked: bool,
) -> list[Row]:
    """Take up to ``limit`` rows matching ``due``: their ``next_attempt_at`` moves to
    ``lease_until`` and ``counter`` goes up by one, in the caller's transaction."""
    query = select(model).where(due).order_by(*order_by).limit(limit)
    if skip_locked:  # SQLite serialises writers with BEGIN IMMEDIATE instead
        query = query.with_for_update(skip_locked=True)
    rows = list(session.scalars(query))
    for row in rows:
        setattr(row, "next_attempt_at", lease_until)  # noqa: B010 - every due row has it
        setattr(row, counter.key, getattr(row, counter.key) + 1)
    return rows


def lease_end(lease_s: float, now: datetime | None = None) -> datetime:
    return (now or utcnow()) + timedelta(seconds=lease_s)


def settle(
    session: Session,
    model: type[Base],
    row_id: int,
    lease_until: datetime,
    **values: Any,
) -> bool:
    """Record a claim's outcome (``values``) if the claim still holds: nobody moved the row
    on meanwhile (a state change clears or resets ``next_attempt_at``). False otherwise."""
    table: Any = model
    changed = session.execute(
        update(model)
        .where(table.id == row_id, table.next_attempt_at == lease_until)
        .values(**values)
    )
    return bool(getattr(changed, "rowcount", 0))
