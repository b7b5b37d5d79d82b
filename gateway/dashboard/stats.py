"""What the dashboard shows, computed from the index: devices in use against the federal
target, volumes, share positive, turnaround and failures, per region and within one.

A device is *in use* in a period when it is registered and at least one study was processed
by it (a job of it reached ``inferred`` or later) in that period. Turnaround runs from the
study's last received instance to the first delivery of any of its results; a study with no
delivery yet counts to its first finished job instead, and the dashboard says how many
studies each basis covers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select

from gateway.delivery.outbox import OutboxState
from gateway.index.database import Database
from gateway.index.tables import (
    DeviceRow,
    FindingRow,
    JobRow,
    OutboxRow,
    RegionRow,
    ResultRow,
    SourceRow,
    StudyRow,
)
from gateway.jobs.states import JobState
from models.manifest import DeviceGroup

TARGET_DEVICES = 3  # federal target: at least three registered AI devices per region


class PeriodName(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    YEAR = "year"


_SPANS = {
    PeriodName.DAY: (timedelta(days=1), "hour"),
    PeriodName.WEEK: (timedelta(days=7), "day"),
    PeriodName.MONTH: (timedelta(days=30), "day"),
    PeriodName.YEAR: (timedelta(days=365), "month"),
}


@dataclass(frozen=True)
class Period:
    name: PeriodName
    since: datetime
    until: datetime
    bucket: str  # hour, day, month: the chart's bar width

    @classmethod
    def ending(cls, name: PeriodName, now: datetime) -> Period:
        span, bucket = _SPANS[name]
        return cls(name, now - span, now, bucket)

    def buckets(self) -> list[datetime]:
        """Start of every bar of the volume chart, oldest first (UTC)."""
        start = _floor(self.since, self.bucket)
        found = []
        while start < self.until:
            found.append(start)
            start = _next(start, self.bucket)
        return found


def _floor(at: datetime, bucket: str) -> datetime:
    at = at.astimezone(UTC)
    if bucket == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    if bucket == "day":
        return at.replace(hour=0, minute=0, second=0, microsecond=0)
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _next(at: datetime, bucket: str) -> datetime:
    if bucket == "hour":
        return at + timedelta(hours=1)
    if bucket == "day":
        return at + timedelta(days=1)
    return (at.replace(day=28) + timedelta(days=4)).replace(day=1)


class Turnaround(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    median_s: float | None
    p95_s: float | None
    to_delivery: int  # studies measured to their first delivered result
    to_result: int  # studies with no delivery yet, measured to their first finished job


class Figures(BaseModel):
    """One row of any table: a region, a device, a study type, a source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    title: str
    studies: int
    positive: int
    turnaround: Turnaround
    failed_jobs: int
    failed_deliveries: int

    @property
    def positive_share(self) -> float | None:
        return self.positive / self.studies if self.studies else None


