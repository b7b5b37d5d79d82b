"""Read side of the API: studies with every filter, one study in full, jobs, results.

Every query takes the region it is confined to; a row outside it is indistinguishable from
a row that does not exist.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Select, exists, func, select
from sqlalchemy.orm import Session

from gateway.index.database import Database
from gateway.index.queries import FindingSummary, TimelineEntry
from gateway.index.tables import (
    FindingRow,
    InstanceRow,
    JobRow,
    OutboxRow,
    ResultRow,
    SeriesRow,
    SourceRow,
    StudyEventRow,
    StudyRow,
)

AnySelect = Select[*tuple[Any, ...]]


class _Public(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StudyFilter(_Public):
    region: str | None = None
    source: str | None = None
    state: str | None = None
    modality: str | None = None
    study_type: str | None = None
    received_from: datetime | None = None
    received_to: datetime | None = None
    study_date_from: date | None = None
    study_date_to: date | None = None
    limit: int = 100
    offset: int = 0


class StudyItem(_Public):
    study_uid: str
    state: str
    source: str
    region: str
    patient_id: str | None
    patient_sex: str | None
    patient_age_years: int | None
    study_date: str | None
    accession_number: str | None
    study_description: str | None
    modalities: list[str]
    first_received_at: datetime
    last_received_at: datetime
    completed_at: datetime | None


class SeriesItem(_Public):
    series_uid: str
    modality: str | None
    body_part: str | None
    series_description: str | None
    series_number: int | None
    instance_count: int


class ResultItem(_Public):
    id: int
    job_id: int
    kind: str
    state: str
    reason: str | None
    sop_instance_uid: str | None
    series_instance_uid: str | None
    size: int | None
    meta: dict[str, Any]
    created_at: datetime
    deliveries: dict[str, str]  # destination → state


class JobItem(_Public):
    job_id: int
    study_uid: str
    series_uid: str
    series_uids: list[str]
    device: str
    study_type: str
    service_code: str
    rule: str
    priority: int
    queue: str
    state: str
    attempts: int
    reason: str | None
    timings_ms: dict[str, float]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    findings: list[FindingSummary]


class StudyDetail(StudyItem):
    series: list[SeriesItem]
    timeline: list[TimelineEntry]
    jobs: list[JobItem]
    results: list[ResultItem]


def _filtered(query: AnySelect, f: StudyFilter) -> AnySelect:
    if f.region:
        query = query.where(StudyRow.region_code == f.region)
    if f.source:
        query = query.where(SourceRow.name == f.source)
    if f.state:
        query = query.where(StudyRow.state == f.state)
    if f.modality:
        query = query.where(
            exists().where(SeriesRow.study_id == StudyRow.id, SeriesRow.modality == f.modality)
        )
    if f.study_type:
        query = query.where(
            exists().where(JobRow.study_id == StudyRow.id, JobRow.study_type == f.study_type)
        )
    if f.received_from:
        query = query.where(StudyRow.last_received_at >= f.received_from)
    if f.received_to:
        query = query.where(StudyRow.first_received_at < f.received_to)
    if f.study_date_from:
        query = query.where(StudyRow.study_date >= f.study_date_from.strftime("%Y%m%d"))
    if f.study_date_to:
        query = query.where(StudyRow.study_date <= f.study_date_to.strftime("%Y%m%d"))
    return query


def list_studies(db: Database, f: StudyFilter) -> list[StudyItem]:
    query = _filtered(select(StudyRow, SourceRow.name).join(SourceRow), f)
    query = query.order_by(StudyRow.first_received_at.desc(), StudyRow.id.desc())
    with db.session() as session:
        rows = session.execute(query.limit(f.limit).offset(f.offset)).all()
        modalities = _modalities(session, [study.id for study, _ in rows])
        return [_item(study, source, modalities.get(study.id, [])) for study, source in rows]


def _item(study: StudyRow, source: str, modalities: list[str]) -> StudyItem:
    return StudyItem(
        study_uid=study.study_uid,
        state=study.state,
        source=source,
        region=study.region_code,
        patient_id=study.patient_id,
        patient_sex=study.patient_sex,
        patient_age_years=study.patient_age_years,
        study_date=study.study_date,
        accession_number=study.accession_number,
        study_description=study.study_description,
        modalities=modalities,
        first_received_at=study.first_received_at,
        last_received_at=study.last_received_at,
        completed_at=study.completed_at,
    )


def _modalities(session: Session, study_ids: list[int]) -> dict[int, list[str]]:
    found: dict[int, set[str]] = {}
    if study_ids:
        rows = session.execute(
            select(SeriesRow.study_id, SeriesRow.modality).where(SeriesRow.study_id.in_(study_ids))
        )
        for study_id, modality in rows:
            if modality:
                found.setdefault(study_id, set()).add(modality)
    return {key: sorted(values) for key, values in found.items()}


def study_region(db: Database, study_uid: str) -> str | None:
    """The study's region, or None when there is no such study."""
    with db.session() as session:
        return session.scalar(select(StudyRow.region_code).where(StudyRow.study_uid == study_uid))


