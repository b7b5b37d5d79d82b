"""The SCP's own encodings of a spooled file's meta and of a C-STORE-RSP are byte for byte
what pynetdicom and pydicom write, its decoding of a C-STORE-RQ's command set gives the
primitive pynetdicom's gives; the pynetdicom code the providers copy is pinned."""

from __future__ import annotations

import hashlib
import inspect
import struct
from io import BytesIO
from typing import Any, cast

import pytest
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import AE, _config, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import create_file_meta, decode, encode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import DT_1, DT_2
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_items import PresentationDataValueItem
from pynetdicom.pdu_primitives import P_DATA

from gateway.ingest.dimse import (
    EdgeDul,
    ReceivedData,
    _to_primitive,
    adopt_dul,
    p_data_tf,
    store_request,
    store_response,
)
from gateway.ingest.spool import file_meta

# sha256 of pynetdicom 3.0.4's DIMSEMessage.decode_msg and DIMSEServiceProvider
# .receive_primitive. When pynetdicom changes either, compare it with the copy in
# gateway/ingest/dimse.py, carry the change over, and pin the new hash.
PYNETDICOM_DECODE_MSG = "f51c777e841a76beeaadfe3015bd4f4a68387229a72f13f3a3b7846d01d72284"
PYNETDICOM_RECEIVE_PRIMITIVE = "5f99c86b14a15cefa87d914cda3591ec4d636d4c53a982e945ec9c1828c6e43f"
# DULServiceProvider.run_reactor and _read_pdu_data (EdgeDul's), the FSM's DT_2 (_pass_data).
PYNETDICOM_RUN_REACTOR = "e3a10eb3a0931e4854af33b9496e92d9679522aca26b0e04da8967559b9e2803"
PYNETDICOM_READ_PDU_DATA = "19f2d4e38c13c83586365d93dd5cd96a0c7c665cb37251054b3e1f246e9f431b"
PYNETDICOM_DT_2 = "9ec543394e0b49eb8be2448fc3f9950361b0047db7cf3742844f377bd225ba73"
# The FSM's DT_1 (Sta6 + Evt9: send the P-DATA-TF), which GuardedSocket.send_now stands for.
PYNETDICOM_DT_1 = "82e5c5d4114534fa9ac86124c7c7ef11ff2b98bc73069372cbe413af9df19081"

CT = "1.2.840.10008.5.1.4.1.1.2"
# The last is malformed (non-ASCII, as a sender may send it): written back byte for byte.
UIDS = ["1.2.3.4", "1.2.3.45", "2.25.123456789012345678901234567890123456789", "1.2.3\xe9"]


@pytest.mark.parametrize(
    ("copied", "pinned"),
    [
        (DIMSEMessage.decode_msg, PYNETDICOM_DECODE_MSG),
        (DIMSEServiceProvider.receive_primitive, PYNETDICOM_RECEIVE_PRIMITIVE),
        (DULServiceProvider.run_reactor, PYNETDICOM_RUN_REACTOR),
        (DULServiceProvider._read_pdu_data, PYNETDICOM_READ_PDU_DATA),
        (DT_2, PYNETDICOM_DT_2),
        (DT_1, PYNETDICOM_DT_1),
    ],
)
def test_the_copied_pynetdicom_code_is_the_installed_one(copied: object, pinned: str) -> None:
    source = inspect.getsource(copied)  # type: ignore[arg-type]
    assert hashlib.sha256(source.encode()).hexdigest() == pinned


@pytest.mark.parametrize("instance", UIDS)
@pytest.mark.parametrize(
    "syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless]
)
def test_file_meta_is_what_pynetdicom_writes(instance: str, syntax: str) -> None:
    expected = BytesIO()
    expected.write(b"\x00" * 128 + b"DICM")
    meta = create_file_meta(
        sop_class_uid=UID(CT), sop_instance_uid=UID(instance), transfer_syntax=UID(syntax)
    )
    write_file_meta_info(expected, meta)  # type: ignore[arg-type]
    assert file_meta(CT, instance, syntax) == expected.getvalue()


