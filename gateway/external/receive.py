"""Results from a vendor: a C-STORE from a ``kind: device`` source comes here instead of
study assembly.

An object is taken only when everything about it checks out, else refused with a status
and one log line (the calling AE and the reason, nothing of the patient): the calling AE is
an external device's ``calling_ae``; the SOP class is SR, SC, SEG, GSPS or KOS; it parses;
its pseudonymised Study Instance UID is a study we sent to that device; its Patient ID is
the pseudonym we sent; every instance it references is one we sent, all of one job. Then
it is re-identified — every UID we gave back to what it stands for, the patient and study
attributes from the original study — stored as a result of that job, its TID 1500 findings
recorded as the job's findings, and delivered through the outbox like our own results
(unless the job is shadow). A result after the job's deadline is kept and linked, marked
``late``, and not delivered.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from pydicom import DataElement, Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from sqlalchemy import delete, exists, select

from gateway.delivery.destinations import ResultKind
from gateway.delivery.outbox import enqueue
from gateway.devices.modes import DeviceMode
from gateway.dimse_status import Status
from gateway.errors import DatabaseError, StorageError
from gateway.external import pseudonyms
from gateway.external.pseudonyms import Link, Sent
from gateway.external.tid1500 import read_findings
from gateway.index.instances import current_instance_keys
from gateway.index.stored_headers import read_header
from gateway.index.study_state import record_event
from gateway.index.tables import FindingRow, JobRow, ResultRow, SourceRow, StudyRow, utcnow
from gateway.inference.findings import Finding
from gateway.jobs.states import JobState, set_job_state
from gateway.results.build import ReportContext, build_semd_of_findings
from gateway.results.encoding import part10
from gateway.uids import is_valid_uid
from models.manifest import DeviceManifest

log = logging.getLogger(__name__)

_SR = ResultKind.SR
RESULT_CLASSES: dict[str, ResultKind] = {
    "1.2.840.10008.5.1.4.1.1.88.11": _SR,  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22": _SR,  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33": _SR,  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34": _SR,  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.59": _SR,  # Key Object Selection: delivered as SR is
    "1.2.840.10008.5.1.4.1.1.7": ResultKind.SC,
    "1.2.840.10008.5.1.4.1.1.7.1": ResultKind.SC,
    "1.2.840.10008.5.1.4.1.1.7.2": ResultKind.SC,
    "1.2.840.10008.5.1.4.1.1.7.3": ResultKind.SC,
    "1.2.840.10008.5.1.4.1.1.7.4": ResultKind.SC,
    "1.2.840.10008.5.1.4.1.1.66.4": ResultKind.SEG,
    "1.2.840.10008.5.1.4.1.1.11.1": ResultKind.GSPS,
}
_FINDINGS_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.88.22",
        "1.2.840.10008.5.1.4.1.1.88.33",
        "1.2.840.10008.5.1.4.1.1.88.34",
    }
)
# Restored from the original study; what the original lacks is removed from the result.
PATIENT_AND_STUDY = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDsSequence",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
    "StudyDescription",
)
_DEIDENTIFIED = (
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
)


_WAITING = (JobState.QUEUED.value, JobState.RUNNING.value, JobState.SENT.value)


class Refused(Exception):
    """The object is not taken; ``status`` is the answer, the message the reason."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Received:
    status: Status
    reason: str = ""


@dataclass(frozen=True)
class _Match:
    link: Link
    job_id: int
    sent: dict[str, Sent]


