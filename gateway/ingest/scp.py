"""The DICOM SCP: C-ECHO and C-STORE from known senders, every transfer syntax, stored as
received.

Handlers get their dependencies bound explicitly (no globals) and never raise: every
outcome is a named status from :class:`gateway.dimse_status.Status`, with a reason in the
response's Error Comment so the sender's log says what went wrong.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from dataclasses import dataclass
from typing import Any, cast

from pydicom import Dataset
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from gateway.dimse_status import Status
from gateway.index.object_store import ObjectStore
from gateway.ingest.receive import Ingest, Sender
from gateway.ingest.sources import SourceDirectory
from gateway.settings import Settings

log = logging.getLogger(__name__)

STORAGE_SOP_CLASSES: dict[str, str] = {
    "CT Image Storage": "1.2.840.10008.5.1.4.1.1.2",
    "Enhanced CT Image Storage": "1.2.840.10008.5.1.4.1.1.2.1",
    "Legacy Converted Enhanced CT Image Storage": "1.2.840.10008.5.1.4.1.1.2.2",
    "Computed Radiography Image Storage": "1.2.840.10008.5.1.4.1.1.1",
    "Digital X-Ray Image Storage - For Presentation": "1.2.840.10008.5.1.4.1.1.1.1",
    "Digital X-Ray Image Storage - For Processing": "1.2.840.10008.5.1.4.1.1.1.1.1",
    "Digital Mammography X-Ray Image Storage - For Presentation": "1.2.840.10008.5.1.4.1.1.1.2",
    "Digital Mammography X-Ray Image Storage - For Processing": "1.2.840.10008.5.1.4.1.1.1.2.1",
    "Breast Tomosynthesis Image Storage": "1.2.840.10008.5.1.4.1.1.13.1.3",
    "Secondary Capture Image Storage": "1.2.840.10008.5.1.4.1.1.7",
    "Multi-frame Grayscale Byte Secondary Capture Image Storage": "1.2.840.10008.5.1.4.1.1.7.2",
    "Multi-frame Grayscale Word Secondary Capture Image Storage": "1.2.840.10008.5.1.4.1.1.7.3",
    # Fluorography sometimes arrives as RF from fluoroscopic units.
    "X-Ray Radiofluoroscopic Image Storage": "1.2.840.10008.5.1.4.1.1.12.2",
    # Archives push whole studies: reports and dose reports come along; routing skips them.
    "Basic Text SR Storage": "1.2.840.10008.5.1.4.1.1.88.11",
    "Enhanced SR Storage": "1.2.840.10008.5.1.4.1.1.88.22",
    "Comprehensive SR Storage": "1.2.840.10008.5.1.4.1.1.88.33",
    "Comprehensive 3D SR Storage": "1.2.840.10008.5.1.4.1.1.88.34",
    "X-Ray Radiation Dose SR Storage": "1.2.840.10008.5.1.4.1.1.88.67",
    "Key Object Selection Document Storage": "1.2.840.10008.5.1.4.1.1.88.59",
}

# A-ASSOCIATE-RJ (PS3.8 §9.3.4): result, source, reason.
VERIFICATION = "1.2.840.10008.1.1"

_REJECT_PERMANENT, _REJECT_TRANSIENT = 0x01, 0x02
_BY_SERVICE_USER, _BY_PRESENTATION_PROVIDER = 0x01, 0x03
_CALLING_AE_NOT_RECOGNISED, _CALLED_AE_NOT_RECOGNISED = 0x03, 0x07
_LOCAL_LIMIT_EXCEEDED = 0x02


@dataclass(frozen=True)
class Gatekeeper:
    """Decides at association time who may send."""

    called_ae: str
    directory: SourceDirectory
    store: ObjectStore

    def refusal(
        self, calling_ae: str, called_ae: str, address: str
    ) -> tuple[str, tuple[int, int, int]] | None:
        """None to accept; else the reason and the A-ASSOCIATE-RJ (result, source, reason)."""
        if called_ae != self.called_ae and not self.directory.open_mode:
            return (
                f"called AE {called_ae!r} is not ours ({self.called_ae!r})",
                (_REJECT_PERMANENT, _BY_SERVICE_USER, _CALLED_AE_NOT_RECOGNISED),
            )
        if self.directory.match(calling_ae, address) is None:
            return (
                f"calling AE {calling_ae!r} from {address} is not a configured source",
                (_REJECT_PERMANENT, _BY_SERVICE_USER, _CALLING_AE_NOT_RECOGNISED),
            )
        if not self.store.has_room():
            return (
                "object store below its free-space floor",
                (_REJECT_TRANSIENT, _BY_PRESENTATION_PROVIDER, _LOCAL_LIMIT_EXCEEDED),
            )
        return None


def _on_requested(event: Event, gatekeeper: Gatekeeper) -> None:
    assoc = event.assoc
    request = assoc.requestor.primitive
    if request is None:
        return
    calling = _ae(request.calling_ae_title)
    called = _ae(request.called_ae_title)
    address = str(assoc.requestor.address)
    refusal = gatekeeper.refusal(calling, called, address)
    if refusal is None:
        log.info("association accepted", extra={"calling_ae": calling, "peer": address})
        return
    reason, (result, source, diagnostic) = refusal
    log.warning(
        "association rejected",
        extra={"calling_ae": calling, "called_ae": called, "peer": address, "reason": reason},
    )
    assoc.acse.send_reject(result, source, diagnostic)
    # As pynetdicom does for its own rejections: stopping the DUL flushes the A-ASSOCIATE-RJ
    # before the socket closes (otherwise the peer sees an abort, not the reason).
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


def _on_store(
    event: Event, ingest: Ingest, directory: SourceDirectory, source_ids: dict[str, int]
) -> Dataset:
    assoc = event.assoc
    calling, address = _ae(assoc.requestor.ae_title), str(assoc.requestor.address)
    try:
        source = directory.match(calling, address)
        if source is None:  # the association was accepted, so configuration changed since
            return _response(Status.OUT_OF_RESOURCES, "source no longer configured")
        sender = Sender(
            source=source, source_id=source_ids[source.name], calling_ae=calling, address=address
        )
        request = cast(C_STORE, event.request)
        outcome = ingest.receive(
            event.encoded_dataset(include_meta=True),
            sender,
            expected_sop_class=str(request.AffectedSOPClassUID),
            expected_sop_instance=str(request.AffectedSOPInstanceUID),
        )
        return _response(outcome.status, outcome.reason)
    except Exception:
        # Not the data's fault as far as we know: answer "try again later", keep serving.
        log.exception("C-STORE handler failed", extra={"calling_ae": calling})
        return _response(Status.OUT_OF_RESOURCES, "internal error")


def _response(status: Status, reason: str) -> Dataset:
    response = Dataset()
    response.Status = int(status)
    if not status.is_success and reason:
        response.ErrorComment = reason.encode("ascii", "replace").decode()[:64]
    return response


def _ae(value: Any) -> str:
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return text.strip()


class _NoDelayServer(ThreadedAssociationServer):
    """Sets TCP_NODELAY on every accepted socket: without it a C-STORE response waits on
    Nagle's algorithm and loopback throughput falls to ~20 instances/s."""

    reuse_port = False

    def server_bind(self) -> None:
        if self.reuse_port:
            cast(socket.socket, self.socket).setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def shutdown(self) -> None:
        # pynetdicom's own shutdown expects servers started through AE.start_server.
        socketserver.BaseServer.shutdown(self)
        self.server_close()

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


