"""Limits on what one association may make the SCP hold, checked on the bytes before
pynetdicom sees them.

pynetdicom's upper layer reads a PDU's 6-byte header and then receives as many bytes as its
length field says, into memory, whatever that is (PS3.8 lets it be 4 GiB). Its socket is
ours: :class:`GuardedSocket` reads the header first, aborts (A-ABORT, socket shut) a PDU
longer than we accept before reading its body, and walks each P-DATA-TF's value items:

- a command set longer than :data:`COMMAND_CAP`, or the dataset of a message other than
  C-STORE-RQ longer than :data:`SMALL_DATASET_CAP` (those are held in memory), aborts;
- a C-STORE dataset past ``max_instance_bytes`` is drained: its remaining fragments reach
  pynetdicom empty, so its spool file stops growing, and the C-STORE handler answers a
  status (:meth:`MessageLimits.take_oversized`);
- a peer that sends more than :data:`MAX_UNANSWERED` requests without waiting for the
  responses (no asynchronous operations are negotiated) is aborted.

Each read takes up to :data:`READ_AHEAD` bytes past the PDU it is for (a fixed bound, not
a length from the network); they are the next PDU's header and first bytes, checked as
above when that PDU's turn comes, and save the header its own read.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import struct
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from pynetdicom.transport import AssociationSocket

from gateway.ingest.reactor import IDLE_WAKE_S
from gateway.ingest.refusals import Refusal
from gateway.ingest.tls import TlsIdentity

if TYPE_CHECKING:
    from pynetdicom.association import Association

A_ASSOCIATE_RQ, P_DATA_TF = 0x01, 0x04
REQUEST_CAP = 64 * 1024  # an A-ASSOCIATE-RQ with 128 contexts of 8 syntaxes is ~35 KiB
COMMAND_CAP = 64 * 1024  # a command set is a few hundred bytes
SMALL_DATASET_CAP = 64 * 1024  # we serve no DIMSE service whose request carries a dataset
MAX_UNANSWERED = 16
PDU_HEADER = 6
# Bytes read past the end of a PDU in the same call: the next PDU's header, usually there
# already, then costs no read (and its wait in select no GIL hand-off) of its own.
READ_AHEAD = 16 * 1024
_KNOWN_PDU_TYPES = frozenset(range(0x01, 0x08))
_C_STORE_RQ = 0x0001
_NO_DATASET = 0x0101
_INVALID_PDU_PARAMETER = 0x06  # A-ABORT reason (PS3.8 Table 9-26), source: service provider


def abort_pdu(reason: int = _INVALID_PDU_PARAMETER) -> bytes:
    """A-ABORT from the upper-layer service provider (PS3.8 §9.3.8)."""
    return bytes([0x07, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x02, reason])


class LimitExceeded(Exception):
    def __init__(self, reason: Refusal, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class MessageLimits:
    """Accounting of one association's incoming PDUs and DIMSE messages (DUL thread only)."""

    def __init__(self, max_pdu: int, max_instance: int) -> None:
        self.max_pdu = max_pdu
        self.max_instance = max_instance
        self._command = bytearray()
        self._message_id: int | None = None
        self._is_store = False
        self._dataset_bytes = 0
        self._unanswered = 0
        self._oversized: dict[int, int] = {}  # message ID → dataset bytes that arrived

    def check_header(self, pdu_type: int, length: int) -> None:
        """Before the body is read; ``length`` is the PDU length field."""
        # "Our maximum PDU plus its header": some senders count the PDV item header in.
        cap = self.max_pdu + PDU_HEADER if pdu_type == P_DATA_TF else REQUEST_CAP
        if length > cap:
            raise LimitExceeded(
                Refusal.PDU_TOO_LARGE,
                f"PDU type 0x{pdu_type:02X} declares {length} bytes; at most {cap} accepted",
            )

    def take_oversized(self, message_id: int) -> int | None:
        """The dataset size of C-STORE ``message_id`` when it was drained, else None."""
        return self._oversized.pop(message_id, None)

    def received(self, body: bytes | bytearray) -> bytes | bytearray:
        """A P-DATA-TF body as pynetdicom may see it: fragments of an oversized dataset
        emptied (their item length set to 2). Malformed items pass unchanged: pynetdicom
        aborts on them."""
        items: list[tuple[int, int, bool]] = []  # start, end, keep its fragment
        offset = 0
        while offset + PDU_HEADER <= len(body):
            (item_length,) = struct.unpack_from(">I", body, offset)
            end = offset + 4 + item_length
            if item_length < 2 or end > len(body):
                return body
            items.append((offset, end, self._keeps(body[offset + 5], body, offset + 6, end)))
            offset = end
        if offset != len(body) or all(keep for _start, _end, keep in items):
            return body
        return b"".join(
            body[start:end] if keep else struct.pack(">I", 2) + body[start + 4 : start + 6]
            for start, end, keep in items
        )

    def sent(self, pdu: bytes) -> None:
        """Each response we send answers one request."""
        if len(pdu) < PDU_HEADER or pdu[0] != P_DATA_TF:
            return
        offset = PDU_HEADER
        while offset + PDU_HEADER <= len(pdu):
            (item_length,) = struct.unpack_from(">I", pdu, offset)
            if pdu[offset + 5] & 0b11 == 0b11:  # last fragment of a command
                self._unanswered = max(0, self._unanswered - 1)
            offset += 4 + item_length

    def _keeps(self, control: int, body: bytes | bytearray, start: int, end: int) -> bool:
        size = end - start
        if control & 0b01:  # command fragment
            if len(self._command) + size > COMMAND_CAP:
                raise LimitExceeded(Refusal.MESSAGE_TOO_LARGE, f"command set over {COMMAND_CAP}")
            self._command += body[start:end]
            if control & 0b10:
                self._command_done()
            return True
        self._dataset_bytes += size
        if not self._is_store and self._dataset_bytes > SMALL_DATASET_CAP:
            raise LimitExceeded(
                Refusal.MESSAGE_TOO_LARGE,
                f"dataset of a non-storage request over {SMALL_DATASET_CAP} bytes",
            )
        oversized = self._dataset_bytes > self.max_instance
        if control & 0b10:
            if oversized and self._message_id is not None:
                self._oversized[self._message_id] = self._dataset_bytes
            self._request_done()
        return not oversized

    def _command_done(self) -> None:
        facts = _command_facts(bytes(self._command))
        self._command.clear()
        self._message_id = facts.get(0x0110)
        self._is_store = facts.get(0x0100) == _C_STORE_RQ
        self._dataset_bytes = 0
        if facts.get(0x0800) == _NO_DATASET:
            self._request_done()

    def _request_done(self) -> None:
        self._is_store = False
        self._dataset_bytes = 0
        self._unanswered += 1
        if self._unanswered > MAX_UNANSWERED:
            raise LimitExceeded(
                Refusal.UNANSWERED_REQUESTS,
                f"more than {MAX_UNANSWERED} requests sent without waiting for responses",
            )


