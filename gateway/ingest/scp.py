"""The DICOM SCP: C-ECHO and C-STORE from known senders, every transfer syntax, stored as
received, on a plain TCP port, a TLS port, or both.

Handlers get their dependencies bound explicitly (no globals) and never raise: every
outcome is a named status from :class:`gateway.dimse_status.Status`, with a reason in the
response's Error Comment so the sender's log says what went wrong. Connections reach
pynetdicom only once they are associations (:mod:`gateway.ingest.connections`), and every
association runs under :mod:`gateway.ingest.pdu_limits`.
"""

from __future__ import annotations

import logging
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from pydicom import Dataset
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from gateway.dimse_status import Status
from gateway.errors import ConfigError
from gateway.index.object_store import ObjectStore
from gateway.ingest.balance import Seat
from gateway.ingest.connections import Admission, AdmissionLimits, EdgeListener
from gateway.ingest.pdu_limits import GuardedSocket
from gateway.ingest.reactor import EdgeAssociation
from gateway.ingest.receive import Ingest, Sender
from gateway.ingest.refusals import (
    AssociationDecision,
    AuditHook,
    EdgeCounters,
    EdgeReport,
    Refusal,
    record_or_log,
)
from gateway.ingest.release import ReleaseCompletion
from gateway.ingest.sources import Source, SourceCheck, SourceDirectory, SourceKind
from gateway.ingest.spool import SpoolFile
from gateway.ingest.tls import TlsIdentity, listener_context
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

# What external devices return besides SR and SC (accepted only where a device source is).
RESULT_SOP_CLASSES: dict[str, str] = {
    "Segmentation Storage": "1.2.840.10008.5.1.4.1.1.66.4",
    "Grayscale Softcopy Presentation State Storage": "1.2.840.10008.5.1.4.1.1.11.1",
}

# A-ASSOCIATE-RJ (PS3.8 §9.3.4): result, source, reason.
VERIFICATION = "1.2.840.10008.1.1"

_REJECT_PERMANENT, _REJECT_TRANSIENT = 0x01, 0x02
_BY_SERVICE_USER, _BY_PRESENTATION_PROVIDER = 0x01, 0x03
_NO_REASON, _CALLING_AE_NOT_RECOGNISED, _CALLED_AE_NOT_RECOGNISED = 0x01, 0x03, 0x07
_LOCAL_LIMIT_EXCEEDED = 0x02
_PERMANENT = (_REJECT_PERMANENT, _BY_SERVICE_USER, _NO_REASON)
_BUSY = (_REJECT_TRANSIENT, _BY_PRESENTATION_PROVIDER, _LOCAL_LIMIT_EXCEEDED)
_REJECTIONS: dict[Refusal, tuple[int, int, int]] = {
    Refusal.CALLED_AE: (_REJECT_PERMANENT, _BY_SERVICE_USER, _CALLED_AE_NOT_RECOGNISED),
    Refusal.CALLING_AE: (_REJECT_PERMANENT, _BY_SERVICE_USER, _CALLING_AE_NOT_RECOGNISED),
    Refusal.PEER_ADDRESS: (_REJECT_PERMANENT, _BY_SERVICE_USER, _CALLING_AE_NOT_RECOGNISED),
    Refusal.TLS_IDENTITY: _PERMANENT,
    Refusal.STORE_FULL: _BUSY,
    Refusal.ASSOCIATION_LIMIT: _BUSY,
}
_BY_CHECK = {
    SourceCheck.CALLING_AE: Refusal.CALLING_AE,
    SourceCheck.PEER_ADDRESS: Refusal.PEER_ADDRESS,
    SourceCheck.TLS_IDENTITY: Refusal.TLS_IDENTITY,
}


class DeviceAnswer(Protocol):
    @property
    def status(self) -> Status: ...

    @property
    def reason(self) -> str: ...


class DeviceResults(Protocol):
    """Where a ``kind: device`` source's C-STOREs go (the external stage's receive path,
    passed in by the composition root: ``external`` comes after ``ingest``)."""

    def receive_file(
        self, path: Path, calling_ae: str, sop_class: str, sop_uid: str
    ) -> DeviceAnswer: ...


@dataclass(frozen=True)
class Verdict:
    source: Source | None
    refusal: Refusal | None = None
    reason: str = ""


