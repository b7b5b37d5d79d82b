"""Durable ingest: one received instance → object store + index, or a failure status.

Success is reported only after the object is written (fsynced / acknowledged by S3) and the
index row is committed. The object write happens inside the index transaction, after the
instance row is flushed, so two copies of the same SOP Instance racing each other are ordered
by the database's unique constraint and can never leave a row pointing at the other's bytes.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO

from pydantic import BaseModel, ConfigDict
from pydicom import Dataset, dcmread
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from gateway.database import Database
from gateway.dicom_tags import InstanceTags, StudyTags, read_tags
from gateway.dimse_status import Status
from gateway.errors import InvalidInstance, StorageError
from gateway.object_store import ObjectStore, instance_key
from gateway.sources import Source
from gateway.study_state import OPEN_STATES, StudyState, record_event, set_state
from gateway.tables import InstanceRow, SeriesRow, StudyRow, utcnow

log = logging.getLogger(__name__)


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
        try:
            dataset = _parse(encoded)
            tags = read_tags(dataset)
            _check_matches_request(tags, expected_sop_class, expected_sop_instance)
        except InvalidInstance as exc:
            return self._refuse(exc.status, exc.reason, sender)
        if not self.store.has_room():
            return self._refuse(
                Status.OUT_OF_RESOURCES,
                "object store below free-space floor",
                sender,
                tags.study.study_uid,
            )
        digest = hashlib.sha256(encoded).hexdigest()
        try:
            return self._store_and_index(encoded, digest, tags, sender)
        except InvalidInstance as exc:
            return self._refuse(exc.status, exc.reason, sender, tags.study.study_uid)
        except StorageError as exc:
            return self._refuse(
                Status.OUT_OF_RESOURCES, f"object store: {exc}", sender, tags.study.study_uid
            )
        except SQLAlchemyError as exc:
            return self._refuse(
                Status.OUT_OF_RESOURCES,
                f"database: {exc.__class__.__name__}: {_first_line(exc)}",
                sender,
                tags.study.study_uid,
            )

    def _store_and_index(
        self, encoded: bytes, digest: str, tags: InstanceTags, sender: Sender
    ) -> Outcome:
        for _attempt in range(3):
            try:
                return self._transaction(encoded, digest, tags, sender)
            except IntegrityError:
                # A concurrent association stored the same study, series or SOP version
                # first; the retry sees its row and takes the next step from there.
                continue
        raise StorageError("index kept conflicting with concurrent writers")

    def _transaction(
        self, encoded: bytes, digest: str, tags: InstanceTags, sender: Sender
    ) -> Outcome:
        now = utcnow()
        written_key: str | None = None
        try:
            with self.db.session() as session:
                existing = session.scalars(
                    select(InstanceRow).where(InstanceRow.sop_instance_uid == tags.sop_instance_uid)
                ).all()
                if any(row.sha256 == digest for row in existing):
                    return Outcome(
                        Status.SUCCESS,
                        "duplicate of a stored instance",
                        tags.study.study_uid,
                        duplicate=True,
                    )
                study = _study_for(session, tags.study, sender, now)
                series = _series_for(session, study, tags, now)
                version = max((row.version for row in existing), default=0) + 1
                key = instance_key(
                    tags.study.study_uid, tags.series_uid, tags.sop_instance_uid, version
                )
                session.add(_instance_row(series, tags, sender, key, version, encoded, digest, now))
                if version > 1:
                    record_event(
                        session,
                        study,
                        "instance_version",
                        now,
                        detail={
                            "sop_instance_uid": tags.sop_instance_uid,
                            "version": version,
                            "object_key": key,
                        },
                    )
                session.flush()
                self.store.put(key, encoded)
                written_key = key
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


def _parse(encoded: bytes) -> Dataset:
    try:
        buffer = BytesIO(encoded)
        dataset = dcmread(buffer, stop_before_pixels=True)
        dataset.get("StudyInstanceUID")  # pydicom parses lazily; make damage surface here
        _check_pixel_data_whole(encoded, buffer.tell(), dataset)
        return dataset
    except InvalidInstance:
        raise
    except Exception as exc:  # damaged input can raise nearly anything (zlib, struct, …)
        raise InvalidInstance(
            f"cannot parse dataset: {exc.__class__.__name__}: {_first_line(exc)}",
            Status.CANNOT_UNDERSTAND,
        ) from exc


def _check_pixel_data_whole(encoded: bytes, position: int, dataset: Dataset) -> None:
    """``stop_before_pixels`` leaves the reader at the Pixel Data element, unread: make sure
    its value arrived whole (a truncated file otherwise parses fine)."""
    meta = getattr(dataset, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if position >= len(encoded) or syntax == DeflatedExplicitVRLittleEndian:
        return
    order = ">" if syntax == ExplicitVRBigEndian else "<"
    header = 8 if syntax == ImplicitVRLittleEndian else 12
    (length,) = struct.unpack_from(order + "I", encoded, position + header - 4)
    if length == 0xFFFFFFFF:  # encapsulated: fragments end with a Sequence Delimitation Item
        delimiter = struct.pack(order + "HHI", 0xFFFE, 0xE0DD, 0)
        if encoded.find(delimiter, position + header) < 0:
            raise InvalidInstance(
                "truncated: encapsulated Pixel Data has no end", Status.CANNOT_UNDERSTAND
            )
    elif position + header + length > len(encoded):
        arrived = len(encoded) - position - header
        raise InvalidInstance(
            f"truncated: Pixel Data declares {length} bytes, {arrived} arrived",
            Status.CANNOT_UNDERSTAND,
        )


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


def _study_for(session: Session, study_tags: StudyTags, sender: Sender, now: datetime) -> StudyRow:
    study = session.scalars(
        select(StudyRow).where(StudyRow.study_uid == study_tags.study_uid)
    ).one_or_none()
    if study is None:
        study = StudyRow(
            study_uid=study_tags.study_uid,
            source_id=sender.source_id,
            region_code=sender.source.region,
            state=StudyState.RECEIVING.value,
            patient_id=study_tags.patient_id,
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
        session.add(study)
        session.flush()
        record_event(
            session,
            study,
            "state",
            now,
            state=StudyState.RECEIVING,
            detail={"source": sender.source.name, "calling_ae": sender.calling_ae},
        )
        return study
    if study.state not in OPEN_STATES:
        set_state(
            session,
            study,
            StudyState.SUPERSEDED,
            now,
            detail={"reason": "instances arrived after completion", "previous_state": study.state},
        )
    study.last_received_at = now
    return study


def _series_for(session: Session, study: StudyRow, tags: InstanceTags, now: datetime) -> SeriesRow:
    series = session.scalars(
        select(SeriesRow).where(SeriesRow.series_uid == tags.series_uid)
    ).one_or_none()
    if series is None:
        series = SeriesRow(
            study_id=study.id,
            series_uid=tags.series_uid,
            modality=tags.modality,
            body_part=tags.body_part,
            series_description=tags.series_description,
            series_number=tags.series_number,
            protocol_name=tags.protocol_name,
            first_received_at=now,
            last_received_at=now,
        )
        session.add(series)
        session.flush()
    elif series.study_id != study.id:
        raise InvalidInstance(
            "series already belongs to another study", Status.DATASET_DOES_NOT_MATCH_SOP_CLASS
        )
    series.last_received_at = now
    return series


def _instance_row(
    series: SeriesRow,
    tags: InstanceTags,
    sender: Sender,
    key: str,
    version: int,
    encoded: bytes,
    digest: str,
    now: datetime,
) -> InstanceRow:
    return InstanceRow(
        series_id=series.id,
        sop_instance_uid=tags.sop_instance_uid,
        version=version,
        object_key=key,
        sop_class_uid=tags.sop_class_uid,
        transfer_syntax_uid=tags.transfer_syntax_uid,
        size_bytes=len(encoded),
        sha256=digest,
        instance_number=tags.instance_number,
        image_type=tags.image_type,
        slice_thickness=tags.slice_thickness,
        image_position=tags.image_position,
        image_orientation=tags.image_orientation,
        rows=tags.rows,
        columns=tags.columns,
        number_of_frames=tags.number_of_frames,
        photometric_interpretation=tags.photometric_interpretation,
        view_position=tags.view_position,
        calling_ae=sender.calling_ae,
        peer_address=sender.address,
        received_at=now,
    )


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:300]
