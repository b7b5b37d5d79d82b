"""pynetdicom's DIMSE provider with the two small encodings of every C-STORE done directly.

For each received instance pynetdicom 3.0.4 builds two small pydicom datasets and encodes
them with pydicom's general writer: the spooled file's File Meta Information
(``create_file_meta`` + ``write_file_meta_info`` in ``DIMSEMessage.decode_msg``) and the
C-STORE-RSP's command set (``primitive_to_message`` + ``encode_msg`` in
``DIMSEServiceProvider.send_msg``). Measured on the 2-core benchmark machine, loaded: about
0.4 ms and 0.55 ms of CPU per instance, as much as parsing the instance's own header; the
receiver's CPU per instance is what bounds four concurrent associations (issue 13).

Both have a fixed layout, so :class:`EdgeDimse` writes their bytes directly:

- :func:`file_meta` — the group 0002 elements pynetdicom writes, in its order and padding;
- :func:`store_response` — a C-STORE-RSP command set (Implicit VR Little Endian) when the
  response has no optional element (Error Comment, Offending Element), as every success;
  any other response, and any message but a C-STORE-RSP, goes through pynetdicom.

tests/ingest/test_dimse.py compares both with pydicom's encoding byte for byte, and pins
the pynetdicom source that :meth:`EdgeDimse.receive_primitive` and :func:`_decode_msg` copy.
The copies also write each dataset fragment from a view of the received PDU, which
:class:`EdgeDul` decodes without copying it (pynetdicom made three copies of each 128 KiB
PDU: memory copies were ~4 % of the receiver's CPU), and flush the spool file once, at the
last fragment, not after each.
"""

from __future__ import annotations

import logging
import struct
import threading
from io import BytesIO
from pathlib import Path
from tempfile import NamedTemporaryFile
from typing import TYPE_CHECKING, Any, cast

from pynetdicom import (
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    _config,
    evt,
)
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import _MESSAGE_TYPES, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_CANCEL, C_STORE, N_EVENT_REPORT
from pynetdicom.dsutils import decode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.utils import make_target

if TYPE_CHECKING:
    from pynetdicom.association import Association

LOGGER = logging.getLogger("pynetdicom.dimse")  # pynetdicom's own logger, as in the copy

_C_STORE_RSP = 0x8001
_NO_DATASET = 0x0101
# The C-STORE-RSP elements that are absent from every response built here.
_OPTIONAL_RESPONSE = ("OffendingElement", "ErrorComment")


def _uid(value: str) -> bytes:
    # latin-1, as pydicom decoded the command set's UI values and pynetdicom's writer
    # encodes them: a malformed UID (non-ASCII) is written back byte for byte and refused
    # by the C-STORE handler's checks, rather than raising here and dropping the association.
    data = value.encode("latin-1")
    return data + b"\0" if len(data) % 2 else data


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    # Group 0002, Explicit VR Little Endian: 2-byte lengths, except OB's 4.
    if vr == b"OB":
        return struct.pack("<HH2s2xI", 2, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 2, element, vr, len(value)) + value


