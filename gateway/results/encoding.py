"""The result objects as DICOM part-10 bytes: pydicom's writer, the same bytes, less CPU.

Three costs of :func:`pydicom.dcmwrite` that say nothing new about a freshly built object:

* Every dataset written whose encoding is not known to match (all of ours: they were built,
  not read) first has its ambiguous VRs corrected, through its whole subtree, and each of
  its sequence items again when written: an SR's content tree, six levels deep, was walked
  six times over (~5 ms of a chest X-ray's SR and SC). Here the tree is corrected once, top
  down, as the writer's first pass does, and each dataset is then marked as already in the
  encoding written, so the writer's own passes are skipped.
* A flag image's Pixel Data (~12 MB) was copied into a growing buffer and out again; it is
  joined once behind the rest instead.
* Every element went through pydicom's general element writer (~15 µs each; an SR's ~600
  elements ~6 ms): ASCII text, UIDs, numbers and sequences are encoded here, byte for byte
  as pydicom does, and only the rest is handed to it (see ``_dataset_bytes``); the file
  meta too, once pydicom's own check has completed it (~0.5 -> ~0.1 ms an object).
"""

from __future__ import annotations

import copy
import io
import struct
from io import BufferedIOBase

from pydicom import Dataset
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element, write_dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import CUSTOMIZABLE_CHARSET_VR, EXPLICIT_VR_LENGTH_32, IS, DSdecimal, DSfloat

PIXEL_DATA = Tag(0x7FE0, 0x0010)
GROUP_LENGTH = Tag(0x0002, 0x0000)  # File Meta Information Group Length
# (is_implicit_VR, is_little_endian) of Explicit VR Little Endian, what the fast paths assume.
_WRITTEN = (False, True)
# Below this, Pixel Data goes through the writer like any element.
_JOIN_AT = 1 << 20


def part10(dataset: Dataset) -> bytes:
    """The object as a DICOM part-10 file, Explicit VR Little Endian unless it says."""
    if not getattr(dataset, "file_meta", None) or "TransferSyntaxUID" not in dataset.file_meta:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = dataset.SOPClassUID
        meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.file_meta = meta
    if dataset.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian:
        return _written(dataset)  # not the encoding the fast paths assume: pydicom as it is
    _settle(dataset)
    pixels = _joinable_pixels(dataset)
    if pixels is None:
        return _meta(dataset) + _body(dataset)
    del dataset[PIXEL_DATA]
    try:
        head = _meta(dataset) + _body(dataset)
    finally:
        dataset[PIXEL_DATA] = pixels
    value = pixels.value
    pad = b"\0" if len(value) % 2 else b""
    header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, pixels.VR.encode(), 0, len(value) + len(pad))
    return b"".join((head, header, value, pad))


def _written(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _meta(dataset: Dataset) -> bytes:
    """The preamble and file meta information as ``dcmwrite(enforce_file_format=True)``
    writes them for ``dataset``: a copy of its file meta given the data set's UIDs and what
    the standard requires (pydicom's validate_file_meta), its group length counted."""
    meta = FileMetaDataset()
    for element in dataset.file_meta:
        meta.add(copy.copy(element))  # the additions below stay off the object's own
    for keyword, own in (
        ("MediaStorageSOPClassUID", "SOPClassUID"),
        ("MediaStorageSOPInstanceUID", "SOPInstanceUID"),
    ):
        given, value = meta.get(keyword), dataset.get(own)
        if given is None or (value and value != given):
            setattr(meta, keyword, value)
    validate_file_meta(meta, enforce_standard=True)
    group = b"".join(
        _element(meta.get_item(tag), default_encoding)
        for tag in sorted(meta.keys())
        if tag != GROUP_LENGTH
    )
    preamble = getattr(dataset, "preamble", None) or b"\0" * 128
    if len(preamble) != 128:
        raise ValueError("a preamble must be 128 bytes long")
    length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(group))
    return b"".join((preamble, b"DICM", length, group))


