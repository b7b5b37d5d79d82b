"""What DICOMweb sees of the index: studies, their series and instances — the current
version of every instance received, and every DICOM result the gateway stored for the
study (SR, flag images, GSPS, SEG; never the SEMD, which is not DICOM) — always inside the
caller's region.

Results are their own series in the study (the builders give them the study's UID); the
index keeps their UIDs and object keys, not their attributes, which :mod:`qido` reads from
the objects' headers where a query needs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, Select, and_, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from gateway.index.patient_names import folded_pattern
from gateway.index.tables import InstanceRow, JobRow, ResultRow, SeriesRow, StudyRow

DICOM_RESULT_KINDS = ("sr", "sc", "gsps", "seg")
STORED = "stored"


# A result DICOMweb serves: stored, DICOM, with its UIDs and its object.
_STORED_DICOM_RESULT = (
    ResultRow.state == STORED,
    ResultRow.kind.in_(DICOM_RESULT_KINDS),
    ResultRow.object_key.is_not(None),
    ResultRow.sop_instance_uid.is_not(None),
    ResultRow.series_instance_uid.is_not(None),
)


@dataclass(frozen=True)
class StudyMatch:
    """Study-level query keys, already parsed (see :mod:`query`)."""

    region: str | None
    study_uids: list[str] = field(default_factory=list)
    patient_id: str | None = None
    patient_name: str | None = None  # wildcards allowed; matched case-insensitively
    accession_number: str | None = None
    date_from: str | None = None
    date_to: str | None = None
    modality: str | None = None
    limit: int = 100
    offset: int = 0


@dataclass(frozen=True)
class StudyRecord:
    study_uid: str
    region: str
    patient_id: str | None
    patient_name: str | None
    patient_sex: str | None
    patient_age_years: int | None
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    study_description: str | None
    modalities: list[str]
    series_count: int
    instance_count: int


@dataclass(frozen=True)
class InstanceRecord:
    """One retrievable object. ``sop_class_uid`` and the series attributes are None for a
    result (its header has them)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    object_key: str
    is_result: bool
    size_bytes: int | None = None  # as the index recorded it
    sop_class_uid: str | None = None
    transfer_syntax_uid: str | None = None
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    body_part: str | None = None


def study_region(session: Session, study_uid: str) -> str | None:
    """The study's region; None when it is not indexed."""
    return session.scalars(
        select(StudyRow.region_code).where(StudyRow.study_uid == study_uid)
    ).one_or_none()


def visible_study(session: Session, study_uid: str, region: str | None) -> bool:
    """Whether the study exists inside ``region`` (None: any); outside it answers exactly
    like an unknown study."""
    found = study_region(session, study_uid)
    return found is not None and (region is None or found == region)


def find_studies(session: Session, match: StudyMatch) -> list[StudyRecord]:
    """The matching studies with their series and instance counts, in four queries
    whatever the page size (one per study cost most of a page's time)."""
    query = select(StudyRow).where(*_study_conditions(match))
    query = query.order_by(StudyRow.id).limit(match.limit).offset(match.offset)
    rows = list(session.scalars(query))
    ids = [row.id for row in rows]
    series: dict[int, list[str | None]] = {}
    for study_id, modality in session.execute(
        select(SeriesRow.study_id, SeriesRow.modality).where(SeriesRow.study_id.in_(ids))
    ):
        series.setdefault(study_id, []).append(modality)
    # Current instances: one per SOP Instance UID, whatever its versions.
    instances = dict(
        session.execute(
            select(SeriesRow.study_id, func.count(func.distinct(InstanceRow.sop_instance_uid)))
            .join(SeriesRow, SeriesRow.id == InstanceRow.series_id)
            .where(SeriesRow.study_id.in_(ids))
            .group_by(SeriesRow.study_id)
        ).all()
    )
    results: dict[int, dict[str, str]] = {}
    for study_id, sop_uid, series_uid in session.execute(
        select(JobRow.study_id, ResultRow.sop_instance_uid, ResultRow.series_instance_uid)
        .join(JobRow, JobRow.id == ResultRow.job_id)
        .where(JobRow.study_id.in_(ids), *_STORED_DICOM_RESULT)
    ):
        results.setdefault(study_id, {})[sop_uid or ""] = series_uid or ""
    return [
        _study_record(
            row, series.get(row.id, []), instances.get(row.id, 0), results.get(row.id, {})
        )
        for row in rows
    ]


def _study_conditions(match: StudyMatch) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if match.region is not None:
        conditions.append(StudyRow.region_code == match.region)
    if match.study_uids:
        conditions.append(StudyRow.study_uid.in_(match.study_uids))
    if match.patient_id is not None:
        conditions.append(_text_match(StudyRow.patient_id, match.patient_id))
    if match.patient_name is not None:
        pattern = folded_pattern(match.patient_name)
        conditions.append(_text_match(StudyRow.patient_name_folded, pattern))
    if match.accession_number is not None:
        conditions.append(_text_match(StudyRow.accession_number, match.accession_number))
    if match.date_from is not None:
        conditions.append(StudyRow.study_date >= match.date_from)
    if match.date_to is not None:
        conditions.append(StudyRow.study_date <= match.date_to)
    if match.modality is not None:
        with_modality = select(SeriesRow.study_id).where(SeriesRow.modality == match.modality)
        conditions.append(StudyRow.id.in_(with_modality))
    return conditions


