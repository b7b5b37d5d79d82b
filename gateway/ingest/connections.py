"""Connections before they are associations: one thread holds them all.

pynetdicom gives every accepted connection an association thread at once, which waits up
to the ACSE timeout for the A-ASSOCIATE-RQ and counts against ``maximum_associations``
meanwhile: idle sockets locked every sender out. Here the listening sockets and every
connection not yet associated live in one selector loop (:class:`Admission`):

1. at accept, a peer address already holding ``max_connections_per_peer`` connections
   (pending or associated) is closed;
2. a TLS connection completes its handshake without blocking anyone;
3. the A-ASSOCIATE-RQ is read: its header must say A-ASSOCIATE-RQ and a length of at most
   :data:`~gateway.ingest.pdu_limits.REQUEST_CAP`, else A-ABORT and close;
4. a connection without a whole request ``dicom_request_timeout_s`` after accept is closed;
5. only then does pynetdicom get the connection (:meth:`EdgeListener.associate`), with the
   request it will read first, and a thread.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import select
import selectors
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.transport import AddressInformation, AssociationServer

from gateway.ingest.balance import Seat
from gateway.ingest.dimse import EdgeDimse, adopt_dul
from gateway.ingest.pdu_limits import (
    A_ASSOCIATE_RQ,
    PDU_HEADER,
    REQUEST_CAP,
    AbortHook,
    GuardedSocket,
    LimitExceeded,
    MessageLimits,
    abort_pdu,
)
from gateway.ingest.reactor import Doorbell, EdgeAssociation, WakingQueue
from gateway.ingest.refusals import EdgeReport, Refusal
from gateway.ingest.tls import TlsIdentity, identity_of

log = logging.getLogger(__name__)

_ACCEPTS_PER_WAKE = 64
_TICK_S = 0.5
_WAIT_TICK_S = 0.005  # how often a connection left to a lighter process is looked at


def association_contexts(contexts: list[Any]) -> list[Any]:
    """The listener's presentation contexts for one association to negotiate on, as
    pynetdicom's ``deepcopy`` gives them but with the UIDs shared (immutable strings): the
    deepcopy of the SCP's 22 contexts cost 15.7 ms of CPU per association, which a PACS
    that opens one association per radiograph pays per study."""
    copies = []
    for context in contexts:
        twin = copy.copy(context)
        twin._transfer_syntax = list(context._transfer_syntax)
        copies.append(twin)
    return copies


class EdgeListener(AssociationServer):
    """A bound, listening socket and pynetdicom's per-server state (handlers, contexts);
    :class:`Admission` accepts on it, never ``serve_forever``."""

    request_queue_size = 256  # a burst of connects must not overflow the accept backlog

    def __init__(
        self,
        ae: Any,
        address: tuple[str, int],
        ae_title: str,
        contexts: list[Any],
        ssl_context: ssl.SSLContext | None = None,
        evt_handlers: list[Any] | None = None,
        *,
        tls: ssl.SSLContext | None = None,
        adopt: socket.socket | None = None,
    ) -> None:
        # pynetdicom's own ssl_context would handshake in the accept loop, blocking it for
        # as long as a peer stalls; the handshake is Admission's job.
        self.tls = tls
        # An extra SCP process listens on the main process's socket (gateway.ingest.balance).
        self.adopted = adopt
        self.spool_folder: Path | None = None  # EdgeDimse.spool_folder of its associations
        super().__init__(ae, address, ae_title, contexts, None, evt_handlers)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def server_bind(self) -> None:
        if self.adopted is not None:
            cast(socket.socket, self.socket).close()  # the fresh one socketserver made
            self.socket = self.adopted
            self.server_address = self.adopted.getsockname()
        else:
            super().server_bind()
        cast(socket.socket, self.socket).setblocking(False)

    @property
    def listening_socket(self) -> socket.socket:
        return cast(socket.socket, self.socket)

    def shutdown(self) -> None:
        self.server_close()

    def server_close(self) -> None:
        # Close this process's descriptor only: pynetdicom's shutdown(SHUT_RDWR) first would
        # stop the socket listening for every SCP process that shares it.
        self.listening_socket.close()

    def associate(
        self,
        connection: socket.socket,
        address: tuple[str, int],
        request: bytes,
        identity: TlsIdentity | None,
        limits: MessageLimits,
        on_abort: AbortHook,
    ) -> Association:
        """Start pynetdicom's acceptor on an admitted connection (as its RequestHandler
        does, with our socket wrapper)."""
        assoc = EdgeAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = self
        # pynetdicom finds a server's associations by this thread name.
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        guarded = GuardedSocket(
            assoc,
            connection,
            request=request,
            limits=limits,
            identity=identity,
            on_abort=on_abort,
        )
        assoc.set_socket(guarded)
        # The spooled file's meta and the C-STORE-RSP encoded directly, P-DATA-TF decoded
        # without copies (gateway.ingest.dimse).
        assoc.dimse = EdgeDimse(assoc)
        assoc.dimse.spool_folder = self.spool_folder
        adopt_dul(assoc.dul)
        # The DUL thread waits in guarded.ready for data or for a primitive to send, instead
        # of sleeping 1 ms between looks (gateway.ingest.reactor).
        assoc.dul.to_provider_queue = WakingQueue(guarded.wake)
        # And the association thread, waiting for its next DIMSE message, hears at once of
        # what the DUL gives it besides (a release request: ~5 ms a release before).
        assoc.doorbell = Doorbell(assoc.dimse.msg_queue)
        assoc.dul.to_user_queue = WakingQueue(assoc.doorbell.ring)
        assoc.dul._run_loop_delay = 0
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.ae_title
        assoc.acceptor.address_info = AddressInformation.from_tuple(self.server_address)
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = association_contexts(self.contexts)
        assoc.requestor.address_info = AddressInformation.from_tuple(address)
        for event, handlers in self._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in cast(list[tuple[Callable[..., Any], Any]], handlers):
                    assoc.bind(event, handler, args)
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": address})
        assoc.start()
        return assoc


@dataclass
class Pending:
    """A connection that is not an association yet."""

    connection: socket.socket
    address: tuple[str, int]
    listener: EdgeListener
    deadline: float
    handshaking: bool
    request: bytearray = field(default_factory=bytearray)
    identity: TlsIdentity | None = None

    @property
    def peer(self) -> str:
        return str(self.address[0])

    def wanted(self) -> int:
        """Bytes still missing from the A-ASSOCIATE-RQ (its header first)."""
        if len(self.request) < PDU_HEADER:
            return PDU_HEADER - len(self.request)
        declared = int.from_bytes(self.request[2:6], "big")
        return PDU_HEADER + declared - len(self.request)


@dataclass(frozen=True)
class AdmissionLimits:
    request_timeout_s: float
    per_peer: int
    network_timeout_s: float
    max_pdu: int
    max_instance: int


class _Refused(Exception):
    def __init__(self, reason: Refusal, detail: str, abort: bool = False) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.abort = reason, detail, abort


class Admission:
    """The selector thread over the listeners and every pending connection."""

    def __init__(
        self,
        limits: AdmissionLimits,
        report: EdgeReport,
        associated_from: Callable[[str], int],
        *,
        seat: Seat | None = None,
        associations: Callable[[], int] = lambda: 0,
    ) -> None:
        self.limits = limits
        self.report = report
        self._associated_from = associated_from  # live associations of a peer address
        # With scp_processes > 1: this process's place among those sharing the port, and
        # how many associations it runs (gateway.ingest.balance).
        self._seat = seat
        self._associations = associations
        self._waiting: dict[EdgeListener, float] = {}  # listeners left to lighter processes
        self._selector = selectors.DefaultSelector()
        self._pending: dict[socket.socket, Pending] = {}
        self._per_peer: Counter[str] = Counter()
        self._listeners: list[EdgeListener] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = False
        self._thread: threading.Thread | None = None

    def add(self, listener: EdgeListener) -> None:
        self._listeners.append(listener)
        self._selector.register(listener.listening_socket, selectors.EVENT_READ, listener)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="dicom-admission", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and close every pending connection (associations run on)."""
        if not self._stopping:
            self._stopping = True
            with contextlib.suppress(OSError):  # the loop closed it already
                self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=10)

    def run(self) -> None:
        self._publish()
        try:
            while not self._stopping:
                try:
                    self._step()
                except Exception:  # accepting must outlive any surprise
                    log.exception("DICOM admission loop failed; going on")
                    time.sleep(_TICK_S)
        finally:
            if self._seat is not None:
                self._seat.leave()
            for pending in list(self._pending.values()):
                self._close(pending)
            for listener in self._listeners:
                listener.server_close()
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _step(self) -> None:
        now = time.monotonic()
        soonest = min((p.deadline for p in self._pending.values()), default=now + _TICK_S)
        if self._waiting:
            soonest = min(soonest, now + _WAIT_TICK_S)
        for key, _mask in self._selector.select(max(0.0, min(soonest - now, _TICK_S))):
            if key.data is None:
                self._wake_r.recv(64)
            elif isinstance(key.data, EdgeListener):
                self._accept(key.data)
            else:
                self._advance(key.data)
        now = time.monotonic()
        for listener, until in list(self._waiting.items()):
            self._look_again(listener, until, now)
        for pending in [p for p in self._pending.values() if p.deadline <= now]:
            self._refuse(pending, _Refused(Refusal.REQUEST_TIMEOUT, _unfinished(pending)))
        self._publish()

    def _load(self) -> int:
        return len(self._pending) + self._associations()

    def _publish(self) -> None:
        if self._seat is not None:
            self._seat.publish(self._load())

    def _leave_to_lighter(self, listener: EdgeListener) -> bool:
        """Whether a less loaded process should accept what ``listener`` has queued; if so
        the listener leaves this selector (its readiness would wake the loop on end) and is
        looked at every few milliseconds instead, for at most the seat's grace."""
        if self._seat is None or not self._seat.should_wait(self._load()):
            return False
        self._selector.unregister(listener.listening_socket)
        self._waiting[listener] = time.monotonic() + self._seat.grace_s
        return True

    def _look_again(self, listener: EdgeListener, until: float, now: float) -> None:
        queued = bool(select.select([listener.listening_socket], [], [], 0)[0])
        lighter_still = self._seat is not None and self._seat.should_wait(self._load())
        if queued and lighter_still and now < until:
            return  # the lighter process may still take it
        del self._waiting[listener]
        self._selector.register(listener.listening_socket, selectors.EVENT_READ, listener)
        if queued:  # taken here: the loads changed, or the lighter one let the grace pass
            # (then all that is queued: a lighter process that let one connection wait its
            # whole grace would let the next ones wait too)
            self._accept(listener, waited=lighter_still)

    def _accept(self, listener: EdgeListener, waited: bool = False) -> None:
        for _ in range(_ACCEPTS_PER_WAKE):
            if not waited and self._leave_to_lighter(listener):
                return
            try:
                connection, address = listener.listening_socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, a reset before accept
                log.warning("DICOM accept failed", extra={"error": str(exc)})
                return
            self._admit(connection, address, listener)
            self._publish()

    def _admit(
        self, connection: socket.socket, address: tuple[str, int], listener: EdgeListener
    ) -> None:
        peer = str(address[0])
        held = self._per_peer[peer] + self._associated_from(peer)
        if held >= self.limits.per_peer:
            self.report.refused(
                Refusal.PEER_CONNECTIONS,
                peer,
                f"{held} connections open, at most {self.limits.per_peer}",
            )
            connection.close()
            return
        try:
            connection.setblocking(False)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if listener.tls is not None:
                connection = listener.tls.wrap_socket(
                    connection, server_side=True, do_handshake_on_connect=False
                )
        except OSError as exc:
            connection.close()
            log.info("DICOM connection lost at accept", extra={"peer": peer, "error": str(exc)})
            return
        pending = Pending(
            connection,
            address,
            listener,
            deadline=time.monotonic() + self.limits.request_timeout_s,
            handshaking=listener.tls is not None,
        )
        self._pending[connection] = pending
        self._per_peer[peer] += 1
        self._selector.register(connection, selectors.EVENT_READ, pending)
        self._advance(pending)

    def _advance(self, pending: Pending) -> None:
        try:
            if pending.handshaking and not self._handshake(pending):
                return
            if self._read_request(pending):
                self._hand_over(pending)
        except _Refused as refused:
            self._refuse(pending, refused)
        except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
            log.info(
                "DICOM connection closed by peer", extra={"peer": pending.peer, "error": str(exc)}
            )
            self._close(pending)
        except Exception:  # the loop must outlive any one connection
            log.exception("DICOM admission failed for a connection", extra={"peer": pending.peer})
            self._close(pending)

    def _handshake(self, pending: Pending) -> bool:
        connection = cast(ssl.SSLSocket, pending.connection)
        try:
            connection.do_handshake()
        except ssl.SSLWantReadError:
            self._selector.modify(connection, selectors.EVENT_READ, pending)
            return False
        except ssl.SSLWantWriteError:
            self._selector.modify(connection, selectors.EVENT_WRITE, pending)
            return False
        except (ssl.SSLError, OSError) as exc:
            detail = getattr(exc, "reason", None) or str(exc) or exc.__class__.__name__
            raise _Refused(Refusal.TLS_HANDSHAKE, f"TLS handshake failed: {detail}") from exc
        pending.handshaking = False
        pending.identity = identity_of(connection)
        self._selector.modify(connection, selectors.EVENT_READ, pending)
        return True

    def _read_request(self, pending: Pending) -> bool:
        """True once the whole A-ASSOCIATE-RQ is in; never reads past it."""
        while (wanted := pending.wanted()) > 0:
            try:
                chunk = pending.connection.recv(min(wanted, 65536))
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return False
            if not chunk:
                raise ConnectionResetError("closed before a whole A-ASSOCIATE-RQ")
            before = len(pending.request)
            pending.request += chunk
            if before < PDU_HEADER <= len(pending.request):
                _check_request_header(pending.request)
        return True

    def _hand_over(self, pending: Pending) -> None:
        self._forget(pending)
        connection = pending.connection
        connection.settimeout(self.limits.network_timeout_s)
        limits = MessageLimits(self.limits.max_pdu, self.limits.max_instance)
        try:
            pending.listener.associate(
                connection,
                pending.address,
                bytes(pending.request),
                pending.identity,
                limits,
                self._aborted,
            )
        except RuntimeError as exc:  # no thread could be started
            log.error(
                "DICOM association not started", extra={"peer": pending.peer, "error": str(exc)}
            )
            connection.close()

    def _aborted(self, assoc: Association, exceeded: LimitExceeded) -> None:
        self.report.refused(
            exceeded.reason,
            str(assoc.requestor.address),
            exceeded.detail,
            calling_ae=str(assoc.requestor.ae_title).strip(),
        )

    def _refuse(self, pending: Pending, refused: _Refused) -> None:
        self.report.refused(refused.reason, pending.peer, refused.detail)
        if refused.abort:
            # Best effort: the connection is being closed for cause either way.
            with contextlib.suppress(OSError, ValueError):
                pending.connection.send(abort_pdu())
        self._close(pending)

    def _forget(self, pending: Pending) -> None:
        if self._pending.pop(pending.connection, None) is None:
            return
        self._selector.unregister(pending.connection)
        self._per_peer[pending.peer] -= 1
        if self._per_peer[pending.peer] <= 0:
            del self._per_peer[pending.peer]

    def _close(self, pending: Pending) -> None:
        self._forget(pending)
        with contextlib.suppress(OSError):
            pending.connection.close()


def _check_request_header(request: bytearray) -> None:
    pdu_type, length = request[0], int.from_bytes(request[2:6], "big")
    if pdu_type != A_ASSOCIATE_RQ:
        raise _Refused(
            Refusal.NOT_A_REQUEST, f"first PDU is type 0x{pdu_type:02X}, not A-ASSOCIATE-RQ", True
        )
    if length > REQUEST_CAP:
        raise _Refused(
            Refusal.REQUEST_TOO_LARGE,
            f"A-ASSOCIATE-RQ declares {length} bytes; at most {REQUEST_CAP} accepted",
            True,
        )


def _unfinished(pending: Pending) -> str:
    if pending.handshaking:
        return "TLS handshake not completed in time"
    if not pending.request:
        return "nothing received"
    return f"{len(pending.request)} bytes of the A-ASSOCIATE-RQ in time"