_VERSION = _explicit(0x0001, b"OB", b"\x00\x01")
_IMPLEMENTATION = _explicit(0x0012, b"UI", _uid(PYNETDICOM_IMPLEMENTATION_UID)) + _explicit(
    0x0013,
    b"SH",
    PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    + (b" " if len(PYNETDICOM_IMPLEMENTATION_VERSION) % 2 else b""),
)


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information, as pynetdicom writes them at the
    head of a spooled C-STORE dataset."""
    group = b"".join(
        (
            _VERSION,
            _explicit(0x0002, b"UI", _uid(sop_class_uid)),
            _explicit(0x0003, b"UI", _uid(sop_instance_uid)),
            _explicit(0x0010, b"UI", _uid(transfer_syntax)),
            _IMPLEMENTATION,
        )
    )
    length = _explicit(0x0000, b"UL", struct.pack("<I", len(group)))
    return b"\0" * 128 + b"DICM" + length + group


def _implicit(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, element, len(value)) + value


def store_response(rsp: C_STORE) -> bytes | None:
    """The encoded command set of C-STORE-RSP ``rsp``, or None where it carries an optional
    element or lacks a required one (pynetdicom encodes those)."""
    if any(getattr(rsp, name, None) is not None for name in _OPTIONAL_RESPONSE):
        return None
    sop_class, sop_instance = rsp.AffectedSOPClassUID, rsp.AffectedSOPInstanceUID
    responding, status = rsp.MessageIDBeingRespondedTo, rsp.Status
    if sop_class is None or sop_instance is None or responding is None or status is None:
        return None
    body = b"".join(
        (
            _implicit(0x0002, _uid(sop_class)),
            _implicit(0x0100, struct.pack("<H", _C_STORE_RSP)),
            _implicit(0x0120, struct.pack("<H", int(responding))),
            _implicit(0x0800, struct.pack("<H", _NO_DATASET)),
            _implicit(0x0900, struct.pack("<H", int(status))),
            _implicit(0x1000, _uid(sop_instance)),
        )
    )
    return _implicit(0x0000, struct.pack("<I", len(body))) + body


class EdgeDul(DULServiceProvider):
    """pynetdicom's DUL provider whose P-DATA-TF PDUs are decoded as views of the received
    buffer: pynetdicom copies a 128 KiB PDU twice more (``bytes()`` of it, then a slice per
    PDV) before its fragments are written to the spool file. An association's DUL becomes
    one by class assignment (pynetdicom builds it, timeouts included, in the association's
    constructor); it adds no state."""

    def _decode_pdu(self, bytestream: bytearray) -> tuple[Any, str]:
        # pynetdicom reads each PDU into a new bytearray, so views of it stay valid.
        if bytestream[:1] != b"\x04" or self.assoc.get_handlers(evt.EVT_DATA_RECV):
            return cast(tuple[Any, str], super()._decode_pdu(bytestream))
        pdu = P_DATA_TF()
        pdu.decode(cast(bytes, memoryview(bytestream)))
        evt.trigger(self.assoc, evt.EVT_PDU_RECV, {"pdu": pdu})
        return pdu, "Evt10"  # P-DATA-TF PDU received (PS3.8 Table 9-10)


class EdgeDimse(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, the file meta and C-STORE-RSP encoded directly."""

    def send_msg(self, primitive: Any, context_id: int) -> None:
        encoded = None
        if isinstance(primitive, C_STORE) and primitive.MessageIDBeingRespondedTo is not None:
            encoded = store_response(primitive)
        limit = self.maximum_pdu_size
        if (
            encoded is None
            or (limit and len(encoded) + 6 > limit)  # pynetdicom fragments it
            or self.assoc.get_handlers(evt.EVT_DIMSE_SENT)  # they want pynetdicom's message
        ):
            super().send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + encoded))
        self.dul.send_pdu(pdata)

    def receive_primitive(self, primitive: P_DATA) -> None:
        # pynetdicom 3.0.4's DIMSEServiceProvider.receive_primitive, decode_msg replaced by
        # _decode_msg (tests/ingest/test_dimse.py pins the source).
        if self.message is None:
            self.message = DIMSEMessage()

        if _decode_msg(self.message, primitive, self.assoc):
            evt.trigger(self.assoc, evt.EVT_DIMSE_RECV, {"message": self.message})

            context_id = cast(int, self.message.context_id)
            try:
                d_primitive = self.message.message_to_primitive()
            except Exception as exc:
                LOGGER.error("Received an invalid DIMSE message")
                LOGGER.exception(exc)
                self.dul.event_queue.put("Evt19")
                return

            if isinstance(d_primitive, C_CANCEL) and len(self.cancel_req) < 10:
                msg_id = cast(int, d_primitive.MessageIDBeingRespondedTo)
                self.cancel_req[msg_id] = d_primitive
            elif isinstance(d_primitive, N_EVENT_REPORT) and d_primitive.is_valid_request:
                t = threading.Thread(
                    target=make_target(self.assoc._serve_request),
                    args=(d_primitive, context_id),
                )
                t.start()
            else:
                self.msg_queue.put((context_id, cast(Any, d_primitive)))

            self.message.encoded_command_set = BytesIO()
            self.message.data_set = BytesIO()
            self.message._data_set_file = None
            self.message._data_set_path = None
            self.message = None


def _decode_msg(message: DIMSEMessage, primitive: P_DATA, assoc: Association) -> bool:
    # pynetdicom 3.0.4's DIMSEMessage.decode_msg: the file meta by file_meta(), fragments
    # written from a view, one flush at the last (tests/ingest/test_dimse.py pins the source).
    if primitive.__class__ != P_DATA or primitive is None:
        return False

    for context_id, data in primitive.presentation_data_value_list:
        control_header_byte = data[0]

        if control_header_byte & 1:
            message.encoded_command_set.write(data[1:])

            if control_header_byte & 2:
                message.context_id = context_id
                message.command_set = decode(message.encoded_command_set, True, True)
                message.__class__ = _MESSAGE_TYPES[cast(int, message.command_set.CommandField)][1]

                if message.command_set.CommandDataSetType == 0x0101:
                    return True

                if _config.STORE_RECV_CHUNKED_DATASET and isinstance(message, C_STORE_RQ):
                    # delete=False and left open, as pynetdicom does: its SCP closes and removes it
                    spool = NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")  # noqa: SIM115
                    message._data_set_file = cast(Any, spool)
                    message._data_set_path = Path(spool.name)
                    cs = message.command_set
                    cx = assoc._accepted_cx[context_id]
                    spool.write(
                        file_meta(
                            str(cs.AffectedSOPClassUID),
                            str(cs.AffectedSOPInstanceUID),
                            str(cx.transfer_syntax[0]),
                        )
                    )

        else:
            if message._data_set_file:
                with memoryview(data) as view:
                    message._data_set_file.write(cast(bytes, view[1:]))
                if control_header_byte & 2:
                    message._data_set_file.file.flush()
            else:
                cast(BytesIO, message.data_set).write(data[1:])

            if control_header_byte & 2 != 0:
                return True

    return False
