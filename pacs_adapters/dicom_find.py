"""A study-level C-FIND SCU (Study Root): how many instances an archive holds for a study,
and which studies it holds for a patient (the candidates for priors).

The archive's answer is outside input: a count that is not a whole number in a sane range,
or two matches that disagree, is an error, never a guess; a patient's study without a valid
Study Instance UID is skipped, its other values bounded. Every failure — no connection,
rejected, aborted, timed out, a failure status — is one :class:`ScuError`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, _config
from pynetdicom.association import Association

from pacs_adapters.dicom_scu import Peer, ScuError
from pacs_adapters.requestor import associate

log = logging.getLogger(__name__)

# pynetdicom logs every query and answer identifier at INFO, and ours hold Patient ID and
# Patient's Name: never logged, whatever a logger's level (process-wide, as pynetdicom's
# configuration is).
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Model - FIND

_PENDING = (0xFF00, 0xFF01)
_SUCCESS = 0x0000
# More than any study holds (a large CT study has some 10^4); bounds what we trust.
MAX_STUDY_INSTANCES = 10_000_000
_MAX_MATCHES = 16  # a unique key matches one study; more answers are not read
MAX_PATIENT_STUDIES = 500  # a patient's studies read from one answer; more is an error
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DATE = re.compile(r"^[0-9]{8}$")


@dataclass(frozen=True)
class ArchiveStudy:
    """One of a patient's studies as the archive describes it (bounded, checked)."""

    study_uid: str
    study_date: str | None
    modalities: tuple[str, ...]
    patient_name: str | None
    study_description: str | None


def study_instance_count(peer: Peer, study_uid: str) -> int | None:
    """NumberOfStudyRelatedInstances of ``study_uid`` at ``peer``; None when the archive
    has no such study."""
    with associated(peer, STUDY_ROOT_FIND, "C-FIND") as assoc:
        counts = _matches(assoc, _query(study_uid))
    if len(set(counts)) > 1:
        raise ScuError(f"C-FIND: the archive gave {len(counts)} different counts for one study")
    return counts[0] if counts else None


def patient_studies(
    peer: Peer, patient_id: str, date_from: str, date_to: str
) -> list[ArchiveStudy]:
    """The studies of ``patient_id`` dated ``date_from``–``date_to`` (YYYYMMDD, inclusive)."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = patient_id
    query.StudyDate = f"{date_from}-{date_to}"
    for keyword in ("StudyInstanceUID", "ModalitiesInStudy", "PatientName", "StudyDescription"):
        setattr(query, keyword, "")
    found: list[ArchiveStudy] = []
    with associated(peer, STUDY_ROOT_FIND, "C-FIND") as assoc:
        for identifier in _identifiers(assoc, query, MAX_PATIENT_STUDIES):
            study = None if identifier is None else _archive_study(identifier)
            if study is not None:
                found.append(study)
    return found


@contextmanager
def associated(peer: Peer, context: str, what: str) -> Iterator[Association]:
    """An association with ``peer`` proposing ``context``, released (if still up) after."""
    ae = AE(ae_title=peer.calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = peer.timeout_s
    ae.connection_timeout = peer.timeout_s
    ae.add_requested_context(context)
    tls_args = (peer.tls, peer.host) if peer.tls is not None else None
    assoc = associate(
        ae, peer.host, peer.port, ae_title=peer.called_ae, max_pdu=peer.max_pdu, tls_args=tls_args
    )
    if not assoc.is_established:
        raise ScuError(f"{what}: cannot associate with {peer.called_ae}@{peer.host}:{peer.port}")
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _identifiers(assoc: Association, query: Dataset, limit: int) -> list[Dataset | None]:
    """The identifiers of the pending answers (None where one came without), up to
    ``limit``; the final status must be success."""
    found: list[Dataset | None] = []
    for status, identifier in assoc.send_c_find(query, STUDY_ROOT_FIND):
        if status is None or "Status" not in status:
            raise ScuError("C-FIND: no answer (timed out or aborted)")
        code = int(status.Status)
        if code == _SUCCESS:
            return found
        if code not in _PENDING:
            raise ScuError(f"C-FIND failed with status 0x{code:04X}")
        if len(found) >= limit:
            raise ScuError(f"C-FIND: more than {limit} matches")
        found.append(identifier)
    raise ScuError("C-FIND: the answer ended without a final status")


def _archive_study(identifier: Dataset) -> ArchiveStudy | None:
    try:
        # Read whole: an over-long UID is skipped, never cut into another valid one.
        uid = _bounded(identifier, "StudyInstanceUID", 1024)
        if uid is None or len(uid) > 64 or not _UID.fullmatch(uid):
            return None
        date = _bounded(identifier, "StudyDate", 8)
        modalities = identifier.get("ModalitiesInStudy") or ()
        if not isinstance(modalities, MultiValue | list | tuple):
            modalities = str(modalities).split("\\")
        return ArchiveStudy(
            study_uid=uid,
            study_date=date if date and _DATE.fullmatch(date) else None,
            modalities=tuple(str(m).strip()[:16] for m in list(modalities)[:32] if str(m).strip()),
            patient_name=_bounded(identifier, "PatientName", 200),
            study_description=_bounded(identifier, "StudyDescription", 200),
        )
    except Exception as exc:  # a damaged element can raise nearly anything from pydicom
        # The class only: a message may quote a value, and values here are patient data.
        log.warning("C-FIND: an unreadable match skipped", extra={"error": type(exc).__name__})
        return None


def _bounded(identifier: Dataset, keyword: str, limit: int) -> str | None:
    value = identifier.get(keyword)
    text = "" if value is None else str(value).strip().strip("\x00").strip()
    return text[:limit] or None


def _query(study_uid: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    query.NumberOfStudyRelatedInstances = None
    return query


def _matches(assoc: Association, query: Dataset) -> list[int]:
    return [_count(identifier) for identifier in _identifiers(assoc, query, _MAX_MATCHES)]


def _count(identifier: Dataset | None) -> int:
    value = None if identifier is None else identifier.get("NumberOfStudyRelatedInstances")
    try:
        count = int(value) if value not in (None, "") else -1
    except (TypeError, ValueError) as exc:
        raise ScuError("C-FIND: NumberOfStudyRelatedInstances is not a number") from exc
    if not 1 <= count <= MAX_STUDY_INSTANCES:
        raise ScuError("C-FIND: no usable NumberOfStudyRelatedInstances in the match")
    return count
