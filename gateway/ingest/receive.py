"""Durable ingest: one received instance → object store + index, or a failure status.

Success is reported only after the object is written (fsynced / acknowledged by S3) and the
index row is committed. The object write happens inside the index transaction, after the
instance row is flushed, so two copies of the same SOP Instance racing each other are ordered
by the database's unique constraint and can never leave a row pointing at the other's bytes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import BinaryIO, cast

from pydantic import BaseModel, ConfigDict
from pydicom import Dataset, dcmread
from sqlalchemy import Connection, Table, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.dimse_status import Status
from gateway.errors import DatabaseError, InvalidInstance, StorageError
from gateway.index.database import Database
from gateway.index.object_store import ObjectStore, StagedObject, instance_key
from gateway.index.patient_names import folded
from gateway.index.study_state import OPEN_STATES, StudyState, record_event
from gateway.index.tables import InstanceRow, SeriesRow, StudyRow, utcnow
from gateway.ingest.pixels import check_pixel_data
from gateway.ingest.sources import Source
from gateway.ingest.tags import InstanceTags, StudyTags, read_tags

STUDIES = cast(Table, StudyRow.__table__)
SERIES = cast(Table, SeriesRow.__table__)
INSTANCES = cast(Table, InstanceRow.__table__)

log = logging.getLogger(__name__)

# A caller's own check of an instance's attributes before anything is stored (DICOMweb: the
# SOP class allowed, the study of the request's URL); it raises InvalidInstance to refuse.
Admit = Callable[[InstanceTags], None]


class Sender(BaseModel):
    """Who sent an instance, as established at association time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Source
    source_id: int
    calling_ae: str
    address: str | None = None


@dataclass(frozen=True)
class Outcome:
    status: Status
    reason: str = ""
    study_uid: str | None = None
    duplicate: bool = False
    version: int | None = None


class Ingest:
    """Stores received instances; shared by every association (thread-safe)."""

    def __init__(self, db: Database, store: ObjectStore) -> None:
        self.db = db
        self.store = store

    def receive(
        self,
        encoded: bytes,
        sender: Sender,
        expected_sop_class: str | None = None,
        expected_sop_instance: str | None = None,
    ) -> Outcome:
        """Store one Part-10 encoded instance (file meta + dataset exactly as received)."""
        return self._receive(_Received(encoded), sender, expected_sop_class, expected_sop_instance)

    def receive_file(
        self,
        path: Path,
        sender: Sender,
        expected_sop_class: str | None = None,
        expected_sop_instance: str | None = None,
        *,
        admit: Admit | None = None,
    ) -> Outcome:
        """:meth:`receive` for an instance the SCP spooled to ``path`` (a large one need not
        fit in memory); the file is read, never moved, and must stay until this returns.
        ``admit`` checks the validated attributes before anything is stored."""
        return self._receive(
            _Received(path=path), sender, expected_sop_class, expected_sop_instance, admit
        )

    def _receive(
        self,
        received: _Received,
        sender: Sender,
        expected_sop_class: str | None,
        expected_sop_instance: str | None,
        admit: Admit | None = None,
    ) -> Outcome:
        try:
            dataset = _parse(received)
            tags = read_tags(dataset)
            _check_matches_request(tags, expected_sop_class, expected_sop_instance)
            if admit is not None:
                admit(tags)
        except InvalidInstance as exc:
            return self._refuse(exc.status, exc.reason, sender)
        if not self.store.has_room():
            return self._refuse(
                Status.OUT_OF_RESOURCES,
                "object store below free-space floor",
                sender,
                tags.study.study_uid,
            )
        try:
            digest = received.sha256()
            return self._store_and_index(received, digest, tags, sender)
        except InvalidInstance as exc:
            return self._refuse(exc.status, exc.reason, sender, tags.study.study_uid)
        except StorageError as exc:
            return self._refuse(
                Status.OUT_OF_RESOURCES, f"object store: {exc}", sender, tags.study.study_uid
            )
        except OSError as exc:  # the spooled file could not be read back
            return self._refuse(
                Status.OUT_OF_RESOURCES,
                f"spooled instance unreadable: {exc.strerror or exc}",
                sender,
                tags.study.study_uid,
            )
        except DatabaseError as exc:
            return self._refuse(
                Status.OUT_OF_RESOURCES, f"database: {exc}", sender, tags.study.study_uid
            )

    def _store_and_index(
        self, received: _Received, digest: str, tags: InstanceTags, sender: Sender
    ) -> Outcome:
        # The slow part of the write (data + fsync) happens before the index transaction, so
        # no lock is held meanwhile; the transaction only gives the staged object its key.
        staged = received.stage(self.store)
        try:
            for _attempt in range(3):
                try:
                    return self._transaction(staged, digest, tags, sender)
                except IntegrityError:
                    # A concurrent association stored the same study, series or SOP version
                    # first; the retry sees its row and takes the next step from there.
                    continue
            raise StorageError("index kept conflicting with concurrent writers")
        finally:
            self.store.discard(staged)

    def _transaction(
        self, staged: StagedObject, digest: str, tags: InstanceTags, sender: Sender
    ) -> Outcome:
        # SQLAlchemy Core, not the ORM: this runs for every instance, and the ORM's unit of
        # work cost more CPU than anything else in ingest but pynetdicom.
        now = utcnow()
        written_key: str | None = None
        try:
            with self.db.write_lock, self.db.transaction() as connection:
                existing = connection.execute(
                    select(INSTANCES.c.version, INSTANCES.c.sha256).where(
                        INSTANCES.c.sop_instance_uid == tags.sop_instance_uid
                    )
                ).all()
                if any(sha == digest for _version, sha in existing):
                    return Outcome(
                        Status.SUCCESS,
                        "duplicate of a stored instance",
                        tags.study.study_uid,
                        duplicate=True,
                    )
                study_id = _study_for(connection, tags.study, sender, now)
                series_id = _series_for(connection, study_id, tags, now)
                version = max((v for v, _sha in existing), default=0) + 1
                key = instance_key(
                    tags.study.study_uid, tags.series_uid, tags.sop_instance_uid, version
                )
                connection.execute(
                    insert(INSTANCES).values(
                        **_instance_values(
                            series_id, tags, sender, key, version, staged, digest, now
                        )
                    )
                )
                if version > 1:
                    record_event(
                        connection,
                        study_id,
                        "instance_version",
                        now,
                        detail={
                            "sop_instance_uid": tags.sop_instance_uid,
                            "version": version,
                            "object_key": key,
                        },
                    )
                self.store.publish(staged, key)
                written_key = key
                # Only now: these UPDATEs lock the study and series rows (PostgreSQL) until
                # the commit, and every instance of the study waits for those rows.
                connection.execute(
                    update(STUDIES).where(STUDIES.c.id == study_id).values(last_received_at=now)
                )
                connection.execute(
                    update(SERIES).where(SERIES.c.id == series_id).values(last_received_at=now)
                )
            log.info(
                "instance stored",
                extra={
                    "study_uid": tags.study.study_uid,
                    "sop_instance_uid": tags.sop_instance_uid,
                    "version": version,
                    "source": sender.source.name,
                },
            )
            return Outcome(Status.SUCCESS, "", tags.study.study_uid, version=version)
        except BaseException:
            if written_key is not None:
                # The commit failed after the write: the object has no index row and the
                # sender was not told success, so it goes; recovery would remove it anyway.
                self._remove_quietly(written_key)
            raise

    def _remove_quietly(self, key: str) -> None:
        try:
            self.store.delete(key)
        except StorageError:
            log.warning("orphan object left for recovery", extra={"object_key": key})

    def _refuse(
        self, status: Status, reason: str, sender: Sender, study_uid: str | None = None
    ) -> Outcome:
        log.warning(
            "instance refused",
            extra={
                "status": f"0x{status:04X}",
                "reason": reason,
                "calling_ae": sender.calling_ae,
                "source": sender.source.name,
                "study_uid": study_uid,
            },
        )
        return Outcome(status, reason, study_uid)


