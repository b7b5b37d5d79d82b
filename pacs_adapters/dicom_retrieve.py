"""A study-level retrieve SCU (Study Root): C-MOVE a study to an AE title, or C-GET it on
our own association.

C-MOVE: the archive opens an association to the destination (the gateway's SCP, which
ingests and acknowledges each instance after its commit) and answers the C-MOVE only when
every sub-operation has ended, so on success the instances are already held. C-GET: the
archive sends the instances back as C-STOREs on this association; each goes to ``receive``
(Part-10 bytes, or the path pynetdicom spooled it to when received in chunks) whose status
is the answer. Either way the counts of the final response are outside input, read as
whole numbers or not at all. Every failure — no connection, rejected, aborted, timed out, a
failure status — is one :class:`ScuError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association

from pacs_adapters.dicom_scu import Peer, ScuError
from pacs_adapters.requestor import associate

log = logging.getLogger(__name__)

STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
# Proposed for each storage class a C-GET may bring: the uncompressed ones and the usual
# lossless and lossy encapsulations (the gateway stores what it gets, never transcodes).
GET_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
)
_MAX_STORAGE_CLASSES = 127  # PS3.8: 128 presentation contexts, one is the C-GET's
_PENDING = (0xFF00, 0xFF01)
_SUCCESS, _WARNING = 0x0000, 0xB000
_OUT_OF_RESOURCES = 0xA700

# A C-GET's instance: its Part-10 bytes or the file pynetdicom spooled it to → DIMSE status.
Receiver = Callable[[bytes | Path], int]


@dataclass(frozen=True)
class Retrieved:
    """The final response's sub-operation counts (None where the archive gave none)."""

    completed: int | None
    failed: int | None
    warning: int | None


def move_study(peer: Peer, study_uid: str, destination: str, within_s: float) -> Retrieved:
    """C-MOVE ``study_uid`` to ``destination``; ``within_s`` bounds the whole retrieve."""
    ae = _ae(peer, within_s)
    ae.add_requested_context(STUDY_ROOT_MOVE)
    assoc = _associate(ae, peer, "C-MOVE")
    try:
        responses = assoc.send_c_move(_identifier(study_uid), destination, STUDY_ROOT_MOVE)
        return _final(assoc, responses, "C-MOVE", time.monotonic() + within_s)
    finally:
        if assoc.is_established:
            assoc.release()


def get_study(
    peer: Peer,
    study_uid: str,
    storage_classes: Sequence[str],
    receive: Receiver,
    within_s: float,
) -> Retrieved:
    """C-GET ``study_uid``: each instance the archive sends is handed to ``receive``."""
    classes = list(dict.fromkeys(storage_classes))[:_MAX_STORAGE_CLASSES]
    ae = _ae(peer, within_s)
    ae.add_requested_context(STUDY_ROOT_GET)
    for sop_class in classes:
        ae.add_requested_context(sop_class, list(GET_TRANSFER_SYNTAXES))
    roles = [build_role(sop_class, scp_role=True) for sop_class in classes]
    handlers = [(evt.EVT_C_STORE, _store_handler(receive))]
    assoc = _associate(ae, peer, "C-GET", ext_neg=roles, evt_handlers=handlers)
    try:
        responses = assoc.send_c_get(_identifier(study_uid), STUDY_ROOT_GET)
        return _final(assoc, responses, "C-GET", time.monotonic() + within_s)
    finally:
        if assoc.is_established:
            assoc.release()


def _ae(peer: Peer, within_s: float) -> AE:
    ae = AE(ae_title=peer.calling_ae)
    ae.maximum_pdu_size = peer.max_pdu
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = peer.timeout_s
    # The archive may answer only once every sub-operation has ended.
    ae.dimse_timeout = within_s
    return ae


def _associate(ae: AE, peer: Peer, what: str, **negotiation: Any) -> Association:
    """``negotiation``: ``ext_neg`` (C-GET's SCP roles) and ``evt_handlers``."""
    tls_args = (peer.tls, peer.host) if peer.tls is not None else None
    assoc = associate(
        ae,
        peer.host,
        peer.port,
        ae_title=peer.called_ae,
        max_pdu=peer.max_pdu,
        tls_args=tls_args,
        **negotiation,
    )
    if not assoc.is_established:
        raise ScuError(f"{what}: cannot associate with {peer.called_ae}@{peer.host}:{peer.port}")
    return assoc


def _identifier(study_uid: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    return identifier


def _final(
    assoc: Association,
    responses: Iterable[tuple[Dataset | None, Dataset | None]],
    what: str,
    deadline: float,
) -> Retrieved:
    for status, _ in _until(responses, deadline, assoc, what):
        if status is None or "Status" not in status:
            raise ScuError(f"{what}: no answer (timed out or aborted)")
        code = int(status.Status)
        if code in _PENDING:
            continue
        counts = Retrieved(
            _count(status, "NumberOfCompletedSuboperations"),
            _count(status, "NumberOfFailedSuboperations"),
            _count(status, "NumberOfWarningSuboperations"),
        )
        if code in (_SUCCESS, _WARNING):  # a warning: some sub-operations failed
            return counts
        raise ScuError(f"{what} failed with status 0x{code:04X} ({counts})")
    raise ScuError(f"{what}: the answer ended without a final status")


def _until(
    responses: Iterable[tuple[Dataset | None, Dataset | None]],
    deadline: float,
    assoc: Association,
    what: str,
) -> Iterator[tuple[Dataset | None, Dataset | None]]:
    for response in responses:
        yield response
        if time.monotonic() > deadline:
            assoc.abort()
            raise ScuError(f"{what}: not finished within its time")


def _count(status: Dataset, keyword: str) -> int | None:
    value = status.get(keyword)
    try:
        count = int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return count if count is not None and 0 <= count < 2**31 else None


def _store_handler(receive: Receiver) -> Callable[..., int]:
    def handle(event: evt.Event) -> int:
        try:
            path = event.dataset_path
        except AttributeError:  # received in memory (the default outside the SCP's process)
            return receive(event.encoded_dataset(include_meta=True))
        return receive(Path(path))

    def guarded(event: evt.Event) -> int:
        try:
            return handle(event)
        except Exception as exc:  # never into pynetdicom: answer the archive instead
            log.warning("C-GET: an instance not stored", extra={"error": str(exc)[:200]})
            return _OUT_OF_RESOURCES

    return guarded
