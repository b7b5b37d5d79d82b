"""Notices about the devices, through the outbox: the monthly usage report of each device
version, and a malfunction notice when a device version fails too often.

A notice is a row with a key that names it once — ``usage:<id@version>:<YYYY-MM>``,
``malfunction:<id@version>:<YYYY-MM-DD>`` — and the document exactly as it is sent; in the
same transaction it gets an outbox row per destination of kind ``monitoring``. The unique key
makes creating it twice (a second check, a restart, a second gateway process) a no-op, the
outbox retries it until the receiver acknowledges, and the receiver sees the key as the
Idempotency-Key: one document per (device version, month) however often anything restarts.

**Malfunction**: over the last 24 hours, a device version's failed jobs ÷ its finished jobs
(inferred + failed, every region and mode) above ``malfunction_failure_rate``, with at least
``malfunction_min_jobs`` finished jobs; at most one notice per device version per UTC day.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from gateway.delivery.destinations import Destination
from gateway.delivery.outbox import enqueue_notice
from gateway.index.database import Database
from gateway.index.tables import JobRow, NoticeRow, OutboxRow, utcnow
from gateway.jobs.states import JobState
from gateway.monitoring.exchange import document, per_device
from gateway.monitoring.figures import FailureCount, JobFact, failures_by_reason, job_facts
from gateway.monitoring.report import Period, build_report
from gateway.settings import Settings

log = logging.getLogger(__name__)

MALFUNCTION_FORMAT = "aigw-malfunction/1"
WINDOW = timedelta(days=1)


class NoticeKind(StrEnum):
    USAGE_REPORT = "usage_report"
    MALFUNCTION = "malfunction"


@dataclass(frozen=True)
class MalfunctionParams:
    failure_rate: float = 0.2
    min_jobs: int = 5

    @classmethod
    def of(cls, settings: Settings) -> MalfunctionParams:
        return cls(settings.malfunction_failure_rate, settings.malfunction_min_jobs)


class MalfunctionNotice(BaseModel):
    """What a malfunction notice says."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str = MALFUNCTION_FORMAT
    device: str
    version: str
    window_start: datetime
    window_end: datetime
    finished_jobs: int
    failed_jobs: int
    failure_rate: float
    threshold: float
    by_reason: list[FailureCount]
    regions: list[str]


class NoticePublic(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int
    kind: NoticeKind
    key: str
    device: str
    period_start: datetime
    period_end: datetime
    created_at: datetime
    deliveries: dict[str, str] = Field(description="destination → outbox state")


def usage_key(device: str, month: str) -> str:
    return f"usage:{device}:{month}"


def queue_usage_reports(
    db: Database, destinations: list[Destination], period: Period, now: datetime | None = None
) -> list[str]:
    """A notice for each device version with jobs in ``period`` that has none yet; returns
    the keys created. Nothing when no destination takes notices."""
    if not destinations:
        return []
    with db.session() as session:
        used = set(
            session.scalars(
                select(JobRow.device_key).where(
                    JobRow.finished_at >= period.start,
                    JobRow.finished_at < period.end,
                    JobRow.state.in_([JobState.INFERRED.value, JobState.FAILED.value]),
                )
            )
        )
        have = set(
            session.scalars(select(NoticeRow.key).where(NoticeRow.kind == NoticeKind.USAGE_REPORT))
        )
    missing = sorted(d for d in used if usage_key(d, period.month) not in have)
    created = []
    for device in missing:  # built one device version at a time: a month can be large
        report = build_report(db, period.month, device=device, now=now)
        for single in per_device(report):
            key = usage_key(device, period.month)
            span = (period.start, period.end)
            if _create(
                db, NoticeKind.USAGE_REPORT, key, device, span, document(single), destinations
            ):
                created.append(key)
    return created


def check_malfunctions(
    db: Database,
    destinations: list[Destination],
    params: MalfunctionParams,
    now: datetime | None = None,
) -> list[str]:
    """A notice for each device version whose failure rate over the last day passes the
    threshold (once per UTC day); returns the keys created."""
    if not destinations:
        return []
    until = now or utcnow()
    since = until - WINDOW
    with db.session() as session:
        jobs = job_facts(session, since, until)
    by_device: dict[str, list[JobFact]] = {}
    for job in jobs:
        by_device.setdefault(job.device, []).append(job)
    created = []
    for device, finished in sorted(by_device.items()):
        failed = [job for job in finished if job.state == JobState.FAILED]
        rate = len(failed) / len(finished)
        if len(finished) < params.min_jobs or rate <= params.failure_rate:
            continue
        device_id, _, version = device.partition("@")
        notice = MalfunctionNotice(
            device=device_id,
            version=version,
            window_start=since,
            window_end=until,
            finished_jobs=len(finished),
            failed_jobs=len(failed),
            failure_rate=rate,
            threshold=params.failure_rate,
            by_reason=failures_by_reason(failed),
            regions=sorted({job.region for job in finished}),
        )
        key = f"malfunction:{device}:{until.date().isoformat()}"
        payload = notice.model_dump(mode="json")
        if _create(db, NoticeKind.MALFUNCTION, key, device, (since, until), payload, destinations):
            log.warning(
                "device malfunction: notice queued",
                extra={"device": device, "failed": len(failed), "finished": len(finished)},
            )
            created.append(key)
    return created


def _create(
    db: Database,
    kind: NoticeKind,
    key: str,
    device: str,
    span: tuple[datetime, datetime],
    payload: dict[str, object],
    destinations: list[Destination],
) -> bool:
    """The notice and its outbox rows in one transaction; False when the key exists."""
    try:
        with db.write_lock, db.session() as session:
            if session.scalar(select(NoticeRow.id).where(NoticeRow.key == key)) is not None:
                return False
            notice = NoticeRow(
                kind=kind.value,
                key=key,
                device_key=device,
                period_start=span[0],
                period_end=span[1],
                payload=payload,
                created_at=utcnow(),
            )
            session.add(notice)
            session.flush()
            enqueue_notice(session, notice, destinations)
    except IntegrityError:  # another process created it first
        return False
    log.info("notice queued", extra={"key": key, "destinations": len(destinations)})
    return True


def list_notices(db: Database, limit: int = 200) -> list[NoticePublic]:
    """Newest first, with the state of each delivery."""
    with db.session() as session:
        rows = list(session.scalars(select(NoticeRow).order_by(NoticeRow.id.desc()).limit(limit)))
        deliveries: dict[int, dict[str, str]] = {}
        if rows:
            for notice_id, destination, state in session.execute(
                select(OutboxRow.notice_id, OutboxRow.destination, OutboxRow.state).where(
                    OutboxRow.notice_id.in_([row.id for row in rows])
                )
            ):
                if notice_id is not None:
                    deliveries.setdefault(notice_id, {})[destination] = state
        return [
            NoticePublic(
                id=row.id,
                kind=NoticeKind(row.kind),
                key=row.key,
                device=row.device_key,
                period_start=row.period_start,
                period_end=row.period_end,
                created_at=row.created_at,
                deliveries=deliveries.get(row.id, {}),
            )
            for row in rows
        ]