def _command_facts(command: bytes) -> dict[int, int]:
    """The US elements of a command set (Implicit VR Little Endian, group 0000), by element
    number; anything else is skipped, a malformed tail ignored (pynetdicom decodes it)."""
    facts: dict[int, int] = {}
    offset = 0
    while offset + 8 <= len(command):
        group, element, length = struct.unpack_from("<HHI", command, offset)
        offset += 8
        if group == 0 and length == 2 and offset + 2 <= len(command):
            (facts[element],) = struct.unpack_from("<H", command, offset)
        offset += length
    return facts


AbortHook = Callable[["Association", LimitExceeded], None]


class GuardedSocket(AssociationSocket):
    """pynetdicom's socket wrapper with the limits above, the A-ASSOCIATE-RQ that admission
    already read (served first), and the TLS identity of the connection."""

    def __init__(
        self,
        assoc: Association,
        client_socket: socket.socket,
        *,
        request: bytes,
        limits: MessageLimits,
        identity: TlsIdentity | None,
        on_abort: AbortHook,
    ) -> None:
        super().__init__(assoc, client_socket=client_socket)
        self._unread = bytearray(request)
        self._ahead = bytearray()  # read past the last PDU handed over; not checked yet
        # A plain socket is read with os.readv on its descriptor: one system call, where
        # socket.recv_into with a timeout polls first (two, each a GIL hand-off).
        self._plain = not isinstance(client_socket, ssl.SSLSocket)
        self._body: bytes | bytearray | None = None
        self._body_follows = False
        self.limits = limits
        self.identity = identity
        self._on_abort = on_abort
        self._sending = threading.RLock()
        self._waiting = False  # the DUL thread is in ready's wait (see send_now)
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._close_wake = weakref.finalize(self, _close_fds, self._wake_read, self._wake_write)

    def wake(self) -> None:
        """Make a DUL thread waiting in :attr:`ready` look again (something is to be sent)."""
        # OSError: already woken (the pipe is full), or closed with the association.
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"\0")

    @property
    def ready(self) -> bool:
        """Whether a PDU can be read; waits up to ``IDLE_WAKE_S`` for one, or for
        :meth:`wake` (pynetdicom's DUL asks without waiting and then sleeps 1 ms), unless
        the DUL has events queued."""
        if self._unread or self._body is not None or len(self._ahead) >= PDU_HEADER:
            return True
        connection = self.socket
        if connection is None or not self._is_connected:
            time.sleep(IDLE_WAKE_S)  # the DUL loops until it is stopped: keep it paced
            return False
        if isinstance(connection, ssl.SSLSocket) and connection.pending():
            return True
        # An event the DUL queued itself and has yet to act on (the A-ASSOCIATE-RQ read from
        # _unread behind pynetdicom's transport indication): look, never wait (~5 ms an
        # association before).
        wait_s = 0.0 if self.event_queue.queue else IDLE_WAKE_S
        try:
            fd = connection.fileno()
            self._waiting = True
            readable = wait_readable((fd, self._wake_read), wait_s)
        except (OSError, TimeoutError, ValueError):
            self.event_queue.put("Evt17")  # transport closed, as pynetdicom's ready says
            return False
        finally:
            self._waiting = False
        if self._wake_read in readable:
            _drain(self._wake_read)
        return fd in readable

    def close(self) -> None:
        super().close()
        self._close_wake()

    def recv(self, nr_bytes: int) -> bytearray:
        # pynetdicom's reader asks for 6 header bytes, then for the body the header declares
        # (none for a PDU type it does not know: it aborts on those).
        if self._unread:
            served = self._unread[:nr_bytes]
            del self._unread[:nr_bytes]
            return served
        if self._body is not None:  # handed over as read: pynetdicom copies it anyway
            body, self._body = self._body, None
            return body if isinstance(body, bytearray) else bytearray(body)
        if self._body_follows:  # of a PDU other than P-DATA-TF, its length checked
            self._body_follows = False
            return self._take(nr_bytes)
        try:
            if nr_bytes != PDU_HEADER:  # not a read pynetdicom makes; never unchecked
                raise LimitExceeded(Refusal.PDU_TOO_LARGE, f"unexpected read of {nr_bytes} bytes")
            header = self._take(PDU_HEADER)
            if len(header) < PDU_HEADER:
                return header
            pdu_type, _reserved, length = struct.unpack(">BBI", header)
            if pdu_type not in _KNOWN_PDU_TYPES:
                return header
            self.limits.check_header(pdu_type, length)
            if pdu_type != P_DATA_TF:
                self._body_follows = True
                return header
            body = self._read(length)
            if len(body) == length:
                body = self.limits.received(body)
        except LimitExceeded as exceeded:
            self._abort(exceeded)
            return bytearray()  # too short for a header: pynetdicom sees the transport close
        self._body = body
        return bytearray(struct.pack(">BBI", pdu_type, 0, len(body)))

    def _take(self, count: int) -> bytearray:
        """``count`` bytes (fewer if the peer closes): those read ahead, then the socket's,
        reading at most :data:`READ_AHEAD` past them."""
        while len(self._ahead) < count:
            chunk = bytearray(count - len(self._ahead) + READ_AHEAD)
            with memoryview(chunk) as view:
                received = self._recv_into(view)
            if received == 0:
                break
            self._ahead += chunk[:received]
        taken = self._ahead[:count]
        del self._ahead[:count]  # from the front of a bytearray: no move of the rest
        return taken

    def _read(self, length: int) -> bytearray:
        """``length`` bytes (fewer if the peer closes), read straight into one buffer with
        up to :data:`READ_AHEAD` bytes more, which stay for the next PDU: the length was
        checked, and pynetdicom's 4 KiB reads cost more than the network."""
        if len(self._ahead) >= length:
            return self._take(length)
        buffer = bytearray(length + READ_AHEAD)
        received = len(self._ahead)
        buffer[:received] = self._ahead
        self._ahead.clear()
        with memoryview(buffer) as view:
            while received < length:
                count = self._recv_into(view[received:])
                if count == 0:
                    break
                received += count
        if received > length:
            self._ahead = buffer[length:received]
        del buffer[min(received, length) :]
        return buffer

    def _recv_into(self, view: memoryview) -> int:
        """One read into ``view``; 0 when the peer has closed. The socket's timeout holds:
        TimeoutError when nothing came in that long, as socket.recv_into raises."""
        connection = cast(socket.socket, self.socket)
        if not self._plain:
            return connection.recv_into(view)
        return read_plain(connection, view)

    def send(self, bytestream: bytes) -> None:
        with self._sending:  # the DUL thread's sends and send_now's, one whole PDU at a time
            self.limits.sent(bytestream)
            super().send(bytestream)

    def send_now(self, pdu: bytes, dul_idle: Callable[[], bool]) -> bool:
        """Send ``pdu`` from the calling thread, not the DUL's, where that keeps the order of
        what the association sends: a plain socket (an SSL object is not to be written by
        one thread while another reads it), the DUL thread waiting for data in
        :attr:`ready` (it sent all it had been given), and ``dul_idle()`` (nothing new
        given to it), checked under the lock the DUL's own sends take. False: not sent.

        A C-STORE-RSP otherwise went through the DUL's queue, a wake-up of its thread and
        its state machine: two context switches and ~60 µs of CPU per instance."""
        if not self._plain:
            return False
        with self._sending:
            if not self._waiting or not dul_idle():
                return False
            self.send(pdu)
        return True

    def _abort(self, exceeded: LimitExceeded) -> None:
        self._on_abort(self.assoc, exceeded)  # logged and counted before the peer hears
        connection = self.socket
        if connection is not None:
            try:
                connection.sendall(abort_pdu())
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # the peer is gone already; pynetdicom closes the socket