def study_detail(db: Database, study_uid: str, region: str | None) -> StudyDetail | None:
    with db.session() as session:
        query = select(StudyRow, SourceRow.name).join(SourceRow)
        query = query.where(StudyRow.study_uid == study_uid)
        if region is not None:
            query = query.where(StudyRow.region_code == region)
        row = session.execute(query).one_or_none()
        if row is None:
            return None
        study, source = row
        base = _item(study, source, _modalities(session, [study.id]).get(study.id, []))
        jobs = _jobs(
            session, select(JobRow).where(JobRow.study_id == study.id), {study.id: study_uid}
        )
        return StudyDetail(
            **base.model_dump(),
            series=_series(session, study.id),
            timeline=_timeline(session, study.id),
            jobs=jobs,
            results=_results(session, [job.job_id for job in jobs]),
        )


def _series(session: Session, study_id: int) -> list[SeriesItem]:
    counts = (
        select(InstanceRow.series_id, func.count(func.distinct(InstanceRow.sop_instance_uid)))
        .group_by(InstanceRow.series_id)
        .subquery()
    )
    rows = session.execute(
        select(SeriesRow, counts.c[1])
        .outerjoin(counts, counts.c.series_id == SeriesRow.id)
        .where(SeriesRow.study_id == study_id)
        .order_by(SeriesRow.series_number, SeriesRow.id)
    ).all()
    return [
        SeriesItem(
            series_uid=s.series_uid,
            modality=s.modality,
            body_part=s.body_part,
            series_description=s.series_description,
            series_number=s.series_number,
            instance_count=n or 0,
        )
        for s, n in rows
    ]


def _timeline(session: Session, study_id: int) -> list[TimelineEntry]:
    events = session.scalars(
        select(StudyEventRow).where(StudyEventRow.study_id == study_id).order_by(StudyEventRow.id)
    )
    return [
        TimelineEntry(at=e.at, kind=e.kind, state=e.state, detail=e.detail or {}, note=e.note)
        for e in events
    ]


def _jobs(session: Session, query: AnySelect, uids: dict[int, str]) -> list[JobItem]:
    jobs = list(session.scalars(query.order_by(JobRow.id)))
    findings: dict[int, list[FindingRow]] = {}
    if jobs:
        for finding in session.scalars(
            select(FindingRow).where(FindingRow.job_id.in_([j.id for j in jobs]))
        ):
            findings.setdefault(finding.job_id, []).append(finding)
    missing = {j.study_id for j in jobs} - set(uids)
    if missing:
        for study_id, uid in session.execute(
            select(StudyRow.id, StudyRow.study_uid).where(StudyRow.id.in_(missing))
        ):
            uids[study_id] = uid
    return [
        JobItem(
            job_id=j.id,
            study_uid=uids[j.study_id],
            series_uid=j.series_uid,
            series_uids=list(j.series_uids or [j.series_uid]),
            device=j.device_key,
            study_type=j.study_type,
            service_code=j.service_code,
            rule=j.rule,
            priority=j.priority,
            queue=j.queue,
            state=j.state,
            attempts=j.attempts,
            reason=j.reason,
            timings_ms=j.timings_ms or {},
            created_at=j.created_at,
            started_at=j.started_at,
            finished_at=j.finished_at,
            findings=[
                FindingSummary.of(f) for f in sorted(findings.get(j.id, []), key=lambda f: f.id)
            ],
        )
        for j in jobs
    ]


