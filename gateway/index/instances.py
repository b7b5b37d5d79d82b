"""A series' current instances: the one answer to "which objects does this job read?"; and
how many instances a study holds (the expected-count completion compares it).

Inference decodes them and the result builders reference them; both ask here, so both see
the same instances in the same order.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, Select, bindparam, func, select
from sqlalchemy.orm import Session

from gateway.index.tables import InstanceRow, SeriesRow

# The one order of a series' instances. NULLS LAST spelled out: SQLite and PostgreSQL
# disagree on where NULL sorts.
_ORDER = (InstanceRow.instance_number.asc().nulls_last(), InstanceRow.sop_instance_uid)


def current_instance_keys(executor: Session | Connection, series_uids: Iterable[str]) -> list[str]:
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
        .order_by(*_ORDER)
    )
    return list(executor.scalars(query))


def _keys_by_series() -> Select[tuple[str, str]]:
    """:func:`current_keys_by_series`'s query, built once: the recorder runs it in every
    group that starts a job, and building it (and its cache key) cost more than running it."""
    newest = (
        select(
            SeriesRow.series_uid,
            InstanceRow.sop_instance_uid,
            func.max(InstanceRow.version).label("version"),
        )
        .join(SeriesRow, SeriesRow.id == InstanceRow.series_id)
        .where(SeriesRow.series_uid.in_(bindparam("series_uids", expanding=True)))
        .group_by(SeriesRow.series_uid, InstanceRow.sop_instance_uid)
        .subquery()
    )
    return (
        select(newest.c.series_uid, InstanceRow.object_key)
        .join(
            newest,
            (InstanceRow.sop_instance_uid == newest.c.sop_instance_uid)
            & (InstanceRow.version == newest.c.version),
        )
        .order_by(newest.c.series_uid, *_ORDER)
    )


_KEYS_BY_SERIES = _keys_by_series()


def current_keys_by_series(
    executor: Session | Connection, series_uids: Iterable[str]
) -> dict[str, list[str]]:
    """Series UID → :func:`current_instance_keys` of that series alone, for many series in
    one query (the recorder's group of starting jobs); a series without instances is absent.

    A SOP version (UID, version) is stored once, so the newest version of an instance found
    in one series is the very row the one-series query joins back to."""
    uids = sorted(set(series_uids))
    if not uids:
        return {}
    keys: dict[str, list[str]] = {}
    for row in executor.execute(_KEYS_BY_SERIES, {"series_uids": uids}):
        keys.setdefault(row.series_uid, []).append(row.object_key)
    return keys


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