def _drain(fd: int) -> None:
    with contextlib.suppress(OSError):  # BlockingIOError: empty now
        while os.read(fd, 4096):
            pass


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def wait_readable(fds: tuple[int, ...], timeout_s: float) -> set[int]:
    """Which of ``fds`` can be read (or have hung up) within ``timeout_s``. poll, not select:
    a busy gateway's descriptors pass select's FD_SETSIZE (1024), where select raises."""
    waiting = select.poll()
    for fd in fds:
        if fd < 0:  # a closed socket's descriptor: poll would just never report it
            raise OSError("socket closed")
        waiting.register(fd, select.POLLIN)
    ready = waiting.poll(timeout_s * 1000)
    if any(events & select.POLLNVAL for _fd, events in ready):
        raise OSError("descriptor closed")  # select raised for these too
    return {fd for fd, _events in ready}


def read_plain(connection: socket.socket, view: memoryview) -> int:
    """One read of a plain socket into ``view`` with one system call (``os.readv`` on its
    descriptor; ``socket.recv_into`` with a timeout polls first: two, each a GIL hand-off);
    0 when the peer has closed, TimeoutError after the socket's timeout without data."""
    fd, timeout = connection.fileno(), connection.gettimeout()  # -1 once closed: EBADF
    while True:
        try:
            return os.readv(fd, [view])
        except BlockingIOError:  # non-blocking: Python's way of keeping a timeout
            # poll, not select: a busy gateway's descriptors pass select's FD_SETSIZE.
            waiting = select.poll()
            waiting.register(fd, select.POLLIN)
            if not waiting.poll(None if timeout is None else timeout * 1000):
                raise TimeoutError("timed out") from None
