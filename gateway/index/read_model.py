"""The read side, one for the CLI, the API and the dashboard: studies with every filter,
one study in full, its timeline, jobs with their findings, results.

Queries that serve the API take the region they are confined to; a row outside it is
indistinguishable from a row that does not exist.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Select, exists, func, select
from sqlalchemy.orm import Session

from gateway.errors import UnknownStudy
from gateway.index.database import Database
from gateway.index.study_state import StudyState
from gateway.index.tables import (
    DeviceMode,
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


class TimelineEntry(_Public):
    at: datetime
    kind: str
    state: str | None
    detail: dict[str, Any]
    note: str | None


class FindingItem(_Public):
    id: int
    label_code: str
    label_ru: str
    label_en: str
    probability: float
    threshold: float
    positive: bool
    location: dict[str, Any] | None
    measurements: dict[str, float]

    @classmethod
    def of(cls, row: FindingRow) -> FindingItem:
        return cls(
            id=row.id,
            label_code=row.label_code,
            label_ru=row.label_ru,
            label_en=row.label_en,
            probability=row.probability,
            threshold=row.threshold,
            positive=row.positive,
            location=row.location,
            measurements=row.measurements or {},
        )


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
    series_count: int
    instance_count: int
    first_received_at: datetime
    last_received_at: datetime
    completed_at: datetime | None
    state_reason: str | None = None  # why it is not_applicable or failed


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
    shadow: bool  # its job ran in shadow mode: kept here, never delivered


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
    mode: str  # shadow or live when the job was created (gateway.index.tables.DeviceMode)
    attempts: int
    reason: str | None
    timings_ms: dict[str, float]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    findings: list[FindingItem]
    # The prior studies handed to the job (its device asked for priors); None: not asked.
    prior_study_uids: list[str] | None = None


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


def list_studies(db: Database, f: StudyFilter | None = None) -> list[StudyItem]:
    f = f or StudyFilter()
    query = _filtered(select(StudyRow, SourceRow.name).join(SourceRow), f)
    query = query.order_by(StudyRow.first_received_at.desc(), StudyRow.id.desc())
    with db.session() as session:
        rows = session.execute(query.limit(f.limit).offset(f.offset)).all()
        ids = [study.id for study, _ in rows]
        modalities = _modalities(session, ids)
        counts = _counts(session, ids)
        reasons = _state_reasons(session, [study for study, _ in rows])
        return [
            _item(
                study,
                source,
                modalities.get(study.id, []),
                counts.get(study.id, (0, 0)),
                reasons.get(study.id),
            )
            for study, source in rows
        ]


def _item(
    study: StudyRow,
    source: str,
    modalities: list[str],
    counts: tuple[int, int],
    reason: str | None,
) -> StudyItem:
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
        series_count=counts[0],
        instance_count=counts[1],
        first_received_at=study.first_received_at,
        last_received_at=study.last_received_at,
        completed_at=study.completed_at,
        state_reason=reason,
    )


def _counts(session: Session, study_ids: list[int]) -> dict[int, tuple[int, int]]:
    """Series and (distinct SOP) instances per study."""
    if not study_ids:
        return {}
    rows = session.execute(
        select(
            SeriesRow.study_id,
            func.count(func.distinct(SeriesRow.id)),
            func.count(func.distinct(InstanceRow.sop_instance_uid)),
        )
        .outerjoin(InstanceRow, InstanceRow.series_id == SeriesRow.id)
        .where(SeriesRow.study_id.in_(study_ids))
        .group_by(SeriesRow.study_id)
    )
    return {study_id: (int(series), int(instances)) for study_id, series, instances in rows}


_ENDS_WITH_A_REASON = frozenset({StudyState.NOT_APPLICABLE.value, StudyState.FAILED.value})


def _state_reasons(session: Session, studies: list[StudyRow]) -> dict[int, str]:
    """The reason recorded with each study's current state, where there is one."""
    wanted = {s.id: s.state for s in studies if s.state in _ENDS_WITH_A_REASON}
    if not wanted:
        return {}
    events = session.scalars(
        select(StudyEventRow)
        .where(StudyEventRow.study_id.in_(wanted), StudyEventRow.kind == "state")
        .order_by(StudyEventRow.id)
    )
    reasons: dict[int, str] = {}
    for event in events:
        if event.state == wanted[event.study_id] and (event.detail or {}).get("reason"):
            reasons[event.study_id] = str(event.detail["reason"])
    return reasons


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
        base = _item(
            study,
            source,
            _modalities(session, [study.id]).get(study.id, []),
            _counts(session, [study.id]).get(study.id, (0, 0)),
            _state_reasons(session, [study]).get(study.id),
        )
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


def timeline(db: Database, study_uid: str) -> list[TimelineEntry]:
    """Every state transition and event of a study, oldest first."""
    with db.session() as session:
        study_id = session.scalar(select(StudyRow.id).where(StudyRow.study_uid == study_uid))
        if study_id is None:
            raise UnknownStudy(f"no study {study_uid}")
        return _timeline(session, study_id)


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
            prior_study_uids=j.prior_study_uids,
            device=j.device_key,
            study_type=j.study_type,
            service_code=j.service_code,
            rule=j.rule,
            priority=j.priority,
            queue=j.queue,
            state=j.state,
            mode=j.mode,
            attempts=j.attempts,
            reason=j.reason,
            timings_ms=j.timings_ms or {},
            created_at=j.created_at,
            started_at=j.started_at,
            finished_at=j.finished_at,
            findings=[
                FindingItem.of(f) for f in sorted(findings.get(j.id, []), key=lambda f: f.id)
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
    shadow = set(
        session.scalars(
            select(JobRow.id).where(JobRow.id.in_(job_ids), JobRow.mode == DeviceMode.SHADOW)
        )
    )
    deliveries: dict[int, dict[str, str]] = {}
    if rows:
        for result_id, destination, state in session.execute(
            select(OutboxRow.result_id, OutboxRow.destination, OutboxRow.state).where(
                OutboxRow.result_id.in_([r.id for r in rows])
            )
        ):
            if result_id is not None:
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
            shadow=r.job_id in shadow,
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


def list_jobs(db: Database, f: JobFilter | None = None) -> list[JobItem]:
    f = f or JobFilter()
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