class _SharedPortServer(_NoDelayServer):
    reuse_port = True


class DicomServer:
    """A running SCP bound to ``settings.dicom_host:dicom_port``."""

    def __init__(
        self,
        settings: Settings,
        ingest: Ingest,
        directory: SourceDirectory,
        source_ids: dict[str, int],
        store: ObjectStore,
        *,
        shared_port: bool = False,
    ) -> None:
        self.settings = settings
        self.ae = _build_ae(settings)
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, _on_requested, [Gatekeeper(settings.ae_title, directory, store)]),
            (evt.EVT_C_STORE, _on_store, [ingest, directory, source_ids]),
        ]
        server_class = _SharedPortServer if shared_port else _NoDelayServer
        self.server: ThreadedAssociationServer = self.ae.make_server(
            (settings.dicom_host, settings.dicom_port),
            ae_title=settings.ae_title,
            evt_handlers=handlers,
            server_class=server_class,
        )
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="dicom-scp", daemon=True
        )
        self._thread.start()
        log.info(
            "DICOM SCP listening", extra={"ae_title": self.settings.ae_title, "port": self.port}
        )

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.shutdown()
        if self._thread:
            self._thread.join(timeout=10)


def _build_ae(settings: Settings) -> AE:
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu_bytes
    ae.maximum_associations = settings.max_associations
    ae.network_timeout = settings.network_timeout_s
    ae.acse_timeout = settings.network_timeout_s
    ae.dimse_timeout = settings.network_timeout_s
    ae.require_called_aet = False  # the gatekeeper checks it and logs why
    ae.add_supported_context(VERIFICATION)
    for sop_class in storage_sop_classes(settings):
        ae.add_supported_context(sop_class, AllTransferSyntaxes)
    return ae


def storage_sop_classes(settings: Settings) -> list[str]:
    return list(dict.fromkeys([*STORAGE_SOP_CLASSES.values(), *settings.extra_storage_sop_classes]))
