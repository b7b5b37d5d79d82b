"""A study-level C-FIND SCU (Study Root): how many instances an archive holds for a study.

The archive's answer is outside input: a count that is not a whole number in a sane range,
or two matches that disagree, is an error, never a guess. Every failure — no connection,
rejected, aborted, timed out, a failure status — is one :class:`ScuError`.
"""

from __future__ import annotations

import logging

from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.association import Association

from pacs_adapters.dicom_scu import Peer, ScuError

log = logging.getLogger(__name__)

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Model - FIND

_PENDING = (0xFF00, 0xFF01)
_SUCCESS = 0x0000
# More than any study holds (a large CT study has some 10^4); bounds what we trust.
MAX_STUDY_INSTANCES = 10_000_000
_MAX_MATCHES = 16  # a unique key matches one study; more answers are not read


def study_instance_count(peer: Peer, study_uid: str) -> int | None:
    """NumberOfStudyRelatedInstances of ``study_uid`` at ``peer``; None when the archive
    has no such study."""
    ae = AE(ae_title=peer.calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = peer.timeout_s
    ae.connection_timeout = peer.timeout_s
    ae.add_requested_context(STUDY_ROOT_FIND)
    tls_args = (peer.tls, peer.host) if peer.tls is not None else None
    assoc = ae.associate(
        peer.host, peer.port, ae_title=peer.called_ae, max_pdu=peer.max_pdu, tls_args=tls_args
    )
    if not assoc.is_established:
        raise ScuError(f"C-FIND: cannot associate with {peer.called_ae}@{peer.host}:{peer.port}")
    try:
        counts = _matches(assoc, _query(study_uid))
    finally:
        if assoc.is_established:
            assoc.release()
    if len(set(counts)) > 1:
        raise ScuError(f"C-FIND: the archive gave {len(counts)} different counts for one study")
    return counts[0] if counts else None


def _query(study_uid: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    query.NumberOfStudyRelatedInstances = None
    return query


def _matches(assoc: Association, query: Dataset) -> list[int]:
    counts: list[int] = []
    for status, identifier in assoc.send_c_find(query, STUDY_ROOT_FIND):
        if status is None or "Status" not in status:
            raise ScuError("C-FIND: no answer (timed out or aborted)")
        code = int(status.Status)
        if code == _SUCCESS:
            return counts
        if code not in _PENDING:
            raise ScuError(f"C-FIND failed with status 0x{code:04X}")
        if len(counts) >= _MAX_MATCHES:
            raise ScuError(f"C-FIND: more than {_MAX_MATCHES} matches for one study")
        counts.append(_count(identifier))
    raise ScuError("C-FIND: the answer ended without a final status")


def _count(identifier: Dataset | None) -> int:
    value = None if identifier is None else identifier.get("NumberOfStudyRelatedInstances")
    try:
        count = int(value) if value not in (None, "") else -1
    except (TypeError, ValueError) as exc:
        raise ScuError("C-FIND: NumberOfStudyRelatedInstances is not a number") from exc
    if not 1 <= count <= MAX_STUDY_INSTANCES:
        raise ScuError("C-FIND: no usable NumberOfStudyRelatedInstances in the match")
    return count
