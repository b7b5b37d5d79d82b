"""A DICOM Storage/Verification SCU: send files and folders as they are, check a peer.

Each file is proposed in its own transfer syntax and sent without decoding, so what arrives
is what was on disk. Used by ``aigw send`` / ``aigw echo`` and by result delivery
(:func:`store_instance`). A peer with a TLS context (:func:`pacs_adapters.tls.client_context`)
is reached over DICOM TLS.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE
from pynetdicom.association import Association

from pacs_adapters.requestor import associate

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts per association


class ScuError(Exception):
    """The peer could not be reached or refused the association."""


@dataclass(frozen=True)
class Peer:
    host: str
    port: int
    called_ae: str
    calling_ae: str = "AIGW_SCU"
    max_pdu: int = 131072
    timeout_s: float = 30.0
    tls: ssl.SSLContext | None = None  # None: plain TCP


@dataclass
class SendReport:
    sent: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # path → status and comment
    skipped: dict[str, str] = field(default_factory=dict)  # path → why it was not sent


@dataclass(frozen=True)
class _File:
    path: Path
    sop_class: str
    transfer_syntax: str


def echo(peer: Peer) -> int:
    """C-ECHO; returns the DIMSE status (0 is success)."""
    ae = _ae(peer)
    ae.add_requested_context(VERIFICATION)
    assoc = _associate(ae, peer)
    if not assoc.is_established:
        raise ScuError(_why_not_established(assoc, peer))
    try:
        response = assoc.send_c_echo()
        if not response or "Status" not in response:
            raise ScuError("no response to C-ECHO")
        return int(response.Status)
    finally:
        assoc.release()


def send(paths: Iterable[Path], peer: Peer) -> SendReport:
    """C-STORE every DICOM file under ``paths``; non-DICOM files are skipped and reported."""
    report = SendReport()
    files = []
    for path in _walk(paths):
        try:
            meta = read_file_meta_info(path)
            files.append(
                _File(path, str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
            )
        except (InvalidDicomError, OSError, AttributeError, KeyError) as exc:
            report.skipped[str(path)] = f"not a DICOM Part-10 file: {exc.__class__.__name__}"
    for batch in _batches(files):
        _send_batch(batch, peer, report)
    return report


def store_instance(data: bytes, peer: Peer) -> int:
    """C-STORE one Part-10 instance held in memory; returns the peer's status (success or
    warning). A refusal or a lost association raises :class:`ScuError`."""
    try:
        dataset = dcmread(io.BytesIO(data))
        sop_class = str(dataset.file_meta.MediaStorageSOPClassUID)
        syntax = str(dataset.file_meta.TransferSyntaxUID)
    except (InvalidDicomError, AttributeError, KeyError) as exc:
        raise ScuError(f"not a DICOM Part-10 instance: {exc}") from exc
    ae = _ae(peer)
    ae.add_requested_context(sop_class, [syntax])
    assoc = _associate(ae, peer)
    if not assoc.is_established:
        raise ScuError(_why_not_established(assoc, peer))
    _no_delay(assoc)
    try:
        response = assoc.send_c_store(dataset)
    finally:
        if assoc.is_established:
            assoc.release()
    status = int(response.Status) if response and "Status" in response else None
    if status == 0x0000 or (status is not None and status & 0xF000 == 0xB000):
        return status
    comment = str(response.get("ErrorComment", "")) if response else ""
    shown = f"0x{status:04X}" if status is not None else "no response"
    raise ScuError(f"C-STORE refused by {peer.called_ae}: {shown} {comment}".strip())


def _send_batch(files: list[_File], peer: Peer, report: SendReport) -> None:
    ae = _ae(peer)
    for sop_class, syntax in dict.fromkeys((f.sop_class, f.transfer_syntax) for f in files):
        ae.add_requested_context(sop_class, [syntax])
    assoc = _associate(ae, peer)
    if not assoc.is_established:
        raise ScuError(_why_not_established(assoc, peer))
    _no_delay(assoc)
    try:
        for item in files:
            response = assoc.send_c_store(item.path)
            status = int(response.Status) if response and "Status" in response else None
            if status == 0x0000 or (status is not None and status & 0xF000 == 0xB000):
                report.sent += 1
            else:
                comment = str(response.get("ErrorComment", "")) if response else ""
                shown = f"0x{status:04X}" if status is not None else "no response"
                report.failed[str(item.path)] = f"{shown} {comment}".strip()
            if not assoc.is_established:
                raise ScuError("association aborted by the peer")
    finally:
        if assoc.is_established:
            assoc.release()


def _no_delay(assoc: Any) -> None:
    # Without TCP_NODELAY each C-STORE waits ~40 ms on Nagle's algorithm.
    with contextlib.suppress(AttributeError, OSError):
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _batches(files: list[_File]) -> Iterator[list[_File]]:
    """Split so that no association needs more than MAX_CONTEXTS presentation contexts."""
    batch: list[_File] = []
    contexts: set[tuple[str, str]] = set()
    for item in files:
        key = (item.sop_class, item.transfer_syntax)
        if key not in contexts and len(contexts) == MAX_CONTEXTS:
            yield batch
            batch, contexts = [], set()
        contexts.add(key)
        batch.append(item)
    if batch:
        yield batch


def _walk(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def _ae(peer: Peer) -> AE:
    ae = AE(ae_title=peer.calling_ae)
    ae.maximum_pdu_size = peer.max_pdu
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = peer.timeout_s
    return ae


def _associate(ae: AE, peer: Peer) -> Association:
    tls_args = (peer.tls, peer.host) if peer.tls is not None else None
    return associate(
        ae, peer.host, peer.port, ae_title=peer.called_ae, max_pdu=peer.max_pdu, tls_args=tls_args
    )


def _why_not_established(assoc: object, peer: Peer) -> str:
    where = f"{peer.called_ae}@{peer.host}:{peer.port}" + (" over TLS" if peer.tls else "")
    if getattr(assoc, "is_rejected", False):
        return f"association rejected by {where}"
    if getattr(assoc, "is_aborted", False):
        return f"association aborted by {where}"
    return f"cannot connect to {where}"