class ResultReceiver:
    """The external receive path; the SCP calls :meth:`receive_file` for every C-STORE of a
    ``kind: device`` source."""

    def __init__(self, context: ReportContext) -> None:
        self.context = context
        self.db, self.store, self.registry = context.db, context.store, context.registry
        self.destinations = context.destinations

    def receive_file(self, path: Path, calling_ae: str, sop_class: str, sop_uid: str) -> Received:
        try:
            return self._receive(path, calling_ae, sop_class, sop_uid)
        except Refused as refused:
            log.warning(
                "vendor result refused",
                extra={
                    "calling_ae": calling_ae,
                    "status": f"0x{refused.status:04X}",
                    "reason": str(refused),
                },
            )
            return Received(refused.status, str(refused))
        except (DatabaseError, StorageError) as exc:
            log.warning("vendor result not stored", extra={"error": exc.__class__.__name__})
            return Received(Status.OUT_OF_RESOURCES, "the gateway cannot store it now")
        except RecursionError:  # sequences nested past any sense
            log.warning("vendor result refused", extra={"calling_ae": calling_ae})
            return Received(Status.CANNOT_UNDERSTAND, "nested too deep")

    def _receive(self, path: Path, calling_ae: str, sop_class: str, sop_uid: str) -> Received:
        manifests = self._devices_of(calling_ae)
        kind = RESULT_CLASSES.get(sop_class)
        if kind is None:
            raise Refused(Status.SOP_CLASS_NOT_SUPPORTED, "not a result's SOP class")
        dataset = _parse(path, sop_class, sop_uid)
        match = self._match(dataset, manifests)
        manifest = next(m for m in manifests if m.id == match.link.device_id)
        original = self._original(match.job_id)
        _reidentify(dataset, match, original)
        findings = read_findings(dataset, manifest) if sop_class in _FINDINGS_CLASSES else []
        data = part10(dataset)
        key = f"results/{match.link.study_uid}/job-{match.job_id}/external-{sop_uid}.dcm"
        self.store.put(key, data)
        late = self._record(match.job_id, kind, key, data, dataset, findings)
        if findings and not late:
            self._semd(match.job_id)
        log.info(
            "vendor result stored",
            extra={
                "job_id": match.job_id,
                "kind": kind.value,
                "late": late,
                "findings": len(findings),
            },
        )
        return Received(Status.SUCCESS)

    def _semd(self, job_id: int) -> None:
        """The SEMD from the vendor's findings, as for our own devices' results. Its failure
        does not refuse the vendor's object, which is stored already."""
        try:
            build_semd_of_findings(self.context, job_id)
        except (DatabaseError, StorageError):
            raise
        except Exception:
            log.exception("SEMD of a vendor's findings not built", extra={"job_id": job_id})

    def _devices_of(self, calling_ae: str) -> list[DeviceManifest]:
        manifests = [
            d.manifest
            for d in self.registry.devices()
            if d.manifest.is_external and d.manifest.service.calling_ae == calling_ae
        ]
        if not manifests:
            raise Refused(Status.CANNOT_UNDERSTAND, "the calling AE is no external device's")
        return manifests

    def _match(self, dataset: Dataset, manifests: list[DeviceManifest]) -> _Match:
        with self.db.session() as session:
            link = pseudonyms.link_by_pseudonym(
                session, str(dataset.get("StudyInstanceUID", "")), [m.id for m in manifests]
            )
            if link is None:
                raise Refused(Status.CANNOT_UNDERSTAND, "unsolicited: no study sent to this device")
            sent = pseudonyms.sent_uids(session, link)
        # deidentify: false sends the patient's own UIDs and attributes (its pseudonyms are
        # the identity): the vendor's copy of the other IDs is then the patient's, not news.
        identified = link.pseudo_study_uid == link.study_uid
        if str(dataset.get("PatientID", "")) != link.pseudo_patient_id or (
            "OtherPatientIDsSequence" in dataset and not identified
        ):
            raise Refused(Status.CANNOT_UNDERSTAND, "names a patient that was not sent")
        studies, instances = _references(dataset)
        if studies - {link.pseudo_study_uid}:
            raise Refused(Status.CANNOT_UNDERSTAND, "references a study that was not sent")
        unknown = [uid for uid in instances if sent.get(uid, Sent("", "", None)).kind != "instance"]
        if unknown:
            raise Refused(Status.CANNOT_UNDERSTAND, f"references {len(unknown)} instances not sent")
        jobs = {sent[uid].job_id for uid in instances}
        if not instances:  # nothing referenced: the study's latest job for this device
            jobs = {max((s.job_id for s in sent.values() if s.job_id is not None), default=None)}
        job_id = jobs.pop() if len(jobs) == 1 else None
        if job_id is None:
            raise Refused(Status.CANNOT_UNDERSTAND, "not the instances of one analysis")
        return _Match(link, job_id, sent)

    def _original(self, job_id: int) -> Dataset:
        """The header of one of the job's original instances: the patient and the study."""
        with self.db.session() as session:
            job = session.get(JobRow, job_id)
            assert job is not None
            keys = current_instance_keys(session, job.series_uids or [job.series_uid])
        if not keys:
            raise Refused(Status.CANNOT_UNDERSTAND, "the analysed series is gone")
        return read_header(self.store, keys[0])

    def _record(
        self,
        job_id: int,
        kind: ResultKind,
        key: str,
        data: bytes,
        dataset: Dataset,
        findings: list[Finding],
    ) -> bool:
        """Record the result (once per SOP Instance); returns whether it came late."""
        now = utcnow()
        with self.db.session() as session:
            job = session.get(JobRow, job_id, with_for_update=True)
            assert job is not None
            sop_uid = str(dataset.SOPInstanceUID)
            if session.scalar(
                select(
                    exists().where(
                        ResultRow.job_id == job_id, ResultRow.sop_instance_uid == sop_uid
                    )
                )
            ):
                return False  # the vendor sent it again: one copy
            late = job.state == JobState.FAILED.value
            # Queued too: a send whose association broke after the vendor had everything
            # is queued again, and the vendor's answer makes the resend unnecessary.
            if job.state in _WAITING:
                set_job_state(session, job, JobState.INFERRED, {"external": True})
            if findings and not late:  # the vendor's latest SR says what it found
                session.execute(delete(FindingRow).where(FindingRow.job_id == job_id))
                session.add_all(f.to_row(job_id) for f in findings)
            row = ResultRow(
                job_id=job_id,
                kind=kind.value,
                state="stored",
                object_key=key,
                sop_instance_uid=sop_uid,
                series_instance_uid=str(dataset.SeriesInstanceUID),
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
                meta={"external": True, "late": late, "sop_class": str(dataset.SOPClassUID)},
                created_at=now,
            )
            session.add(row)
            session.flush()
            if not late and job.mode != DeviceMode.SHADOW:
                source = session.scalar(
                    select(SourceRow.name)
                    .join(StudyRow, StudyRow.source_id == SourceRow.id)
                    .where(StudyRow.id == job.study_id)
                )
                enqueue(session, row, self.destinations.for_result(source or "", kind))
            record_event(
                session,
                job.study_id,
                "results",
                now,
                detail={
                    "job": job_id,
                    "stored": 1,
                    "external": True,
                    "late": late,
                    "kind": kind.value,
                },
                note="late: after the device's deadline" if late else None,
            )
        return late