def _body(dataset: Dataset) -> bytes:
    """The data set after the file meta, as dcmwrite writes it (group 0000 and 0002
    elements are refused there, and so here)."""
    if {tag >> 16 for tag in list(dataset.keys())} & {0, 2}:
        raise ValueError("command or file meta elements in the data set")
    if PIXEL_DATA in dataset:
        dataset[PIXEL_DATA].is_undefined_length = False  # as dcmwrite sets it: native
    return _dataset_bytes(dataset, default_encoding)


def _joinable_pixels(dataset: Dataset) -> DataElement | None:
    """Pixel Data that can be written behind the rest: native, large, the last element."""
    if PIXEL_DATA not in dataset or max(dataset.keys()) != PIXEL_DATA:
        return None
    element = dataset[PIXEL_DATA]
    value = element.value
    if element.VR not in ("OB", "OW") or not isinstance(value, bytes) or len(value) < _JOIN_AT:
        return None
    return element


def _settle(dataset: Dataset) -> None:
    """What the writer's first pass does to ``dataset`` and its items, done once: ambiguous
    VRs corrected and elements read from bytes decoded, wherever a dataset's encoding or
    character set differs from what is written; each such dataset then says it is in that
    encoding, so that the writer does not do it again for every level of the tree."""
    if dataset.original_encoding != _WRITTEN or (
        dataset.original_character_set != dataset._character_set
    ):
        correct_ambiguous_vr(dataset, True)  # the whole subtree, as the writer's first call
        _mark(dataset)
        return
    for element in dataset.elements():
        if isinstance(element, DataElement) and element.VR == "SQ":
            for item in element.value:
                _settle(item)


def _mark(dataset: Dataset) -> None:
    """Decode every element (as the writer does, reading them by tag) and record the dataset
    as encoded as written; the same for every item below."""
    for tag in list(dataset.keys()):
        element = dataset[tag]
        if element.VR == "SQ":
            for item in element.value:
                if item.original_encoding != _WRITTEN or (
                    item.original_character_set != item._character_set
                ):
                    _mark(item)
                else:
                    _settle(item)
    dataset.set_original_encoding(*_WRITTEN, dataset._character_set)


# --- the data set's elements ------------------------------------------------------------
#
# pydicom's writer spends ~15 µs on every element (a buffer per element, the character
# sets converted again, a writer looked up, each value checked for emptiness four ways): an
# SR's ~600 elements cost ~10 ms. The values our objects hold are nearly all plain ASCII
# text, UIDs and numbers, whose bytes do not depend on the character set; those are encoded
# here as pydicom encodes them, and every other element (Person Names, dates as objects,
# non-ASCII text, raw or buffered values) goes through pydicom's own element writer.