def _response(message_id: int, instance: str, status: int) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = CT
    rsp.AffectedSOPInstanceUID = instance
    rsp.Status = status
    return rsp


@pytest.mark.parametrize("instance", UIDS)
@pytest.mark.parametrize(("message_id", "status"), [(1, 0x0000), (65535, 0xB007), (7, 0xA700)])
def test_store_response_is_what_pynetdicom_encodes(
    instance: str, message_id: int, status: int
) -> None:
    rsp = _response(message_id, instance, status)
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    assert store_response(rsp) == encode(message.command_set, True, True)


def test_a_response_with_an_error_comment_is_left_to_pynetdicom() -> None:
    rsp = _response(3, UIDS[0], 0xA700)
    rsp.ErrorComment = "object store below free-space floor"  # type: ignore[assignment]
    assert store_response(rsp) is None


def test_a_p_data_tf_is_decoded_as_pynetdicom_decodes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # As the SCP runs: pynetdicom's standard log handlers (on EVT_PDU_RECV among others) off.
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")
    pdu = P_DATA_TF()
    fragments = [(1, b"\x03" + b"c" * 9), (1, b"\x00" + bytes(range(256)) * 40), (3, b"\x02")]
    for context_id, data in fragments:
        item = PresentationDataValueItem()
        item.presentation_context_id, item.presentation_data_value = context_id, data
        pdu.presentation_data_value_items.append(item)
    encoded = pdu.encode()
    stock = Association(AE(), MODE_ACCEPTOR).dul
    edge = Association(AE(), MODE_ACCEPTOR).dul
    edge.__class__ = EdgeDul
    # Joined to its header (the fallback): views of the PDU, pynetdicom's items.
    ours, event = edge._decode_pdu(bytearray(encoded))
    theirs, their_event = stock._decode_pdu(bytearray(encoded))
    assert event == their_event == "Evt10"
    assert isinstance(ours, P_DATA_TF) and isinstance(theirs, P_DATA_TF)
    ours_pdvs = ours.to_primitive().presentation_data_value_list
    assert [(cid, bytes(data)) for cid, data in ours_pdvs] == fragments
    # As the DUL reads it: the body decoded where it lies, not joined to its header.
    body, body_event = cast(EdgeDul, edge)._decode_body(
        bytearray(encoded[:6]), bytearray(encoded[6:])
    )
    assert body_event == "Evt10" and isinstance(body, ReceivedData)  # no pynetdicom items
    body_pdvs = body.to_primitive().presentation_data_value_list
    assert [(cid, bytes(data)) for cid, data in body_pdvs] == fragments
    assert theirs.to_primitive().presentation_data_value_list == fragments


def _encoded(message: DIMSEMessage) -> bytes:
    encoded = encode(message.command_set, True, True)
    assert encoded is not None
    return bytes(encoded)


def _request_command(message_id: int, instance: str, priority: int | None) -> bytes:
    req = C_STORE()
    req.MessageID = message_id
    req.AffectedSOPClassUID = CT
    req.AffectedSOPInstanceUID = instance
    if priority is not None:
        req.Priority = priority
    req.DataSet = BytesIO(b"\0")
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    return _encoded(message)


def _by_pynetdicom(command: bytes) -> C_STORE:
    message = C_STORE_RQ()
    message.command_set = decode(BytesIO(command), True, True)
    message.context_id = 3
    return message.message_to_primitive()  # type: ignore[return-value]


_ATTRIBUTES = (
    "MessageID",
    "AffectedSOPClassUID",
    "AffectedSOPInstanceUID",
    "Priority",
    "MoveOriginatorApplicationEntityTitle",
    "MoveOriginatorMessageID",
    "_context_id",
    "_dataset_path",
    "_dataset_file",
)


