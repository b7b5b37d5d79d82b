"""Read-side queries over the index: what arrived, in which state (CLI now, API later)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select

from gateway.database import Database
from gateway.errors import UnknownStudy
from gateway.tables import InstanceRow, SeriesRow, SourceRow, StudyEventRow, StudyRow


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
