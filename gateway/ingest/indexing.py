"""One index transaction for a group of received instances: the write side of group commit.

The members' bytes are already durable in staging (data fsynced); here, in one transaction:

1. what the index holds of the group's SOP Instances, studies and series is read at once
   (three queries, not three per instance);
2. each member is placed: an identical copy already held → success, nothing written (its
   object published again if it is missing); a series that belongs to another study →
   refused, nothing written for it; else its study and series are found or created (a
   complete study is reopened as ``superseded``);
3. the new instance rows are inserted (one statement), **before** any object is published, so
   the unique constraints order concurrent copies of one SOP Instance and a row never points
   at another writer's bytes;
4. the objects are published under their keys, one directory fsync per series folder;
5. ``last_received_at`` is written once per study and series (in id order: two writers lock
   the rows in the same order) and the transaction commits: one durable commit for the group.

If publishing or a statement after it fails, the published objects are deleted while the
rows are still locked. If the COMMIT itself fails, they stay: another connection asks whether
the group's rows landed anyway (the connection lost while the server committed), and if so
the members are answered as stored; if not, or if the database cannot say, they are answered
a failure, a resend publishes the objects again, and start-up recovery removes the
unindexed ones.

The statements every group runs (the reads, the instance rows, the touches) are compiled
once and run through the driver (:mod:`gateway.index.prepared`); the rare ones (a new study
or series, a new version's event) through SQLAlchemy Core.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import BindParameter, Connection, Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.dimse_status import Status
from gateway.errors import DatabaseError, InvalidInstance, StorageError
from gateway.index.database import Database, KeptConnection, connection_dropped
from gateway.index.object_store import ObjectStore, StagedObject, instance_key
from gateway.index.patient_names import folded
from gateway.index.prepared import Prepared
from gateway.index.study_state import OPEN_STATES, StudyState, record_event
from gateway.index.tables import InstanceRow, SeriesRow, StudyRow, utcnow
from gateway.ingest.outcome import Outcome, Sender
from gateway.ingest.tags import InstanceTags

STUDIES = cast(Table, StudyRow.__table__)
SERIES = cast(Table, SeriesRow.__table__)
INSTANCES = cast(Table, InstanceRow.__table__)

_VERSIONS = select(
    INSTANCES.c.sop_instance_uid, INSTANCES.c.version, INSTANCES.c.sha256, INSTANCES.c.object_key
)
_STUDIES = select(STUDIES.c.study_uid, STUDIES.c.id, STUDIES.c.state)
_SERIES = select(SERIES.c.series_uid, SERIES.c.id, SERIES.c.study_id)
_READ_QUERIES = {
    "versions": (_VERSIONS, INSTANCES.c.sop_instance_uid),
    "studies": (_STUDIES, STUDIES.c.study_uid),
    "series": (_SERIES, SERIES.c.series_uid),
}
# The statements every group runs go through the driver, compiled once (gateway.index.prepared):
# SQLAlchemy's execute path was 10.6 % of the SCP's GIL for these and the commit.
_READS: dict[tuple[str, int], Prepared] = {}  # (query, number of UIDs): IN (:u0, :u1, …)
_INSTANCE_COLUMNS = tuple(column.name for column in INSTANCES.c if column.name != "id")
_INSERT_INSTANCES = Prepared(
    insert(INSTANCES).inline().values({name: bindparam(name) for name in _INSTANCE_COLUMNS})
)
# executemany, one row per id: no expanding IN to render again on each group
_TOUCH = tuple(
    Prepared(
        update(table)
        .where(table.c.id == bindparam("row_id"))
        .values(last_received_at=bindparam("now"))
    )
    for table in (STUDIES, SERIES)
)
_ATTEMPTS = 3

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Member:
    """One instance waiting for its group's commit: durable in staging, validated."""

    staged: StagedObject
    digest: str
    tags: InstanceTags
    sender: Sender