@pytest.mark.parametrize("instance", UIDS[:3])
@pytest.mark.parametrize(("message_id", "priority"), [(1, None), (65535, 0x0001), (7, 0x0002)])
def test_a_store_request_decodes_as_pynetdicom_decodes_it(
    instance: str, message_id: int, priority: int | None
) -> None:
    command = _request_command(message_id, instance, priority)
    values = store_request(command)
    assert values is not None
    message = DIMSEMessage()
    message._edge_values = values  # type: ignore[attr-defined]
    message.__class__ = C_STORE_RQ
    message.context_id = 3
    ours, theirs = _to_primitive(message), _by_pynetdicom(command)
    assert isinstance(ours, C_STORE)
    for name in _ATTRIBUTES:
        assert getattr(ours, name) == getattr(theirs, name), name
        assert type(getattr(ours, name)) is type(getattr(theirs, name)), name
    assert ours.AffectedSOPInstanceUID == instance
    assert ours.MessageID == message_id


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, element, len(value)) + value


def test_a_malformed_uid_is_decoded_byte_for_byte_as_pydicom_does() -> None:
    # A non-ASCII UID with trailing spaces and null: the setters see pydicom's value.
    command = _request_command(5, UIDS[0], None)
    odd = command.replace(_element(0x1000, b"1.2.3.4\0"), _element(0x1000, b"1.2.3\xe9 \0"))
    assert odd != command
    odd = _element(0x0000, struct.pack("<I", len(odd) - 12)) + odd[12:]
    values = store_request(odd)
    assert values is not None
    assert values[0x1000] == decode(BytesIO(odd), True, True).AffectedSOPInstanceUID


def _echo_command() -> bytes:
    req = C_ECHO()
    req.MessageID = 1
    req.AffectedSOPClassUID = "1.2.840.10008.1.1"
    message = C_ECHO_RQ()
    message.primitive_to_message(req)
    return _encoded(message)


def _with_move_originator() -> bytes:
    req = C_STORE()
    req.MessageID, req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = 2, CT, UIDS[0]
    req.MoveOriginatorApplicationEntityTitle = "MOVER"
    req.MoveOriginatorMessageID = 9
    req.DataSet = BytesIO(b"\0")
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    return _encoded(message)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(_echo_command(), id="c-echo"),
        pytest.param(_with_move_originator(), id="move-originator"),
        pytest.param(
            _request_command(1, UIDS[0], None).replace(
                _element(0x0800, b"\x01\x00"), _element(0x0800, b"\x01\x01")
            ),
            id="no-dataset",
        ),
        pytest.param(_request_command(1, UIDS[0], None)[:-3], id="truncated"),
        pytest.param(
            _request_command(1, "1.2.3.4", None).replace(b"1.2.3.4\0", b"1.2\\3.4"),
            id="two-values",
        ),
        pytest.param(
            _request_command(1, UIDS[0], None).replace(
                _element(0x0110, b"\x01\x00"), _element(0x0110, b"\x01\x00\x02\x00")
            ),
            id="message-id-vm2",
        ),
        pytest.param(b"", id="empty"),
    ],
)
def test_anything_but_a_plain_store_request_is_left_to_pynetdicom(command: bytes) -> None:
    assert store_request(command) is None


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\x00\x00\x00\x00\x01", id="empty-item"),
        pytest.param(b"\x00\x00\x00\x09\x01\x03abc", id="item-past-the-end"),
        pytest.param(b"\x00\x00\x00\x02\x01\x03\x00\x00", id="trailing-bytes"),
    ],
)
def test_a_malformed_p_data_tf_fails_as_pynetdicom_fails(body: bytes) -> None:
    encoded = bytes([0x04, 0]) + len(body).to_bytes(4, "big") + body
    stock = Association(AE(), MODE_ACCEPTOR).dul
    edge = Association(AE(), MODE_ACCEPTOR).dul
    edge.__class__ = EdgeDul
    with pytest.raises(Exception) as theirs:
        stock._decode_pdu(bytearray(encoded))
    with pytest.raises(Exception) as ours:
        edge._decode_pdu(bytearray(encoded))
    with pytest.raises(Exception) as ours_read:
        cast(EdgeDul, edge)._decode_body(bytearray(encoded[:6]), bytearray(encoded[6:]))
    assert type(ours.value) is type(theirs.value) is type(ours_read.value)