@dataclass(frozen=True)
class Gatekeeper:
    """Decides at association time who may send."""

    called_ae: str
    directory: SourceDirectory
    store: ObjectStore
    max_associations: int

    def decide(
        self,
        calling_ae: str,
        called_ae: str,
        address: str,
        identity: TlsIdentity | None,
        associations: int,
    ) -> Verdict:
        """``identity`` is None for plain TCP; ``associations`` counts this one."""
        if called_ae != self.called_ae and not self.directory.open_mode:
            why = f"called AE {called_ae!r} is not ours ({self.called_ae!r})"
            return Verdict(None, Refusal.CALLED_AE, why)
        source = self.directory.match(calling_ae, address, identity)
        if source is None:
            check, why = self.directory.why_not(calling_ae, address, identity)
            return Verdict(None, _BY_CHECK[check], why)
        if associations > self.max_associations:
            why = f"{associations - 1} associations open, at most {self.max_associations}"
            return Verdict(source, Refusal.ASSOCIATION_LIMIT, why)
        if not self.store.has_room():
            return Verdict(source, Refusal.STORE_FULL, "object store below its free-space floor")
        return Verdict(source)


def _on_requested(event: Event, gatekeeper: Gatekeeper, report: EdgeReport) -> None:
    # pynetdicom logs a handler's exception and then accepts the association: fail closed.
    try:
        _check_request(event.assoc, gatekeeper, report)
    except Exception:
        log.exception("association check failed; rejecting it")
        _reject(event.assoc, _BUSY)


def _check_request(assoc: Any, gatekeeper: Gatekeeper, report: EdgeReport) -> None:
    request = assoc.requestor.primitive
    if request is None:
        return
    calling = _ae(request.calling_ae_title)
    called = _ae(request.called_ae_title)
    address = str(assoc.requestor.address)
    identity = _guarded(assoc).identity
    verdict = gatekeeper.decide(calling, called, address, identity, _acceptors(assoc.ae))
    decision = AssociationDecision(
        accepted=verdict.refusal is None,
        peer=address,
        calling_ae=calling,
        called_ae=called,
        tls=identity is not None,
        tls_subject=identity.subject if identity else None,
        source=verdict.source.name if verdict.source else None,
        region=verdict.source.region if verdict.source else None,
        reason=verdict.refusal,
        detail=verdict.reason,
    )
    if verdict.refusal is None:
        # Written while the A-ASSOCIATE-AC goes out; a C-STORE is served, and the release
        # answered, only once it is (EdgeAssociation.settle).
        assoc.audited = report.decided_soon(decision)
        log.info(
            "association accepted",
            extra={"calling_ae": calling, "peer": address, "tls": identity is not None},
        )
        return
    record_or_log(report.decided, decision)  # before the rejection
    report.refused(verdict.refusal, address, verdict.reason, calling_ae=calling)
    _reject(assoc, _REJECTIONS[verdict.refusal])


def _reject(assoc: Any, rejection: tuple[int, int, int]) -> None:
    assoc.acse.send_reject(*rejection)
    # As pynetdicom does for its own rejections: stopping the DUL flushes the A-ASSOCIATE-RJ
    # before the socket closes (otherwise the peer sees an abort, not the reason).
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


def _on_store(
    event: Event,
    ingest: Ingest,
    directory: SourceDirectory,
    source_ids: dict[str, int],
    report: EdgeReport,
    max_instance: int,
    releases: ReleaseCompletion | None,
    device_results: DeviceResults | None = None,
) -> Dataset | int:
    assoc = event.assoc
    calling, address = _ae(assoc.requestor.ae_title), str(assoc.requestor.address)
    try:
        if isinstance(assoc, EdgeAssociation):
            assoc.settle()  # its audit row precedes anything it delivers
        guarded = _guarded(assoc)
        request = cast(C_STORE, event.request)
        drained = guarded.limits.take_oversized(int(cast(int, request.MessageID)))
        if drained is not None:
            report.refused(
                Refusal.INSTANCE_TOO_LARGE,
                address,
                f"dataset of {drained} bytes or more; max_instance_bytes is {max_instance}",
                calling_ae=calling,
            )
            return _response(Status.OUT_OF_RESOURCES, f"instance over {max_instance} bytes")
        source = directory.match(calling, address, guarded.identity)
        if source is None:  # the association was accepted, so configuration changed since
            return _response(Status.OUT_OF_RESOURCES, "source no longer configured")
        expected = (str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID))
        if source.kind == SourceKind.DEVICE:
            return _device_store(event, device_results, calling, *expected)
        sender = Sender(
            source=source, source_id=source_ids[source.name], calling_ae=calling, address=address
        )
        spooled = event.dataset_path  # None when chunked receiving is off
        if spooled is not None:
            file = request._dataset_file  # gateway.ingest.dimse made it, unless pynetdicom did
            facts = file.spooled() if isinstance(file, SpoolFile) else None
            outcome = ingest.receive_file(Path(spooled), sender, *expected, spooled=facts)
        else:
            outcome = ingest.receive(event.encoded_dataset(include_meta=True), sender, *expected)
        if releases and source.complete_on_release and outcome.status.is_success:
            releases.delivered(assoc, cast(str, outcome.study_uid))
        return _response(outcome.status, outcome.reason)
    except Exception:
        # Not the data's fault as far as we know: answer "try again later", keep serving.
        log.exception("C-STORE handler failed", extra={"calling_ae": calling})
        return _response(Status.OUT_OF_RESOURCES, "internal error")