@dataclass(frozen=True)
class _Received:
    """One received instance: its bytes in memory, or the file the SCP spooled them to."""

    data: bytes | None = None
    path: Path | None = None

    def open(self) -> BinaryIO:
        if self.data is not None:
            return BytesIO(self.data)
        assert self.path is not None
        return open(self.path, "rb")  # the caller closes it

    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        assert self.path is not None
        return self.path.stat().st_size

    def sha256(self) -> str:
        if self.data is not None:
            return hashlib.sha256(self.data).hexdigest()
        assert self.path is not None
        with open(self.path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()

    def stage(self, store: ObjectStore) -> StagedObject:
        if self.data is not None:
            return store.stage(self.data)
        assert self.path is not None
        return store.stage_file(self.path)


def _parse(received: _Received) -> Dataset:
    try:
        with received.open() as handle:
            dataset = dcmread(handle, stop_before_pixels=True)
            dataset.get("StudyInstanceUID")  # pydicom parses lazily; make damage surface here
            check_pixel_data(handle, handle.tell(), received.size(), dataset)
        return dataset
    except InvalidInstance:
        raise
    except Exception as exc:  # damaged input can raise nearly anything (zlib, struct, …)
        raise InvalidInstance(
            f"cannot parse dataset: {exc.__class__.__name__}: {_first_line(exc)}",
            Status.CANNOT_UNDERSTAND,
        ) from exc


def _check_matches_request(
    tags: InstanceTags, sop_class: str | None, sop_instance: str | None
) -> None:
    if sop_class is not None and sop_class != tags.sop_class_uid:
        raise InvalidInstance(
            f"dataset SOP Class {tags.sop_class_uid} differs from the request's {sop_class}",
            Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        )
    if sop_instance is not None and sop_instance != tags.sop_instance_uid:
        raise InvalidInstance(
            "dataset SOP Instance UID differs from the request's",
            Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        )


def _study_for(connection: Connection, study_tags: StudyTags, sender: Sender, now: datetime) -> int:
    """The study's id, created if new; a study already complete is reopened (superseded)."""
    found = connection.execute(
        select(STUDIES.c.id, STUDIES.c.state).where(STUDIES.c.study_uid == study_tags.study_uid)
    ).first()
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
    return int(study_id)


def _series_for(connection: Connection, study_id: int, tags: InstanceTags, now: datetime) -> int:
    found = connection.execute(
        select(SERIES.c.id, SERIES.c.study_id).where(SERIES.c.series_uid == tags.series_uid)
    ).first()
    if found is None:
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
                first_received_at=now,
                last_received_at=now,
            )
            .returning(SERIES.c.id)
        ).scalar_one()
        return int(series_id)
    if found.study_id != study_id:
        raise InvalidInstance(
            "series already belongs to another study", Status.DATASET_DOES_NOT_MATCH_SOP_CLASS
        )
    return int(found.id)


def _instance_values(
    series_id: int,
    tags: InstanceTags,
    sender: Sender,
    key: str,
    version: int,
    staged: StagedObject,
    digest: str,
    now: datetime,
) -> dict[str, object]:
    return {
        "series_id": series_id,
        "sop_instance_uid": tags.sop_instance_uid,
        "version": version,
        "object_key": key,
        "sop_class_uid": tags.sop_class_uid,
        "transfer_syntax_uid": tags.transfer_syntax_uid,
        "size_bytes": staged.size,
        "sha256": digest,
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


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:300]