def test_an_adopted_dul_thread_runs_the_edge_loop() -> None:
    # The thread's target is bound when pynetdicom builds the DUL: a class assignment alone
    # would leave it running pynetdicom's run_reactor.
    dul = Association(AE(), MODE_ACCEPTOR).dul
    adopt_dul(dul)
    assert isinstance(dul, EdgeDul)
    target = dul._target  # type: ignore[attr-defined]
    assert target.__func__ is EdgeDul.run_reactor and target.__self__ is dul


@pytest.mark.parametrize("context_id", [1, 3, 255])
def test_a_response_s_p_data_tf_is_what_pynetdicom_encodes(context_id: int) -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = CT
    rsp.AffectedSOPInstanceUID = UIDS[0]
    rsp.Status = 0x0000
    command = store_response(rsp)
    assert command is not None
    primitive = P_DATA()
    primitive.presentation_data_value_list.append((context_id, b"\x03" + command))
    assert p_data_tf(context_id, command) == P_DATA_TF(primitive).encode()


class _Wire:
    """A socket that serves one PDU's bytes as pynetdicom's reader asks for them."""

    def __init__(self, encoded: bytes) -> None:
        self.unread = bytearray(encoded)

    def recv(self, count: int) -> bytearray:
        served, self.unread = self.unread[:count], self.unread[count:]
        return served


def _edge_reading(
    fragments: list[tuple[int, bytes]], monkeypatch: pytest.MonkeyPatch
) -> tuple[EdgeDul, list[P_DATA]]:
    """An EdgeDul in data transfer about to read a P-DATA-TF of ``fragments``, and the list its
    DIMSE provider's primitives go to; as the SCP runs (pynetdicom's log handlers off)."""
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")
    pdu = P_DATA_TF()
    for context_id, data in fragments:
        item = PresentationDataValueItem()
        item.presentation_context_id, item.presentation_data_value = context_id, data
        pdu.presentation_data_value_items.append(item)
    dul = cast(EdgeDul, Association(AE(), MODE_ACCEPTOR).dul)
    dul.__class__ = EdgeDul
    dul.socket = cast(Any, _Wire(pdu.encode()))
    dul.state_machine.current_state = "Sta6"
    received: list[P_DATA] = []
    dul.assoc.dimse.receive_primitive = received.append  # type: ignore[method-assign,assignment]
    return dul, received


FRAGMENTS = [(1, b"\x00" + b"d" * 300), (1, b"\x02" + b"e" * 7)]


def _values(primitive: P_DATA) -> list[tuple[int, bytes]]:
    return [(cid, bytes(data)) for cid, data in primitive.presentation_data_value_list]


def test_a_p_data_tf_in_data_transfer_goes_to_dimse_without_the_queues(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dul, received = _edge_reading(FRAGMENTS, monkeypatch)
    dul._read_pdu_data()
    assert not dul.event_queue.queue and not dul._recv_pdu.queue
    assert dul._pass_data()
    assert [_values(p) for p in received] == [FRAGMENTS]
    assert dul._data is None


def test_with_an_fsm_handler_a_p_data_tf_goes_through_the_state_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dul, received = _edge_reading(FRAGMENTS, monkeypatch)
    transitions: list[str] = []
    dul.assoc.bind(evt.EVT_FSM_TRANSITION, lambda event: transitions.append(event.action))
    dul._read_pdu_data()
    assert not dul._pass_data()  # queued as pynetdicom queues it, for the FSM's DT-2
    assert list(dul.event_queue.queue) == ["Evt10"] and received == []
    dul.state_machine.do_action(dul.event_queue.get(block=False))
    assert [_values(p) for p in received] == [FRAGMENTS]
    assert transitions == ["DT-2"]


def test_a_p_data_tf_after_a_queued_event_keeps_its_place_behind_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dul, received = _edge_reading(FRAGMENTS, monkeypatch)
    dul.event_queue.put("Evt18")  # the ARTIM timer expired before the PDU was read
    dul._read_pdu_data()
    assert list(dul.event_queue.queue) == ["Evt18", "Evt10"] and dul._data is None
    assert not dul._pass_data() and received == []
