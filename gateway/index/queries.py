"""Read-side queries over the index: what arrived, in which state (CLI now, API later)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select

from gateway.errors import UnknownStudy
from gateway.index.database import Database
from gateway.index.tables import (
    FindingRow,
    InstanceRow,
    JobRow,
    SeriesRow,
    SourceRow,
    StudyEventRow,
    StudyRow,
)


class StudySummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    study_uid: str
    state: str
    source: str
    region: str
    modalities: list[str]
    series_count: int
    instance_count: int
    first_received_at: datetime
    last_received_at: datetime
    completed_at: datetime | None
    state_reason: str | None = None


class TimelineEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: datetime
    kind: str
    state: str | None
    detail: dict[str, Any]
    note: str | None


def list_studies(db: Database, state: str | None = None, limit: int = 1000) -> list[StudySummary]:
    series_counts = (
        select(SeriesRow.study_id, func.count(SeriesRow.id).label("n"))
        .group_by(SeriesRow.study_id)
        .subquery()
    )
    instance_counts = (
        select(
            SeriesRow.study_id, func.count(func.distinct(InstanceRow.sop_instance_uid)).label("n")
        )
        .join(InstanceRow, InstanceRow.series_id == SeriesRow.id)
        .group_by(SeriesRow.study_id)
        .subquery()
    )
    query = (
        select(StudyRow, SourceRow.name, series_counts.c.n, instance_counts.c.n)
        .join(SourceRow)
        .outerjoin(series_counts, series_counts.c.study_id == StudyRow.id)
        .outerjoin(instance_counts, instance_counts.c.study_id == StudyRow.id)
        .order_by(StudyRow.first_received_at.desc())
        .limit(limit)
    )
    if state:
        query = query.where(StudyRow.state == state)
    with db.session() as session:
        rows = session.execute(query).all()
        modalities = _modalities(session, [row[0].id for row in rows])
        reasons = _state_reasons(session, [row[0] for row in rows])
    return [
        StudySummary(
            study_uid=study.study_uid,
            state=study.state,
            source=source,
            region=study.region_code,
            modalities=modalities.get(study.id, []),
            series_count=n_series or 0,
            instance_count=n_instances or 0,
            first_received_at=study.first_received_at,
            last_received_at=study.last_received_at,
            completed_at=study.completed_at,
            state_reason=reasons.get(study.id),
        )
        for study, source, n_series, n_instances in rows
    ]


def _modalities(session: Any, study_ids: list[int]) -> dict[int, list[str]]:
    if not study_ids:
        return {}
    found: dict[int, list[str]] = {}
    rows = session.execute(
        select(SeriesRow.study_id, SeriesRow.modality)
        .where(SeriesRow.study_id.in_(study_ids))
        .distinct()
    ).all()
    for study_id, modality in rows:
        if modality:
            found.setdefault(study_id, []).append(modality)
    return {key: sorted(values) for key, values in found.items()}


def _state_reasons(session: Any, studies: list[StudyRow]) -> dict[int, str]:
    """The reason recorded with each study's current state, where there is one."""
    wanted = {s.id: s.state for s in studies if s.state in ("not_applicable", "failed")}
    if not wanted:
        return {}
    events = session.scalars(
        select(StudyEventRow)
        .where(StudyEventRow.study_id.in_(wanted), StudyEventRow.kind == "state")
        .order_by(StudyEventRow.id)
    )
    reasons: dict[int, str] = {}
    for event in events:
        if event.state == wanted[event.study_id] and event.detail.get("reason"):
            reasons[event.study_id] = str(event.detail["reason"])
    return reasons


def timeline(db: Database, study_uid: str) -> list[TimelineEntry]:
    with db.session() as session:
        study_id = session.scalar(select(StudyRow.id).where(StudyRow.study_uid == study_uid))
        if study_id is None:
            raise UnknownStudy(f"no study {study_uid}")
        events = session.scalars(
            select(StudyEventRow)
            .where(StudyEventRow.study_id == study_id)
            .order_by(StudyEventRow.id)
        ).all()
        return [
            TimelineEntry(at=e.at, kind=e.kind, state=e.state, detail=e.detail, note=e.note)
            for e in events
        ]


class FindingSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label_code: str
    label_ru: str
    label_en: str
    probability: float
    threshold: float
    positive: bool
    location: dict[str, Any] | None
    measurements: dict[str, float]

    @classmethod
    def of(cls, row: FindingRow) -> FindingSummary:
        return cls(
            label_code=row.label_code,
            label_ru=row.label_ru,
            label_en=row.label_en,
            probability=row.probability,
            threshold=row.threshold,
            positive=row.positive,
            location=row.location,
            measurements=row.measurements or {},
        )


class JobSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: int
    study_uid: str
    series_uid: str
    device: str
    study_type: str
    service_code: str
    priority: int
    state: str
    attempts: int
    reason: str | None
    timings_ms: dict[str, float]
    findings: list[FindingSummary]


def list_jobs(
    db: Database, study_uid: str | None = None, state: str | None = None, limit: int = 1000
) -> list[JobSummary]:
    query = (
        select(JobRow, StudyRow.study_uid)
        .join(StudyRow, JobRow.study_id == StudyRow.id)
        .order_by(JobRow.id.desc())
        .limit(limit)
    )
    if study_uid:
        query = query.where(StudyRow.study_uid == study_uid)
    if state:
        query = query.where(JobRow.state == state)
    with db.session() as session:
        rows = session.execute(query).all()
        findings: dict[int, list[FindingRow]] = {}
        job_ids = [job.id for job, _uid in rows]
        if job_ids:
            for finding in session.scalars(
                select(FindingRow).where(FindingRow.job_id.in_(job_ids)).order_by(FindingRow.id)
            ):
                findings.setdefault(finding.job_id, []).append(finding)
        return [
            JobSummary(
                job_id=job.id,
                study_uid=uid,
                series_uid=job.series_uid,
                device=job.device_key,
                study_type=job.study_type,
                service_code=job.service_code,
                priority=job.priority,
                state=job.state,
                attempts=job.attempts,
                reason=job.reason,
                timings_ms=job.timings_ms or {},
                findings=[FindingSummary.of(f) for f in findings.get(job.id, [])],
            )
            for job, uid in rows
        ]