def _device_store(
    event: Event, results: DeviceResults | None, calling: str, sop_class: str, sop_uid: str
) -> Dataset | int:
    """A vendor's result: to the external receive path, never into study assembly."""
    if results is None:
        log.warning("device source without a receive path", extra={"calling_ae": calling})
        return _response(Status.CANNOT_UNDERSTAND, "no external device receives here")
    spooled = event.dataset_path
    if spooled is not None:
        answer = results.receive_file(Path(spooled), calling, sop_class, sop_uid)
        return _response(answer.status, answer.reason)
    with tempfile.NamedTemporaryFile(suffix=".dcm") as copy:
        copy.write(event.encoded_dataset(include_meta=True))
        copy.flush()
        answer = results.receive_file(Path(copy.name), calling, sop_class, sop_uid)
    return _response(answer.status, answer.reason)


def _on_released(event: Event, releases: ReleaseCompletion) -> None:
    try:
        releases.released(event.assoc)
    except Exception:  # the quiet period completes what this could not
        log.exception("completion on release failed")


def _on_aborted(event: Event, releases: ReleaseCompletion) -> None:
    releases.aborted(event.assoc)


def _response(status: Status, reason: str) -> Dataset | int:
    if status.is_success or not reason:
        # The bare status: pynetdicom reads a returned dataset element by element, and
        # building one cost ~3 % of an SCP process's GIL on every C-STORE.
        return int(status)
    response = Dataset()
    response.Status = int(status)
    response.ErrorComment = reason.encode("ascii", "replace").decode()[:64]
    return response


def _ae(value: Any) -> str:
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return text.strip()


def _guarded(assoc: Any) -> GuardedSocket:
    guarded = assoc.dul.socket
    if not isinstance(guarded, GuardedSocket):
        raise TypeError("association without the edge's socket wrapper")
    return guarded


def _acceptors(ae: AE) -> int:
    return sum(1 for assoc in ae.active_associations if assoc.is_acceptor)


