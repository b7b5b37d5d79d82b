"""The outbox: one row per (result, destination), delivered until acknowledged.

Rows are written in the same transaction as the results they carry, so a crash can lose
neither. A notice about the devices (a monthly usage report, a malfunction notice:
:class:`~gateway.index.tables.NoticeRow`) goes through the same rows, claims and backoff,
with ``notice_id`` where a result's row has ``result_id``; the notice's key makes it once per
(device version, month) or (device version, day), and receivers see it as the
Idempotency-Key. A dispatcher claims due rows by pushing their ``next_attempt_at`` one lease into
the future (several dispatchers, or one restarted after a crash, never send a row twice at
the same time; an abandoned claim simply becomes due again), sends, and records the answer:
delivered, or the error and the next attempt after an exponential backoff. Receivers keep
one copy of what they get twice (same SOP Instance UID; the SEMD's Idempotency-Key), so a
delivery repeated after a crash between sending and recording leaves one result.

The claim is :mod:`gateway.index.due`'s, the one every stage with pending work uses. A
receiver's failure waits the outbox's own backoff (up to ``outbox_max_backoff_s``); our own
database or object store being away waits the gateway's short one (``retry_max_backoff_s``),
so deliveries move on within seconds of its return.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gateway.delivery.destinations import Destination
from gateway.errors import DatabaseError, GatewayError, StorageError
from gateway.index.database import Database
from gateway.index.due import DEFAULT_BACKOFF, Backoff, backoff_s, claim_rows
from gateway.index.study_state import record_event
from gateway.index.tables import JobRow, NoticeRow, OutboxRow, ResultRow, StudyRow, utcnow

log = logging.getLogger(__name__)


class OutboxState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # cannot ever succeed (the result object is gone); retry() revives it


class DeliveryError(GatewayError):
    """One attempt did not succeed; the message is recorded and the row retried."""


class Undeliverable(GatewayError):
    """No attempt can succeed (e.g. the stored result is gone)."""


@dataclass(frozen=True)
class Claim:
    outbox_id: int
    result_id: int | None  # one of result_id and notice_id
    destination: str
    attempt: int
    lease_until: datetime  # the row's next_attempt_at while this claim holds it
    notice_id: int | None = None


@dataclass(frozen=True)
class OutboxSummary:
    id: int
    study_uid: str
    job_id: int
    kind: str
    destination: str
    protocol: str
    state: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    remote_id: str | None
    delivered_at: datetime | None


def enqueue(session: Session, result: ResultRow, destinations: list[Destination]) -> int:
    """Add a row per destination not already holding this result; returns how many."""
    have = set(
        session.scalars(select(OutboxRow.destination).where(OutboxRow.result_id == result.id))
    )
    return _add(session, destinations, have, result_id=result.id)


def enqueue_notice(session: Session, notice: NoticeRow, destinations: list[Destination]) -> int:
    """Add a row per destination not already holding this notice; returns how many."""
    have = set(
        session.scalars(select(OutboxRow.destination).where(OutboxRow.notice_id == notice.id))
    )
    return _add(session, destinations, have, notice_id=notice.id)


def _add(
    session: Session,
    destinations: list[Destination],
    have: set[str],
    result_id: int | None = None,
    notice_id: int | None = None,
) -> int:
    now = utcnow()
    added = 0
    for destination in destinations:
        if destination.name in have:
            continue
        session.add(
            OutboxRow(
                result_id=result_id,
                notice_id=notice_id,
                destination=destination.name,
                protocol=destination.protocol,
                state=OutboxState.PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
        added += 1
    return added


def claim_due(db: Database, limit: int, lease_s: float) -> list[Claim]:
    """Take up to ``limit`` due rows for one lease; their attempt counters go up now."""
    now = utcnow()
    lease_until = now + timedelta(seconds=lease_s)
    with db.session() as session:
        rows = claim_rows(
            session,
            OutboxRow,
            (OutboxRow.state == OutboxState.PENDING) & (OutboxRow.next_attempt_at <= now),
            order_by=[OutboxRow.next_attempt_at, OutboxRow.id],
            counter=OutboxRow.attempts,
            limit=limit,
            lease_until=lease_until,
            skip_locked=not db.is_sqlite,
        )
        return [
            Claim(
                outbox_id=row.id,
                result_id=row.result_id,
                destination=row.destination,
                attempt=row.attempts,
                lease_until=lease_until,
                notice_id=row.notice_id,
            )
            for row in rows
        ]


def renew(db: Database, claim: Claim, lease_s: float) -> Claim | None:
    """Extend a claim just before sending; None when it lapsed and another dispatcher took
    the row (rows later in a batch wait behind slow deliveries)."""
    lease_until = utcnow() + timedelta(seconds=lease_s)
    with db.session() as session:
        changed = session.execute(
            update(OutboxRow)
            .where(
                OutboxRow.id == claim.outbox_id,
                OutboxRow.state == OutboxState.PENDING,
                OutboxRow.next_attempt_at == claim.lease_until,
            )
            .values(next_attempt_at=lease_until)
        )
        if not getattr(changed, "rowcount", 0):
            return None
    return Claim(
        claim.outbox_id,
        claim.result_id,
        claim.destination,
        claim.attempt,
        lease_until,
        claim.notice_id,
    )


def mark_delivered(db: Database, claim: Claim, remote_id: str) -> None:
    now = utcnow()
    with db.session() as session:
        row = session.get(OutboxRow, claim.outbox_id)
        if row is None or row.state == OutboxState.DELIVERED:
            return
        row.state, row.delivered_at, row.remote_id, row.last_error = (
            OutboxState.DELIVERED,
            now,
            remote_id,
            None,
        )
        result = session.get(ResultRow, row.result_id) if row.result_id is not None else None
        if result is not None:
            job = session.get(JobRow, result.job_id)
            if job is not None:
                record_event(
                    session,
                    job.study_id,
                    "result_delivered",
                    now,
                    detail={"kind": result.kind, "destination": row.destination, "job": job.id},
                )


def mark_failed(db: Database, claim: Claim, error: str, retry_in_s: float | None) -> None:
    """Record a failed attempt: due again after ``retry_in_s``, or OutboxState.FAILED when None."""
    with db.session() as session:
        row = session.get(OutboxRow, claim.outbox_id)
        if row is None or row.state == OutboxState.DELIVERED:
            return
        row.last_error = error[:2000]
        if retry_in_s is None:
            row.state = OutboxState.FAILED
        else:
            row.next_attempt_at = utcnow() + timedelta(seconds=retry_in_s)


def retry(db: Database, outbox_id: int) -> bool:
    """Make a row due now (also a OutboxState.FAILED one); False when there is no such row or it was
    delivered already."""
    with db.session() as session:
        changed = session.execute(
            update(OutboxRow)
            .where(OutboxRow.id == outbox_id, OutboxRow.state != OutboxState.DELIVERED)
            .values(state=OutboxState.PENDING, next_attempt_at=utcnow())
        )
        return bool(getattr(changed, "rowcount", 0))


def list_outbox(
    db: Database, state: str | None = None, study_uid: str | None = None, limit: int = 200
) -> list[OutboxSummary]:
    with db.session() as session:
        query = (
            select(OutboxRow, ResultRow, JobRow, StudyRow.study_uid)
            .join(ResultRow, ResultRow.id == OutboxRow.result_id)
            .join(JobRow, JobRow.id == ResultRow.job_id)
            .join(StudyRow, StudyRow.id == JobRow.study_id)
            .order_by(OutboxRow.id.desc())
            .limit(limit)
        )
        if state:
            query = query.where(OutboxRow.state == state)
        if study_uid:
            query = query.where(StudyRow.study_uid == study_uid)
        return [
            OutboxSummary(
                id=row.id,
                study_uid=uid,
                job_id=job.id,
                kind=result.kind,
                destination=row.destination,
                protocol=row.protocol,
                state=row.state,
                attempts=row.attempts,
                next_attempt_at=row.next_attempt_at,
                last_error=row.last_error,
                remote_id=row.remote_id,
                delivered_at=row.delivered_at,
            )
            for row, result, job, uid in session.execute(query)
        ]


Sender = Callable[[Claim], str]  # delivers one claim; returns the receiver's id for it


class OutboxDispatcher:
    """A thread that delivers due rows every ``poll_s`` until stopped (a gateway service)."""

    def __init__(
        self,
        db: Database,
        send: Sender,
        poll_s: float,
        backoff_first_s: float,
        backoff_max_s: float,
        lease_s: float,
        batch: int = 20,
        dependency_backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        self.db, self.send = db, send
        self.poll_s, self.batch, self.lease_s = poll_s, batch, lease_s
        self.backoff = (backoff_first_s, backoff_max_s)
        # Our own database or object store away is not the receiver's fault: retried soon.
        self.dependency_backoff = dependency_backoff
        # Outcomes the database could not take (it went away mid-attempt), recorded first
        # thing once it is back, instead of waiting for their claims' leases to end.
        self._unrecorded: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        database_down = False
        while not self._stop.is_set():
            try:
                worked = self.run_once()
                if database_down:
                    log.info("outbox: database reachable again")
                database_down = False
            except DatabaseError as exc:  # the database is back soon; nothing is lost
                if not database_down:  # one line per outage, not one per poll
                    log.warning("outbox: database unavailable", extra={"error": str(exc)[:200]})
                database_down = True
                worked = 0
            except Exception:  # never let the only delivery thread die
                log.exception("outbox: unexpected error")
                worked = 0
            if not worked:
                self._stop.wait(self.poll_s)

    def run_once(self) -> int:
        """Deliver what is due now; returns how many rows were attempted."""
        while self._unrecorded:
            self._unrecorded[0]()
            self._unrecorded.pop(0)
        claims = claim_due(self.db, self.batch, self.lease_s)
        for claimed in claims:
            if self._stop.is_set():
                break
            claim = renew(self.db, claimed, self.lease_s)
            if claim is not None:
                self._attempt(claim)
        return len(claims)

    def _attempt(self, claim: Claim) -> None:
        try:
            remote_id = self.send(claim)
        except Undeliverable as exc:
            reason = str(exc)
            self._record(lambda: mark_failed(self.db, claim, reason, None))
            log.error("delivery impossible", extra={"outbox_id": claim.outbox_id, "error": reason})
        except (DatabaseError, StorageError) as exc:  # ours, not the receiver's
            wait = self.dependency_backoff.delay_s(claim.attempt)
            self._failed(claim, f"{exc.__class__.__name__}: {exc}", wait)
        except Exception as exc:  # any failure of a receiver: record it and retry later
            wait = backoff_s(claim.attempt, *self.backoff)
            self._failed(claim, f"{exc.__class__.__name__}: {exc}", wait)
        else:
            self._record(lambda: mark_delivered(self.db, claim, remote_id))
            log.info(
                "delivered",
                extra={"outbox_id": claim.outbox_id, "destination": claim.destination},
            )

    def _failed(self, claim: Claim, error: str, wait: float) -> None:
        self._record(lambda: mark_failed(self.db, claim, error, wait))
        log.warning(
            "delivery failed, will retry",
            extra={
                "outbox_id": claim.outbox_id,
                "destination": claim.destination,
                "attempt": claim.attempt,
                "retry_in_s": wait,
                "error": error[:300],
            },
        )

    def _record(self, outcome: Callable[[], None]) -> None:
        try:
            outcome()
        except DatabaseError:
            self._unrecorded.append(outcome)
            raise