def _results(session: Session, job_ids: list[int]) -> list[ResultItem]:
    if not job_ids:
        return []
    rows = list(
        session.scalars(
            select(ResultRow).where(ResultRow.job_id.in_(job_ids)).order_by(ResultRow.id)
        )
    )
    deliveries: dict[int, dict[str, str]] = {}
    if rows:
        for result_id, destination, state in session.execute(
            select(OutboxRow.result_id, OutboxRow.destination, OutboxRow.state).where(
                OutboxRow.result_id.in_([r.id for r in rows])
            )
        ):
            deliveries.setdefault(result_id, {})[destination] = state
    return [
        ResultItem(
            id=r.id,
            job_id=r.job_id,
            kind=r.kind,
            state=r.state,
            reason=r.reason,
            sop_instance_uid=r.sop_instance_uid,
            series_instance_uid=r.series_instance_uid,
            size=r.size,
            meta=r.meta or {},
            created_at=r.created_at,
            deliveries=deliveries.get(r.id, {}),
        )
        for r in rows
    ]


class JobFilter(_Public):
    region: str | None = None
    study_uid: str | None = None
    state: str | None = None
    device: str | None = None
    study_type: str | None = None
    limit: int = 100
    offset: int = 0


def list_jobs(db: Database, f: JobFilter) -> list[JobItem]:
    query = select(JobRow).join(StudyRow, JobRow.study_id == StudyRow.id)
    if f.region:
        query = query.where(StudyRow.region_code == f.region)
    if f.study_uid:
        query = query.where(StudyRow.study_uid == f.study_uid)
    if f.state:
        query = query.where(JobRow.state == f.state)
    if f.device:
        device = JobRow.device_key.startswith(f.device + "@")
        query = query.where(device if "@" not in f.device else JobRow.device_key == f.device)
    if f.study_type:
        query = query.where(JobRow.study_type == f.study_type)
    with db.session() as session:
        ids = session.scalars(
            query.with_only_columns(JobRow.id)
            .order_by(JobRow.id.desc())
            .limit(f.limit)
            .offset(f.offset)
        ).all()
        jobs = _jobs(session, select(JobRow).where(JobRow.id.in_(ids)), {})
    return sorted(jobs, key=lambda j: j.job_id, reverse=True)


def job_detail(db: Database, job_id: int, region: str | None) -> tuple[JobItem, str] | None:
    """The job and its study's region, or None (also when outside ``region``)."""
    with db.session() as session:
        query = select(JobRow, StudyRow.region_code).join(StudyRow, JobRow.study_id == StudyRow.id)
        query = query.where(JobRow.id == job_id)
        if region is not None:
            query = query.where(StudyRow.region_code == region)
        row = session.execute(query).one_or_none()
        if row is None:
            return None
        jobs = _jobs(session, select(JobRow).where(JobRow.id == job_id), {})
        return jobs[0], row[1]


class ResultLocation(_Public):
    result: ResultItem
    object_key: str | None
    study_uid: str
    region: str


def result_location(db: Database, result_id: int, region: str | None) -> ResultLocation | None:
    with db.session() as session:
        query = (
            select(ResultRow, StudyRow.study_uid, StudyRow.region_code)
            .join(JobRow, ResultRow.job_id == JobRow.id)
            .join(StudyRow, JobRow.study_id == StudyRow.id)
            .where(ResultRow.id == result_id)
        )
        if region is not None:
            query = query.where(StudyRow.region_code == region)
        row = session.execute(query).one_or_none()
        if row is None:
            return None
        result, study_uid, study_region_code = row
        item = _results(session, [result.job_id])
        found = next(r for r in item if r.id == result_id)
        return ResultLocation(
            result=found,
            object_key=result.object_key,
            study_uid=study_uid,
            region=study_region_code,
        )
