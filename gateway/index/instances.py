"""A series' current instances: the one answer to "which objects does this job read?"; and
how many instances a study holds (the expected-count completion compares it).

Inference decodes them and the result builders reference them; both ask here, so both see
the same instances in the same order.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.index.tables import InstanceRow, SeriesRow


def current_instance_keys(session: Session, series_uids: Iterable[str]) -> list[str]:
    """Object keys of the newest version of every instance of the series, by Instance
    Number (none last) then SOP Instance UID; volumes are put in slice order when decoded."""
    newest = (
        select(InstanceRow.sop_instance_uid, func.max(InstanceRow.version).label("version"))
        .join(SeriesRow, SeriesRow.id == InstanceRow.series_id)
        .where(SeriesRow.series_uid.in_(list(series_uids)))
        .group_by(InstanceRow.sop_instance_uid)
        .subquery()
    )
    query = (
        select(InstanceRow.object_key)
        .join(
            newest,
            (InstanceRow.sop_instance_uid == newest.c.sop_instance_uid)
            & (InstanceRow.version == newest.c.version),
        )
        # NULLS LAST spelled out: SQLite and PostgreSQL disagree on where NULL sorts.
        .order_by(InstanceRow.instance_number.asc().nulls_last(), InstanceRow.sop_instance_uid)
    )
    return list(session.scalars(query))


def held_instance_counts(session: Session, study_ids: Iterable[int]) -> dict[int, int]:
    """Study id → how many distinct SOP Instances the gateway holds for it (versions of one
    instance count once: an archive counts instances, not our copies of them)."""
    ids = list(study_ids)
    if not ids:
        return {}
    query = (
        select(SeriesRow.study_id, func.count(func.distinct(InstanceRow.sop_instance_uid)))
        .join(SeriesRow, SeriesRow.id == InstanceRow.series_id)
        .where(SeriesRow.study_id.in_(ids))
        .group_by(SeriesRow.study_id)
    )
    return {int(study_id): int(count) for study_id, count in session.execute(query).all()}