class DicomServer:
    """The running SCP: the plain listener on ``dicom_port`` (unless ``dicom_plain_enabled``
    is false), the TLS listener on ``dicom_tls_port`` (when not 0), one admission thread.

    ``counters`` are shared with the other SCP processes and ``/metrics``; ``audit`` records
    association decisions (the composition root passes the audit log's writer);
    ``releases`` completes the studies of ``complete_on_release`` sources on A-RELEASE.
    """

    def __init__(
        self,
        settings: Settings,
        ingest: Ingest,
        directory: SourceDirectory,
        source_ids: dict[str, int],
        store: ObjectStore,
        *,
        adopt: dict[str, socket.socket] | None = None,
        seat: Seat | None = None,
        counters: EdgeCounters | None = None,
        audit: AuditHook | None = None,
        releases: ReleaseCompletion | None = None,
        device_results: DeviceResults | None = None,
    ) -> None:
        _check_tls_sources(settings, directory)
        self.settings = settings
        self.ingest = ingest
        self.releases = releases
        self.report = EdgeReport(counters or EdgeCounters(), audit)
        self.ae = _build_ae(settings, results=directory.has_devices)
        self._spool_folder = store.spool_folder()
        gatekeeper = Gatekeeper(settings.ae_title, directory, store, settings.max_associations)
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, _on_requested, [gatekeeper, self.report]),
            (
                evt.EVT_C_STORE,
                _on_store,
                [
                    ingest,
                    directory,
                    source_ids,
                    self.report,
                    settings.max_instance_bytes,
                    releases,
                    device_results,
                ],
            ),
        ]
        if releases is not None:
            handlers += [
                (evt.EVT_RELEASED, _on_released, [releases]),
                (evt.EVT_ABORTED, _on_aborted, [releases]),
            ]
        self.admission = Admission(
            AdmissionLimits(
                request_timeout_s=settings.dicom_request_timeout_s,
                per_peer=settings.max_connections_per_peer,
                network_timeout_s=settings.network_timeout_s,
                max_pdu=settings.max_pdu_bytes,
                max_instance=settings.max_instance_bytes,
            ),
            self.report,
            self._associated_from,
            seat=seat,
            associations=self._associations,
        )
        tls = listener_context(settings)  # a bad key file fails before any port is bound
        self.listeners: dict[str, EdgeListener] = {}
        adopt = adopt or {}
        if settings.dicom_plain_enabled:
            self.listeners["plain"] = self._listen(
                settings.dicom_port, None, handlers, adopt.get("plain")
            )
        if tls is not None:
            self.listeners["tls"] = self._listen(
                settings.dicom_tls_port, tls, handlers, adopt.get("tls")
            )
        for listener in self.listeners.values():
            self.admission.add(listener)

    def _listen(
        self,
        port: int,
        tls: ssl.SSLContext | None,
        handlers: list[Any],
        adopt: socket.socket | None,
    ) -> EdgeListener:
        listener = cast(
            EdgeListener,
            self.ae.make_server(
                (self.settings.dicom_host, port),
                ae_title=self.settings.ae_title,
                evt_handlers=handlers,
                server_class=EdgeListener,
                tls=tls,
                adopt=adopt,
            ),
        )
        listener.spool_folder = self._spool_folder
        return listener

    def listening_sockets(self) -> dict[str, socket.socket]:
        """The bound, listening sockets by kind, for the extra SCP processes to share."""
        return {kind: listener.listening_socket for kind, listener in self.listeners.items()}

    @property
    def port(self) -> int:
        """The plain TCP port (the TLS port when the gateway is TLS-only)."""
        return (self.listeners.get("plain") or self.listeners["tls"]).port

    @property
    def tls_port(self) -> int | None:
        listener = self.listeners.get("tls")
        return listener.port if listener else None

    def _associations(self) -> int:
        return sum(1 for assoc in self.ae.active_associations if assoc.is_acceptor)

    def _associated_from(self, peer: str) -> int:
        return sum(
            1
            for assoc in self.ae.active_associations
            if assoc.is_acceptor
            and assoc.requestor.address_info is not None
            and assoc.requestor.address == peer
        )

    def start(self) -> None:
        self.admission.start()
        log.info(
            "DICOM SCP listening",
            extra={
                "ae_title": self.settings.ae_title,
                "port": self.port,
                "tls_port": self.tls_port,
            },
        )

    def serve_forever(self) -> None:
        self.admission.run()

    def stop(self) -> None:
        self.admission.stop()
        self.report.close()


def _check_tls_sources(settings: Settings, directory: SourceDirectory) -> None:
    named = directory.names_tls_identities
    if named and settings.dicom_tls_client_ca_file is None:
        raise ConfigError(
            f"sources {', '.join(named)} name TLS client certificates, but "
            "dicom_tls_client_ca_file is not set: no client certificate would be asked for"
        )


def _build_ae(settings: Settings, results: bool = False) -> AE:
    # Received C-STORE datasets go to a temporary file (in $TMPDIR), not memory: a 1 GB
    # tomosynthesis instance must not cost 1 GB per association. pynetdicom keeps this in a
    # process-global flag; it is set here, where every SCP of the process is built, and
    # nothing in the gateway receives C-STORE any other way (SCUs only send).
    _config.STORE_RECV_CHUNKED_DATASET = True
    # pynetdicom's "standard" handlers describe every PDU and DIMSE message in INFO and DEBUG
    # lines that gateway.logs drops (pynetdicom logs at WARNING and above): formatting them
    # cost CPU on every P-DATA of every C-STORE. Process-global too, set in the same place.
    _config.LOG_HANDLER_LEVEL = "none"
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu_bytes
    # The gatekeeper enforces the limit (and logs, counts and audits it); pynetdicom's own
    # check counts the same threads and stays as a backstop.
    ae.maximum_associations = settings.max_associations
    ae.network_timeout = settings.network_timeout_s
    ae.acse_timeout = settings.network_timeout_s
    ae.dimse_timeout = settings.network_timeout_s
    ae.require_called_aet = False  # the gatekeeper checks it and logs why
    ae.add_supported_context(VERIFICATION)
    for sop_class in storage_sop_classes(settings, results):
        ae.add_supported_context(sop_class, AllTransferSyntaxes)
    return ae


def storage_sop_classes(settings: Settings, results: bool = False) -> list[str]:
    """What the SCP accepts; with ``results`` (a device source is configured) also what
    external devices return."""
    extra = list(RESULT_SOP_CLASSES.values()) if results else []
    return list(
        dict.fromkeys([*STORAGE_SOP_CLASSES.values(), *extra, *settings.extra_storage_sop_classes])
    )