_ITEM = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)  # an item of undefined length
_ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
_SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
_UNDEFINED = 0xFFFFFFFF
_TEXT_PADDING = {vr: b" " for vr in ("AE", "AS", "CS", "DA", "DT", "TM", "UR")}
_TEXT_PADDING.update({vr: b" " for vr in CUSTOMIZABLE_CHARSET_VR if vr != "PN"})
_TEXT_PADDING["UI"] = b"\0"
_NUMBERS = {"US": "H", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_NUMBER_STRINGS = frozenset({"DS", "IS"})
_BYTES = frozenset({"OB", "OD", "OF", "OL", "OW", "OV"})


def _dataset_bytes(dataset: Dataset, parent_encoding: str | list[str]) -> bytes:
    """What :func:`pydicom.filewriter.write_dataset` writes of ``dataset`` in Explicit VR
    Little Endian."""
    if dataset.original_encoding != _WRITTEN or (
        dataset.original_character_set != dataset._character_set
    ):
        return _pydicom_dataset(dataset, parent_encoding)  # not settled: pydicom's own way
    encodings = dataset.get("SpecificCharacterSet", parent_encoding)
    parts: list[bytes] = []
    for tag in sorted(dataset.keys()):
        if tag.element == 0 and tag.group > 6:
            continue  # retired group lengths are not written
        parts.append(_element(dataset.get_item(tag), encodings))
    return b"".join(parts)


def _element(element: DataElement | RawDataElement, encodings: str | list[str]) -> bytes:
    encoded = _element_bytes(element, encodings) if type(element) is DataElement else None
    return _pydicom_element(element, encodings) if encoded is None else encoded


def _element_bytes(element: DataElement, encodings: str | list[str]) -> bytes | None:
    """The element as pydicom writes it, or None where it is left to pydicom."""
    vr, value = element.VR, element.value
    if vr == "SQ":
        return _sequence_bytes(element, encodings)
    if isinstance(value, BufferedIOBase):
        return None
    encoded = _value_bytes(vr, value)
    if encoded is None:
        return None
    group, number = element.tag >> 16, element.tag & 0xFFFF
    if vr in EXPLICIT_VR_LENGTH_32:
        return struct.pack("<HH2sHI", group, number, vr.encode(), 0, len(encoded)) + encoded
    if len(encoded) > 0xFFFF:
        return None  # pydicom writes it as UN, with a warning
    return struct.pack("<HH2sH", group, number, vr.encode(), len(encoded)) + encoded


def _value_bytes(vr: str, value: object) -> bytes | None:
    if value is None or (isinstance(value, str) and not value):
        return b""
    padding = _TEXT_PADDING.get(vr)
    if padding is not None:
        text = _ascii_text(value)
        if text is None:
            return None
        return text + padding if len(text) % 2 else text
    if vr in _NUMBERS:
        return _numbers(_NUMBERS[vr], value)
    if vr in _NUMBER_STRINGS:
        return _number_strings(value)
    if vr in _BYTES and type(value) is bytes:
        return value + b"\0" if len(value) % 2 else value
    return None


def _ascii_text(value: object) -> bytes | None:
    """ASCII text (one value or several) as any character set writes it."""
    if isinstance(value, str):
        return value.encode("ascii") if value.isascii() else None
    if (
        isinstance(value, (MultiValue, list, tuple))
        and value
        and all(isinstance(v, str) and v.isascii() for v in value)
    ):
        return "\\".join(value).encode("ascii")
    return None


def _numbers(code: str, value: object) -> bytes | None:
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return struct.pack("<" + code, value)
        if isinstance(value, (MultiValue, list)):
            return struct.pack(f"<{len(value)}{code}", *value)
    except struct.error:
        return None  # pydicom says what is wrong with it
    return None


def _number_strings(value: object) -> bytes | None:
    values = value if isinstance(value, (MultiValue, list, tuple)) else [value]
    if not values or not all(isinstance(v, (IS, DSfloat, DSdecimal)) for v in values):
        return None
    text = "\\".join(v.original_string if hasattr(v, "original_string") else str(v) for v in values)
    if not text.isascii():
        return None
    return (text + " " if len(text) % 2 else text).encode("ascii")


def _sequence_bytes(element: DataElement, encodings: str | list[str]) -> bytes:
    items = element.value
    inner = convert_encodings(encodings or [default_encoding])
    parts: list[bytes] = []
    for item in items:
        body = _dataset_bytes(item, inner)
        if getattr(item, "is_undefined_length_sequence_item", False):
            parts += (_ITEM, body, _ITEM_END)
        else:
            parts += (struct.pack("<HHI", 0xFFFE, 0xE000, len(body)), body)
    value = b"".join(parts)
    undefined = element.is_undefined_length
    group, number = element.tag >> 16, element.tag & 0xFFFF
    length = _UNDEFINED if undefined else len(value)
    head = struct.pack("<HH2sHI", group, number, b"SQ", 0, length)
    return head + value + _SEQUENCE_END if undefined else head + value


def _pydicom_element(element: DataElement | RawDataElement, encodings: str | list[str]) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = _WRITTEN
    write_data_element(buffer, element, encodings)
    return buffer.getvalue()


def _pydicom_dataset(dataset: Dataset, encodings: str | list[str]) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = _WRITTEN
    write_dataset(buffer, dataset, encodings)
    return buffer.getvalue()
