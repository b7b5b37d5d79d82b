"""A received instance's header, read straight from its bytes: the few top-level elements
the index and the Pixel Data check read, and where the Pixel Data starts.

pydicom's ``dcmread(stop_before_pixels=True)`` makes an element object for every element,
converts the File Meta Information and reads every sequence through; on a CT slice that was
~0.2 ms of the ~3.7 ms of CPU an instance cost the SCP. Here the elements are walked with
``struct`` and only the wanted ones (:data:`WANTED`) kept, as the raw elements pydicom
would have made of them, so their values still go through pydicom's own conversion (the
character set included).

Only the plain case is read here: a preamble and ``DICM``, an explicit VR little endian
File Meta Information, a dataset in implicit or explicit VR little endian (what the meta
says, and what its first element shows), the wanted elements of defined length, sequences
whose items walk to their ends. Anything else — big endian, deflate, no preamble, a header
cut off by the prefix, a structure that does not walk — gives None, and the caller reads it
with pydicom as before, with pydicom's errors.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from pydicom import Dataset
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

UNDEFINED = 0xFFFFFFFF
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # pydicom's stop_before_pixels
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_VRS = frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT"}
    | {b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
)
_SPECIFIC_CHARACTER_SET = 0x00080005
_MAX_DEPTH = 8  # nested sequences walked; deeper ones are pydicom's to read
_HEADER = struct.Struct("<HHI")  # implicit VR: tag, 4-byte length
_EXPLICIT = struct.Struct("<HH2sH")  # explicit VR: tag, VR, 2-byte length


class _Unplain(Exception):
    """Not the plain case: the caller reads the header with pydicom."""


def read_header(prefix: bytes, whole: bool, wanted: frozenset[int]) -> tuple[Dataset, int] | None:
    """The dataset's ``wanted`` top-level elements (and its Specific Character Set) as raw
    elements, with its File Meta Information, and the offset of the Pixel Data element (the
    end of ``prefix`` when it has none and is the ``whole`` file); None where the header is
    not the plain case (see the module's docstring), or runs past ``prefix``."""
    try:
        meta, offset = _file_meta(prefix)
        syntax = meta.get("TransferSyntaxUID")
        if syntax in (None, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian):
            return None
        implicit = syntax == "1.2.840.10008.1.2"
        if offset < len(prefix) and _looks_implicit(prefix, offset) != implicit:
            return None  # pydicom reads what it finds, with a warning: leave it to it
        elements, position = _walk(prefix, offset, implicit, wanted | {_SPECIFIC_CHARACTER_SET})
    except (_Unplain, struct.error, UnicodeDecodeError):
        return None
    if position == len(prefix) and not whole:
        return None  # no Pixel Data within the prefix: the rest of the file may hold some
    dataset = Dataset(elements)
    dataset.file_meta = meta
    dataset.set_original_encoding(implicit, True, dataset._character_set)
    return dataset, position


def _file_meta(prefix: bytes) -> tuple[FileMetaDataset, int]:
    """The File Meta Information (raw elements) and where the dataset starts."""
    if len(prefix) < 144 or prefix[128:132] != b"DICM":
        raise _Unplain
    group, element, vr, length = _EXPLICIT.unpack_from(prefix, 132)
    if (group, element, vr, length) != (2, 0, b"UL", 4):
        raise _Unplain  # no group length: pydicom finds the meta's end its own way
    (group_length,) = struct.unpack_from("<I", prefix, 140)
    end = 144 + group_length
    if end > len(prefix):
        raise _Unplain
    elements, offset = _walk(prefix, 144, False, None, end=end)
    if offset != end or any(tag >> 16 != 2 for tag in elements):
        raise _Unplain
    meta = FileMetaDataset()
    for tag, raw in elements.items():
        meta[tag] = raw
    return meta, end


def _looks_implicit(prefix: bytes, offset: int) -> bool:
    # pydicom's own test (filereader._is_implicit_vr): two capital letters where an explicit
    # VR would be.
    vr = prefix[offset + 4 : offset + 6]
    return not (len(vr) == 2 and 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B)


def _walk(
    data: bytes,
    offset: int,
    implicit: bool,
    wanted: Iterable[int] | None,
    *,
    end: int | None = None,
) -> tuple[dict[BaseTag, DataElement | RawDataElement], int]:
    """Top-level elements from ``offset`` to the Pixel Data (or ``end``, or the end of
    ``data``): those in ``wanted`` (every one for None) kept raw; the offset where the walk
    stopped."""
    keep = None if wanted is None else frozenset(wanted)
    stop = len(data) if end is None else end
    elements: dict[BaseTag, DataElement | RawDataElement] = {}
    while offset < stop:
        tag, vr, length, header = _element(data, offset, implicit)
        if tag in _PIXEL_TAGS:
            return elements, offset
        value_at = offset + header
        if length == UNDEFINED:
            if keep is None or tag in keep or not _may_be_sequence(vr, implicit):
                raise _Unplain  # kept elements are values, not sequences
            offset = _skip_sequence(data, value_at, implicit, 1)
            continue
        if value_at + length > len(data):
            raise _Unplain  # runs past the prefix (or a truncated file: pydicom says which)
        if keep is None or tag in keep:
            value = bytes(data[value_at : value_at + length])
            vr_text = None if implicit else vr.decode("ascii")
            key = BaseTag(tag)
            elements[key] = RawDataElement(
                key, vr_text, length, value, value_at, implicit, True, True, False
            )
        offset = value_at + length
    return elements, offset


def _element(data: bytes, offset: int, implicit: bool) -> tuple[int, bytes, int, int]:
    """Tag, VR (b"" when implicit), length and header size of the element at ``offset``."""
    if implicit:
        group, element, length = _HEADER.unpack_from(data, offset)
        return _tag(group, element), b"", length, 8
    group, element, vr, short = _EXPLICIT.unpack_from(data, offset)
    tag = _tag(group, element)
    if vr in _LONG_VRS:
        (length,) = struct.unpack_from("<I", data, offset + 8)
        return tag, vr, length, 12
    if vr in _SHORT_VRS:
        return tag, vr, short, 8
    raise _Unplain  # not a VR pydicom would take without its own handling


def _tag(group: int, element: int) -> int:
    if group == 0xFFFE:
        raise _Unplain  # an item or delimiter where an element should be
    return group << 16 | element


def _may_be_sequence(vr: bytes, implicit: bool) -> bool:
    # Undefined length is allowed for SQ, and for UN holding an implicit VR sequence.
    return implicit or vr in (b"SQ", b"UN")


def _skip_sequence(data: bytes, offset: int, implicit: bool, depth: int) -> int:
    """The offset just past the sequence of undefined length whose items start at
    ``offset``: each item walked to its end, the sequence to its delimiter."""
    if depth > _MAX_DEPTH:
        raise _Unplain
    while True:
        group, element, length = _HEADER.unpack_from(data, offset)
        tag = group << 16 | element
        offset += 8
        if tag == _SEQUENCE_END:
            return offset
        if tag != _ITEM:
            raise _Unplain
        if length != UNDEFINED:
            offset += length
            continue
        offset = _skip_item(data, offset, implicit, depth)


def _skip_item(data: bytes, offset: int, implicit: bool, depth: int) -> int:
    """The offset past an item of undefined length whose elements start at ``offset``."""
    while True:
        group, element, length = _HEADER.unpack_from(data, offset)
        if group << 16 | element == _ITEM_END:
            return offset + 8
        _tag, vr, length, header = _element(data, offset, implicit)
        offset += header
        if length == UNDEFINED:
            if not _may_be_sequence(vr, implicit):
                raise _Unplain
            offset = _skip_sequence(data, offset, implicit, depth + 1)
        else:
            offset += length
        if offset > len(data):
            raise _Unplain