def write_group(
    db: Database, store: ObjectStore, members: Sequence[Member], writer: KeptConnection
) -> list[Outcome]:
    """Index and publish ``members`` in one transaction on ``writer`` (the group leader's
    kept connection); one outcome each, in their order.

    A member refused on its own (its series belongs to another study) gets its status and
    the others go on; a failure of the transaction (database, object store) raises, and then
    nothing of the group is indexed (its objects published before a COMMIT that raised stay,
    for a resend or start-up recovery: see :func:`_transaction`).
    """
    for attempt in range(_ATTEMPTS):
        try:
            return _transaction(db, store, members, writer)
        except IntegrityError:
            # Another process stored one of these studies, series or SOP versions first; the
            # retry reads its rows and takes the next step from there.
            continue
        except DatabaseError as exc:
            # A connection kept from an earlier group, dropped since (PostgreSQL restarted
            # within the keep window): once more, on one the pool checks out and tests.
            if attempt == 0 and writer.reused and connection_dropped(exc):
                continue
            raise
    raise StorageError("index kept conflicting with concurrent writers")


@dataclass
class _Group:
    """What one transaction has read and written, so that members of a series ask once."""

    now: datetime
    versions: dict[str, list[tuple[int, str, str]]]  # per SOP: (version, sha256, object key)
    studies: dict[str, tuple[int, str]]
    series: dict[str, tuple[int, int]]
    rows: list[dict[str, object]] = field(default_factory=list)
    publish: list[tuple[StagedObject, str]] = field(default_factory=list)
    touched_studies: set[int] = field(default_factory=set)
    touched_series: set[int] = field(default_factory=set)
    outcomes: list[Outcome] = field(default_factory=list)  # one per member, in their order


def _transaction(
    db: Database, store: ObjectStore, members: Sequence[Member], writer: KeptConnection
) -> list[Outcome]:
    written: _Group | None = None  # set once all but the COMMIT has run
    try:
        with writer.transaction(db.write_lock) as connection:
            written = _write(connection, store, members)
        return written.outcomes
    except BaseException as exc:
        if written is None:
            raise  # before the COMMIT: _write removed what it had published
        # A COMMIT that failed may yet have landed (the connection lost while the server
        # committed). Its objects stay either way: deleting them would leave rows without
        # their bytes if it did, or, now that the rows are unlocked, could delete a
        # concurrent writer's object of the same key if it did not; start-up recovery
        # removes the unindexed ones, and a resend publishes them again.
        if isinstance(exc, DatabaseError) and _landed(db, written):
            log.warning(
                "a group's commit was reported failed but had landed: answered as stored",
                extra={"instances": len(written.rows)},
            )
            return written.outcomes
        if written.publish:
            log.warning(
                "a group's commit failed: its objects are left for recovery",
                extra={"objects": len(written.publish)},
            )
        raise


def _write(connection: Connection, store: ObjectStore, members: Sequence[Member]) -> _Group:
    """All of the group's transaction but its COMMIT: rows inserted, objects published."""
    group = _read_group(connection, members)
    # One order for every writer: two groups never wait on each other's rows crosswise.
    order = sorted(range(len(members)), key=lambda i: _sort_key(members[i].tags))
    placed = {index: _place(connection, store, group, members[index]) for index in order}
    group.outcomes = [placed[index] for index in range(len(members))]
    if group.rows:
        _INSERT_INSTANCES.executemany(connection, group.rows)
    try:
        store.publish_group(group.publish)
        _touch(connection, group)
    except BaseException:
        # Removed while the rows are still locked: a concurrent writer of the same SOP
        # version waits on them and must not find its own object deleted.
        _remove_all(store, [key for _staged, key in group.publish])
        raise
    return group


def _landed(db: Database, group: _Group) -> bool:
    """Whether the group's rows are in the index after its COMMIT raised: asked on another
    connection; ``False`` also when the database cannot say (it is still away)."""
    expected = {str(row["object_key"]): str(row["sha256"]) for row in group.rows}
    if not expected:
        return True  # nothing to commit: only duplicates, restored objects at most
    try:
        # Queued with the writers (SQLite's transactions are IMMEDIATE: unqueued, this read
        # would sleep-poll in the busy handler while the leader's group waits).
        with db.write_lock, db.transaction() as connection:
            found = connection.execute(
                select(INSTANCES.c.object_key, INSTANCES.c.sha256).where(
                    INSTANCES.c.object_key.in_(sorted(expected))
                )
            ).all()
    except DatabaseError:
        return False
    # Our rows, not a concurrent writer's of the same keys that committed after ours failed.
    return {str(key): str(sha) for key, sha in found} == expected