def _text_match(column: InstrumentedAttribute[str | None], pattern: str) -> ColumnElement[bool]:
    """PS3.4 C.2.2.2.4 wildcard matching (``*``, ``?``), else single value matching."""
    if "*" not in pattern and "?" not in pattern:
        return column == pattern
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(escaped.replace("*", "%").replace("?", "_"), escape="\\")


def _study_record(
    row: StudyRow, modalities: list[str | None], originals: int, results: dict[str, str]
) -> StudyRecord:
    """``results``: the study's result SOP Instance UIDs → their series UIDs."""
    return StudyRecord(
        study_uid=row.study_uid,
        region=row.region_code,
        patient_id=row.patient_id,
        patient_name=row.patient_name,
        patient_sex=row.patient_sex,
        patient_age_years=row.patient_age_years,
        study_date=row.study_date,
        study_time=row.study_time,
        accession_number=row.accession_number,
        study_description=row.study_description,
        modalities=sorted({m for m in modalities if m}),
        series_count=len(modalities) + len(set(results.values())),
        instance_count=originals + len(results),
    )


def study_instances(
    session: Session,
    study_uid: str,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> list[InstanceRecord]:
    """The study's objects (or one series', or one instance): originals by series and
    Instance Number, then results in the order they were stored."""
    conditions: list[ColumnElement[bool]] = [StudyRow.study_uid == study_uid]
    if series_uid is not None:
        conditions.append(SeriesRow.series_uid == series_uid)
    if sop_instance_uid is not None:
        conditions.append(InstanceRow.sop_instance_uid == sop_instance_uid)
    query = _current_query(and_(*conditions))
    found = [_original(row, series, uid) for row, series, uid in session.execute(query)]
    for result in _results(session, study_uid):
        if series_uid not in (None, result.series_instance_uid):
            continue
        if sop_instance_uid not in (None, result.sop_instance_uid):
            continue
        found.append(
            InstanceRecord(
                study_uid=study_uid,
                series_uid=result.series_instance_uid or "",
                sop_instance_uid=result.sop_instance_uid or "",
                object_key=result.object_key or "",
                is_result=True,
                size_bytes=result.size,
            )
        )
    return found


def _current_query(
    condition: ColumnElement[bool],
) -> Select[InstanceRow, SeriesRow, str]:
    """The newest version of every instance matching ``condition`` (over instances, their
    series and study), with its series and study UID."""
    newest = (
        select(InstanceRow.sop_instance_uid, func.max(InstanceRow.version).label("version"))
        .group_by(InstanceRow.sop_instance_uid)
        .subquery()
    )
    return (
        select(InstanceRow, SeriesRow, StudyRow.study_uid)
        .join(SeriesRow, SeriesRow.id == InstanceRow.series_id)
        .join(StudyRow, StudyRow.id == SeriesRow.study_id)
        .join(
            newest,
            (InstanceRow.sop_instance_uid == newest.c.sop_instance_uid)
            & (InstanceRow.version == newest.c.version),
        )
        .where(condition)
        .order_by(
            SeriesRow.series_number.asc().nulls_last(),
            SeriesRow.id,
            InstanceRow.instance_number.asc().nulls_last(),
            InstanceRow.sop_instance_uid,
        )
    )


def _original(row: InstanceRow, series: SeriesRow, study_uid: str) -> InstanceRecord:
    return InstanceRecord(
        study_uid=study_uid,
        series_uid=series.series_uid,
        sop_instance_uid=row.sop_instance_uid,
        object_key=row.object_key,
        is_result=False,
        size_bytes=row.size_bytes,
        sop_class_uid=row.sop_class_uid,
        transfer_syntax_uid=row.transfer_syntax_uid,
        instance_number=row.instance_number,
        rows=row.rows,
        columns=row.columns,
        number_of_frames=row.number_of_frames,
        modality=series.modality,
        series_number=series.series_number,
        series_description=series.series_description,
        body_part=series.body_part,
    )


def _results(session: Session, study_uid: str) -> list[ResultRow]:
    """The study's stored DICOM results, each once (a result stored again under the same
    SOP Instance UID by a re-run keeps its newest copy)."""
    rows = session.scalars(
        select(ResultRow)
        .join(JobRow, JobRow.id == ResultRow.job_id)
        .join(StudyRow, StudyRow.id == JobRow.study_id)
        .where(StudyRow.study_uid == study_uid, *_STORED_DICOM_RESULT)
        .order_by(ResultRow.id)
    )
    newest: dict[str, ResultRow] = {}
    for row in rows:
        newest[row.sop_instance_uid or ""] = row
    return list(newest.values())