def _parse(path: Path, sop_class: str, sop_uid: str) -> Dataset:
    try:
        dataset = dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise Refused(
            Status.CANNOT_UNDERSTAND, f"does not parse: {exc.__class__.__name__}"
        ) from exc
    if (
        str(dataset.get("SOPClassUID", "")) != sop_class
        or str(dataset.get("SOPInstanceUID", "")) != sop_uid
    ):
        raise Refused(Status.DATASET_DOES_NOT_MATCH_SOP_CLASS, "dataset does not match the request")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        if keyword not in dataset:
            raise Refused(Status.MISSING_ATTRIBUTE, f"no {keyword}")
    # The SOP Instance UID names the stored object: nothing but a UID may get that far.
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not is_valid_uid(str(dataset.get(keyword, ""))):
            raise Refused(Status.INVALID_UID, f"{keyword} is not a valid UID")
    return dataset


def _references(dataset: Dataset) -> tuple[set[str], set[str]]:
    """Every Study and SOP Instance UID the object references, at any depth."""
    studies: set[str] = set()
    instances: set[str] = set()

    def visit(ds: Dataset, element: DataElement) -> None:
        if element.keyword == "ReferencedSOPInstanceUID":
            instances.update(_values(element))
        elif element.keyword == "StudyInstanceUID" and ds is not dataset:
            studies.update(_values(element))

    dataset.walk(visit)
    return studies, instances


def _values(element: DataElement) -> list[str]:
    value = element.value
    if value is None or value == "":
        return []
    return [str(v) for v in value] if isinstance(value, MultiValue) else [str(value)]


def _reidentify(dataset: Dataset, match: _Match, original: Dataset) -> None:
    """Every UID we gave the vendor back to its original; the patient and study as the
    original study has them; the de-identification marks gone (it is not de-identified)."""
    back = {pseudo: sent.original_uid for pseudo, sent in match.sent.items()}

    def visit(ds: Dataset, element: DataElement) -> None:
        if element.VR != "UI" or not element.value:
            return
        if isinstance(element.value, MultiValue):
            element.value = [back.get(str(v), str(v)) for v in element.value]
        else:
            element.value = back.get(str(element.value), str(element.value))

    dataset.walk(visit)
    meta = getattr(dataset, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.SpecificCharacterSet = "ISO_IR 192"  # the patient's name may be Cyrillic
    for keyword in PATIENT_AND_STUDY:
        if keyword in original:
            dataset[keyword] = original[keyword]
        elif keyword in dataset:
            del dataset[keyword]
    for keyword in _DEIDENTIFIED:
        if keyword in dataset:
            del dataset[keyword]