def _sort_key(tags: InstanceTags) -> tuple[str, str, str]:
    return (tags.study.study_uid, tags.series_uid, tags.sop_instance_uid)


def _read_group(connection: Connection, members: Sequence[Member]) -> _Group:
    sops = sorted({m.tags.sop_instance_uid for m in members})
    studies = sorted({m.tags.study.study_uid for m in members})
    series = sorted({m.tags.series_uid for m in members})
    versions: dict[str, list[tuple[int, str, str]]] = {uid: [] for uid in sops}
    for sop, version, sha, key in _read(connection, "versions", sops):
        versions[sop].append((int(version), str(sha), str(key)))
    return _Group(
        now=utcnow(),
        versions=versions,
        studies={
            uid: (int(id_), str(state)) for uid, id_, state in _read(connection, "studies", studies)
        },
        series={
            uid: (int(id_), int(study_id))
            for uid, id_, study_id in _read(connection, "series", series)
        },
    )


def _read(connection: Connection, name: str, uids: list[str]) -> list[Sequence[Any]]:
    return _read_statement(name, len(uids)).execute(
        connection, {f"u{i}": uid for i, uid in enumerate(uids)}
    )


def _read_statement(name: str, count: int) -> Prepared:
    """``WHERE uid = :u0`` for one UID, ``IN (:u0, …)`` for several: one compiled statement
    per count (at most a group's size), which the driver keeps prepared."""
    found = _READS.get((name, count))
    if found is None:
        query, column = _READ_QUERIES[name]
        binds: list[BindParameter[Any]] = [bindparam(f"u{i}") for i in range(count)]
        condition = column == binds[0] if count == 1 else column.in_(binds)
        found = _READS.setdefault((name, count), Prepared(query.where(condition)))
    return found


def _place(connection: Connection, store: ObjectStore, group: _Group, member: Member) -> Outcome:
    tags = member.tags
    study_uid = tags.study.study_uid
    held = group.versions[tags.sop_instance_uid]
    for _version, sha, key in held:
        if sha == member.digest:
            _restore_if_missing(store, group, member, key)
            return Outcome(
                Status.SUCCESS, "duplicate of a stored instance", study_uid, duplicate=True
            )
    try:
        _check_series(group, tags)
    except InvalidInstance as exc:
        return Outcome(exc.status, exc.reason, study_uid)
    study_id = _study_for(connection, group, member)
    series_id = _series_for(connection, group, tags, study_id)
    version = max((v for v, _sha, _key in held), default=0) + 1
    key = instance_key(study_uid, tags.series_uid, tags.sop_instance_uid, version)
    held.append((version, member.digest, key))
    group.rows.append(_instance_values(series_id, member, key, version, group.now))
    group.publish.append((member.staged, key))
    group.touched_studies.add(study_id)
    group.touched_series.add(series_id)
    if version > 1:
        record_event(
            connection,
            study_id,
            "instance_version",
            group.now,
            detail={
                "sop_instance_uid": tags.sop_instance_uid,
                "version": version,
                "object_key": key,
            },
        )
    return Outcome(Status.SUCCESS, "", study_uid, version=version)


def _restore_if_missing(store: ObjectStore, group: _Group, member: Member, key: str) -> None:
    """An identical copy is indexed: its object should be there. Where it is not (deleted
    behind the index, or by a version before 2026-12-07 that deleted a group's objects when
    its COMMIT raised although it had landed), answering the resend "duplicate" would leave
    the row without its bytes. The resent copy takes the key again, published with the
    group."""
    if any(published == key for _staged, published in group.publish) or store.exists(key):
        return
    log.warning(
        "an indexed instance's object was missing: restored from a copy sent again",
        extra={"object_key": key},
    )
    group.publish.append((member.staged, key))


def _check_series(group: _Group, tags: InstanceTags) -> None:
    """Refused before anything is written for it: a series held under another study."""
    series = group.series.get(tags.series_uid)
    if series is None:
        return
    study = group.studies.get(tags.study.study_uid)
    if study is None or study[0] != series[1]:
        raise InvalidInstance(
            "series already belongs to another study", Status.DATASET_DOES_NOT_MATCH_SOP_CLASS
        )