class RegionSummary(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str
    name: str
    devices_in_use: dict[str, list[str]]  # group → device ids
    figures: Figures

    @property
    def devices_total(self) -> int:
        return sum(len(ids) for ids in self.devices_in_use.values())

    @property
    def target_met(self) -> bool:
        return self.devices_total >= TARGET_DEVICES


class Bar(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    start: datetime
    studies: int


class FailedJob(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: int
    study_uid: str
    device: str
    reason: str | None
    at: datetime | None


class RegionDetail(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    summary: RegionSummary
    devices: list[Figures]
    study_types: list[Figures]
    sources: list[Figures]
    volume: list[Bar]
    failures: list[FailedJob]


@dataclass
class _Job:
    id: int
    study_id: int
    study_uid: str
    region: str
    source: str
    device_id: str
    device_key: str
    study_type: str
    state: str
    reason: str | None
    finished_at: datetime | None
    last_received_at: datetime
    positive: bool = False


@dataclass
class _Facts:
    """Everything about one period (and region, when given) the tables are cut from."""

    jobs: list[_Job]
    delivered: dict[int, datetime]  # study id → first delivery of any of its results
    failed_deliveries: dict[int, int]  # study id → deliveries in state failed
    devices: dict[str, tuple[str, str]]  # registered device id → (group, name)
    sources: dict[str, str] = field(default_factory=dict)  # name → title


def _facts(db: Database, period: Period, region: str | None) -> _Facts:
    with db.session() as session:
        query = (
            select(
                JobRow.id,
                JobRow.study_id,
                StudyRow.study_uid,
                StudyRow.region_code,
                SourceRow.name,
                JobRow.device_key,
                JobRow.study_type,
                JobRow.state,
                JobRow.reason,
                JobRow.finished_at,
                StudyRow.last_received_at,
            )
            .join(StudyRow, JobRow.study_id == StudyRow.id)
            .join(SourceRow, StudyRow.source_id == SourceRow.id)
            .where(JobRow.finished_at >= period.since, JobRow.finished_at < period.until)
        )
        if region is not None:
            query = query.where(StudyRow.region_code == region)
        jobs = [
            _Job(
                id=r[0],
                study_id=r[1],
                study_uid=r[2],
                region=r[3],
                source=r[4],
                device_id=r[5].partition("@")[0],
                device_key=r[5],
                study_type=r[6],
                state=r[7],
                reason=r[8],
                finished_at=r[9],
                last_received_at=r[10],
            )
            for r in session.execute(query)
        ]
        job_ids = [job.id for job in jobs]
        study_ids = sorted({job.study_id for job in jobs})
        positive = {
            job_id
            for chunk in _chunks(job_ids)
            for job_id in session.scalars(
                select(FindingRow.job_id).where(FindingRow.job_id.in_(chunk), FindingRow.positive)
            )
        }
        for job in jobs:
            job.positive = job.id in positive
        delivered: dict[int, datetime] = {}
        failed: dict[int, int] = {}
        for chunk in _chunks(study_ids):
            outcomes = session.execute(
                select(
                    JobRow.study_id, OutboxRow.state, func.min(OutboxRow.delivered_at), func.count()
                )
                .join(ResultRow, OutboxRow.result_id == ResultRow.id)
                .join(JobRow, ResultRow.job_id == JobRow.id)
                .where(JobRow.study_id.in_(chunk))
                .group_by(JobRow.study_id, OutboxRow.state)
            )
            for study_id, state, first, count in outcomes:
                if state == OutboxState.DELIVERED and first is not None:
                    delivered[study_id] = first
                elif state == OutboxState.FAILED:
                    failed[study_id] = count
        devices: dict[str, tuple[str, str]] = {}
        for device_id, group, name in session.execute(
            select(DeviceRow.device_id, DeviceRow.group, DeviceRow.name).order_by(DeviceRow.id)
        ):
            devices[device_id] = (group, name)  # the newest version names the device
        sources = {n: t for n, t in session.execute(select(SourceRow.name, SourceRow.title))}
    return _Facts(jobs, delivered, failed, devices, sources)


def _chunks(values: list[int], size: int = 500) -> Iterable[list[int]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _figures(key: str, title: str, jobs: list[_Job], facts: _Facts) -> Figures:
    processed = [j for j in jobs if j.state == JobState.INFERRED]
    studies: dict[int, list[_Job]] = {}
    for job in processed:
        studies.setdefault(job.study_id, []).append(job)
    durations: list[float] = []
    to_delivery = 0
    for study_id, study_jobs in studies.items():
        received = study_jobs[0].last_received_at
        first_delivery = facts.delivered.get(study_id)
        if first_delivery is not None:
            end, to_delivery = first_delivery, to_delivery + 1
        else:
            end = min(j.finished_at for j in study_jobs if j.finished_at is not None)
        durations.append(max(0.0, (end - received).total_seconds()))
    failed_studies = {j.study_id for j in jobs}
    return Figures(
        key=key,
        title=title,
        studies=len(studies),
        positive=sum(1 for js in studies.values() if any(j.positive for j in js)),
        turnaround=Turnaround(
            median_s=statistics.median(durations) if durations else None,
            p95_s=_p95(durations),
            to_delivery=to_delivery,
            to_result=len(durations) - to_delivery,
        ),
        failed_jobs=sum(1 for j in jobs if j.state == "failed"),
        failed_deliveries=sum(facts.failed_deliveries.get(s, 0) for s in failed_studies),
    )


def _p95(values: list[float]) -> float | None:
    """Nearest-rank 95th percentile: a value that was actually observed."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def _in_use(jobs: list[_Job], facts: _Facts) -> dict[str, list[str]]:
    groups: dict[str, set[str]] = {group.value: set() for group in DeviceGroup}
    for job in jobs:
        registered = facts.devices.get(job.device_id)
        if job.state == JobState.INFERRED and registered is not None:
            groups.setdefault(registered[0], set()).add(job.device_id)
    return {group: sorted(ids) for group, ids in groups.items()}


def _regions(db: Database, only: str | None) -> list[tuple[str, str]]:
    with db.session() as session:
        query = select(RegionRow.code, RegionRow.name).order_by(RegionRow.code)
        if only is not None:
            query = query.where(RegionRow.code == only)
        return [(code, name) for code, name in session.execute(query)]


def national(db: Database, period: Period, region: str | None = None) -> list[RegionSummary]:
    """One row per region (only ``region`` when given), in code order."""
    facts = _facts(db, period, region)
    by_region: dict[str, list[_Job]] = {}
    for job in facts.jobs:
        by_region.setdefault(job.region, []).append(job)
    return [
        RegionSummary(
            code=code,
            name=name,
            devices_in_use=_in_use(by_region.get(code, []), facts),
            figures=_figures(code, name, by_region.get(code, []), facts),
        )
        for code, name in _regions(db, region)
    ]


def region_detail(db: Database, code: str, period: Period) -> RegionDetail | None:
    regions = _regions(db, code)
    if not regions:
        return None
    facts = _facts(db, period, code)
    summary = RegionSummary(
        code=code,
        name=regions[0][1],
        devices_in_use=_in_use(facts.jobs, facts),
        figures=_figures(code, regions[0][1], facts.jobs, facts),
    )
    return RegionDetail(
        summary=summary,
        devices=_cut(facts, lambda j: j.device_id, lambda k: _device_title(facts, k)),
        study_types=_cut(facts, lambda j: j.study_type, lambda k: k),
        sources=_cut(facts, lambda j: j.source, lambda k: facts.sources.get(k, k)),
        volume=_volume(facts.jobs, period),
        failures=[
            FailedJob(
                job_id=j.id,
                study_uid=j.study_uid,
                device=j.device_key,
                reason=j.reason,
                at=j.finished_at,
            )
            for j in sorted(facts.jobs, key=lambda j: j.id, reverse=True)
            if j.state == JobState.FAILED
        ][:50],
    )


def _device_title(facts: _Facts, device_id: str) -> str:
    registered = facts.devices.get(device_id)
    if registered is None:
        return f"{device_id} (не зарегистрировано)"
    return f"{registered[1]} ({device_id})"


def _cut(facts: _Facts, key: Callable[[_Job], str], title: Callable[[str], str]) -> list[Figures]:
    groups: dict[str, list[_Job]] = {}
    for job in facts.jobs:
        groups.setdefault(key(job), []).append(job)
    return [_figures(k, title(k), js, facts) for k, js in sorted(groups.items())]


def _volume(jobs: list[_Job], period: Period) -> list[Bar]:
    """Studies per bar, each counted once, in the bar of its first processed job."""
    first: dict[int, datetime] = {}
    for job in jobs:
        if job.state == JobState.INFERRED and job.finished_at is not None:
            seen = first.get(job.study_id)
            first[job.study_id] = job.finished_at if seen is None else min(seen, job.finished_at)
    counts: dict[datetime, int] = {}
    for at in first.values():
        bucket = _floor(at, period.bucket)
        counts[bucket] = counts.get(bucket, 0) + 1
    return [Bar(start=start, studies=counts.get(start, 0)) for start in period.buckets()]
