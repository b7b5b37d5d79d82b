"""Peers that misbehave on purpose, for the edge tests: raw sockets from a chosen loopback
address, hand-made PDUs, and the memory of a process read from /proc."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

from gateway.ingest.pdu_limits import abort_pdu
from pacs_adapters.requestor import associate
from tests.services import CT_IMAGE_STORAGE

VERIFICATION = "1.2.840.10008.1.1"
A_ABORT = abort_pdu()


def association_request(calling_ae: str = "IRK_CAMI", called_ae: str = "AIGW") -> bytes:
    """A valid A-ASSOCIATE-RQ proposing Verification."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = called_ae
    context = build_context(VERIFICATION)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.2.0"
    primitive.user_information = [maximum, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def command_set(field: int, message_id: int, *, has_dataset: bool, sop_class: str) -> bytes:
    """A DIMSE command set, Implicit VR Little Endian."""
    command = Dataset()
    command.AffectedSOPClassUID = sop_class
    command.CommandField = field
    command.MessageID = message_id
    command.CommandDataSetType = 0x0001 if has_dataset else 0x0101
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, command)
    return buffer.getvalue()


def pdv(context_id: int, control: int, data: bytes) -> bytes:
    """One presentation data value item."""
    return struct.pack(">IBB", len(data) + 2, context_id, control) + data


def p_data(*items: bytes) -> bytes:
    body = b"".join(items)
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


def echo_request(message_id: int, context_id: int = 1) -> bytes:
    """A whole C-ECHO-RQ in one P-DATA-TF."""
    command = command_set(0x0030, message_id, has_dataset=False, sop_class=VERIFICATION)
    return p_data(pdv(context_id, 0x03, command))


@contextlib.contextmanager
def raw_connection(port: int, source: str = "127.0.0.1") -> Iterator[socket.socket]:
    connection = socket.create_connection(
        ("127.0.0.1", port), timeout=30, source_address=(source, 0)
    )
    try:
        yield connection
    finally:
        connection.close()


def read_until_closed(connection: socket.socket, timeout_s: float = 30.0) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts)."""
    connection.settimeout(timeout_s)
    received = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while chunk := connection.recv(65536):
            received += chunk
    return bytes(received)


def is_open(connection: socket.socket) -> bool:
    """True while the server has neither closed nor reset the connection (nothing is read
    from it: our idle peers never get an answer)."""
    connection.setblocking(False)
    try:
        return connection.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        connection.setblocking(True)


def verification_association(
    port: int, calling_ae: str = "IRK_CAMI", source: str = "127.0.0.1"
) -> Association:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 30
    return associate(ae, "127.0.0.1", port, ae_title="AIGW", bind_address=(source, 0))


def storage_association(port: int, acse_timeout_s: float = 30) -> Association:
    """A CT Image Storage association (explicit VR little endian) as the CAMI source."""
    ae = AE(ae_title="IRK_CAMI")
    ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    ae.acse_timeout = acse_timeout_s
    return associate(ae, "127.0.0.1", port, ae_title="AIGW")


def echo(port: int, calling_ae: str = "IRK_CAMI", source: str = "127.0.0.1") -> int | None:
    """The C-ECHO status, or None when no association was established."""
    assoc = verification_association(port, calling_ae, source)
    if not assoc.is_established:
        return None
    try:
        response = assoc.send_c_echo()
        return int(response.Status) if "Status" in response else None
    finally:
        assoc.release()


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    """Poll ``condition()`` until true or the (generous) timeout passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found