def _study_for(connection: Connection, group: _Group, member: Member) -> int:
    """The study's id, created if new; a study already complete is reopened (superseded)."""
    study_tags, sender, now = member.tags.study, member.sender, group.now
    found = group.studies.get(study_tags.study_uid)
    if found is None:
        study_id = connection.execute(
            insert(STUDIES)
            .values(
                study_uid=study_tags.study_uid,
                source_id=sender.source_id,
                region_code=sender.source.region,
                state=StudyState.RECEIVING.value,
                patient_id=study_tags.patient_id,
                patient_name=study_tags.patient_name,
                patient_name_folded=folded(study_tags.patient_name),
                patient_sex=study_tags.patient_sex,
                patient_age_years=study_tags.patient_age_years,
                study_date=study_tags.study_date,
                study_time=study_tags.study_time,
                accession_number=study_tags.accession_number,
                study_description=study_tags.study_description,
                first_received_at=now,
                last_received_at=now,
                state_changed_at=now,
            )
            .returning(STUDIES.c.id)
        ).scalar_one()
        record_event(
            connection,
            study_id,
            "state",
            now,
            state=StudyState.RECEIVING,
            detail={"source": sender.source.name, "calling_ae": sender.calling_ae},
        )
        group.studies[study_tags.study_uid] = (int(study_id), StudyState.RECEIVING.value)
        return int(study_id)
    study_id, state = found
    if state not in OPEN_STATES:
        connection.execute(
            update(STUDIES)
            .where(STUDIES.c.id == study_id)
            .values(state=StudyState.SUPERSEDED.value, state_changed_at=now)
        )
        record_event(
            connection,
            study_id,
            "state",
            now,
            state=StudyState.SUPERSEDED,
            detail={"reason": "instances arrived after completion", "previous_state": state},
        )
        group.studies[study_tags.study_uid] = (study_id, StudyState.SUPERSEDED.value)
    return study_id


def _series_for(connection: Connection, group: _Group, tags: InstanceTags, study_id: int) -> int:
    found = group.series.get(tags.series_uid)
    if found is not None:
        return found[0]
    series_id = connection.execute(
        insert(SERIES)
        .values(
            study_id=study_id,
            series_uid=tags.series_uid,
            modality=tags.modality,
            body_part=tags.body_part,
            series_description=tags.series_description,
            series_number=tags.series_number,
            protocol_name=tags.protocol_name,
            first_received_at=group.now,
            last_received_at=group.now,
        )
        .returning(SERIES.c.id)
    ).scalar_one()
    group.series[tags.series_uid] = (int(series_id), study_id)
    return int(series_id)


def _touch(connection: Connection, group: _Group) -> None:
    # Last, and in id order: on PostgreSQL these lock the rows until the commit, and every
    # instance of the study waits for them.
    for statement, ids in zip(_TOUCH, (group.touched_studies, group.touched_series), strict=True):
        if ids:
            statement.executemany(
                connection, [{"row_id": i, "now": group.now} for i in sorted(ids)]
            )


def _instance_values(
    series_id: int, member: Member, key: str, version: int, now: datetime
) -> dict[str, object]:
    tags, sender = member.tags, member.sender
    return {
        "series_id": series_id,
        "sop_instance_uid": tags.sop_instance_uid,
        "version": version,
        "object_key": key,
        "sop_class_uid": tags.sop_class_uid,
        "transfer_syntax_uid": tags.transfer_syntax_uid,
        "size_bytes": member.staged.size,
        "sha256": member.digest,
        "instance_number": tags.instance_number,
        "image_type": tags.image_type,
        "slice_thickness": tags.slice_thickness,
        "image_position": tags.image_position,
        "image_orientation": tags.image_orientation,
        "rows": tags.rows,
        "columns": tags.columns,
        "number_of_frames": tags.number_of_frames,
        "photometric_interpretation": tags.photometric_interpretation,
        "view_position": tags.view_position,
        "calling_ae": sender.calling_ae,
        "peer_address": sender.address,
        "received_at": now,
    }


def _remove_all(store: ObjectStore, keys: Sequence[str]) -> None:
    for key in keys:
        try:
            store.delete(key)
        except StorageError:
            log.warning("orphan object left for recovery", extra={"object_key": key})
