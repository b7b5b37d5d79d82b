"""The SCP's own encodings of a spooled file's meta and of a C-STORE-RSP are byte for byte
what pynetdicom and pydicom write; the pynetdicom code the provider copies is pinned."""

from __future__ import annotations

import hashlib
import inspect
from io import BytesIO

import pytest
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import AE
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_items import PresentationDataValueItem

from gateway.ingest.dimse import EdgeDul, file_meta, store_response

# sha256 of pynetdicom 3.0.4's DIMSEMessage.decode_msg and DIMSEServiceProvider
# .receive_primitive. When pynetdicom changes either, compare it with the copy in
# gateway/ingest/dimse.py, carry the change over, and pin the new hash.
PYNETDICOM_DECODE_MSG = "f51c777e841a76beeaadfe3015bd4f4a68387229a72f13f3a3b7846d01d72284"
PYNETDICOM_RECEIVE_PRIMITIVE = "5f99c86b14a15cefa87d914cda3591ec4d636d4c53a982e945ec9c1828c6e43f"

CT = "1.2.840.10008.5.1.4.1.1.2"
# The last is malformed (non-ASCII, as a sender may send it): written back byte for byte.
UIDS = ["1.2.3.4", "1.2.3.45", "2.25.123456789012345678901234567890123456789", "1.2.3\xe9"]


@pytest.mark.parametrize(
    ("copied", "pinned"),
    [
        (DIMSEMessage.decode_msg, PYNETDICOM_DECODE_MSG),
        (DIMSEServiceProvider.receive_primitive, PYNETDICOM_RECEIVE_PRIMITIVE),
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


def test_a_p_data_tf_is_decoded_as_pynetdicom_decodes_it() -> None:
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
    ours, event = edge._decode_pdu(bytearray(encoded))
    theirs, their_event = stock._decode_pdu(bytearray(encoded))
    assert event == their_event == "Evt10"
    assert isinstance(ours, P_DATA_TF) and isinstance(theirs, P_DATA_TF)
    ours_pdvs = ours.to_primitive().presentation_data_value_list
    assert [(cid, bytes(data)) for cid, data in ours_pdvs] == fragments
    assert theirs.to_primitive().presentation_data_value_list == fragments
