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

The plain case is a :class:`PlainHeader`, not a pydicom ``Dataset``: building the Dataset,
its File Meta Information and its character set cost about as much as the walk itself. It
answers the two questions ingest asks of a header (:data:`Header`): an element, raw, by tag
(``get_item``), and a value converted by pydicom (``get``, for what is not plain: the
Dataset is built then, once). Its text codec is what pydicom would decode the dataset's
text with, so ``gateway.ingest.tags`` can decode names and descriptions itself.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, TypeAlias

from pydicom import Dataset
from pydicom.charset import default_encoding, python_encoding
from pydicom.dataelem import RawDataElement
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
_TRANSFER_SYNTAX_UID = 0x00020010
_IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
_MAX_DEPTH = 8  # nested sequences walked; deeper ones are pydicom's to read
_HEADER = struct.Struct("<HHI")  # implicit VR: tag, 4-byte length
_EXPLICIT = struct.Struct("<HH2sH")  # explicit VR: tag, VR, 2-byte length


class _Unplain(Exception):
    """Not the plain case: the caller reads the header with pydicom."""


class PlainHeader:
    """A plain header's wanted elements, raw, by tag, with its File Meta Information's; what
    pydicom's ``Dataset`` would have held of them, without building it."""

    __slots__ = ("_dataset", "elements", "implicit", "meta", "transfer_syntax_uid")

    def __init__(
        self,
        elements: dict[int, RawDataElement],
        meta: dict[int, RawDataElement],
        transfer_syntax_uid: str,
    ) -> None:
        self.elements = elements
        self.meta = meta
        self.transfer_syntax_uid = transfer_syntax_uid
        self.implicit = transfer_syntax_uid == _IMPLICIT_VR_LITTLE_ENDIAN
        self._dataset: Dataset | None = None

    def get_item(self, tag: int) -> RawDataElement | None:
        """The element, raw (as ``Dataset.get_item`` gives an unconverted one), or None."""
        return self.elements.get(tag)

    def get(self, key: str | int, default: Any = None) -> Any:
        """As ``Dataset.get``: the element converted by pydicom (a tag) or its value (a
        keyword)."""
        return self.dataset().get(key, default)

    def text_codec(self) -> str | None:
        """The Python codec pydicom decodes this dataset's text with where no escape sequence
        is in a value; None where the Specific Character Set is not plain (see
        :func:`_codec`), which pydicom is then left to decode."""
        charset = self.elements.get(_SPECIFIC_CHARACTER_SET)
        return _codec(charset.value if charset is not None else None)

    @property
    def converted(self) -> bool:
        """Whether pydicom's Dataset was built: something was not plain enough to read raw."""
        return self._dataset is not None

    def dataset(self) -> Dataset:
        """The pydicom Dataset of these elements, as ``dcmread`` would have read them."""
        if self._dataset is None:
            dataset = Dataset({BaseTag(tag): raw for tag, raw in self.elements.items()})
            meta = FileMetaDataset()
            for tag, raw in self.meta.items():
                meta[tag] = raw
            dataset.file_meta = meta
            dataset.set_original_encoding(self.implicit, True, dataset._character_set)
            self._dataset = dataset
        return self._dataset


# What ingest reads a header as: the plain case, or what pydicom read.
Header: TypeAlias = PlainHeader | Dataset


def transfer_syntax(header: Header) -> str | None:
    """The Transfer Syntax UID of the header's File Meta Information, None without one."""
    if isinstance(header, PlainHeader):
        return header.transfer_syntax_uid
    meta = getattr(header, "file_meta", None)
    return meta.get("TransferSyntaxUID") if meta else None


@lru_cache(maxsize=32)
def _codec(charset: bytes | None) -> str | None:
    """The codec pydicom's ``Dataset._character_set`` starts with, in the plain cases only: no
    Specific Character Set (pydicom's default), or one term that ``convert_encodings`` finds
    as it is in ``python_encoding``. Several terms (code extensions), an empty value, and
    terms pydicom corrects or does not know (each with a warning) are left to pydicom."""
    if charset is None:
        return default_encoding
    try:
        text = charset.decode("ascii")
    except UnicodeDecodeError:
        return None
    term = text.rstrip("\x00 ")  # as pydicom converts a CS value: trailing padding only
    if not term or "\\" in term:
        return None
    return python_encoding.get(term)


def read_header(
    prefix: bytes, whole: bool, wanted: frozenset[int]
) -> tuple[PlainHeader, int] | None:
    """The dataset's ``wanted`` top-level elements (and its Specific Character Set) as raw
    elements, with its File Meta Information, and the offset of the Pixel Data element (the
    end of ``prefix`` when it has none and is the ``whole`` file); None where the header is
    not the plain case (see the module's docstring), or runs past ``prefix``."""
    try:
        meta, offset = _file_meta(prefix)
        syntax = _transfer_syntax(meta)
        if syntax in (None, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian):
            return None
        implicit = syntax == _IMPLICIT_VR_LITTLE_ENDIAN
        if offset < len(prefix) and _looks_implicit(prefix, offset) != implicit:
            return None  # pydicom reads what it finds, with a warning: leave it to it
        elements, position = _walk(prefix, offset, implicit, wanted | {_SPECIFIC_CHARACTER_SET})
    except (_Unplain, struct.error, UnicodeDecodeError):
        return None
    if position == len(prefix) and not whole:
        return None  # no Pixel Data within the prefix: the rest of the file may hold some
    assert syntax is not None
    return PlainHeader(elements, meta, syntax), position


def _file_meta(prefix: bytes) -> tuple[dict[int, RawDataElement], int]:
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
    return elements, end


def _transfer_syntax(meta: dict[int, RawDataElement]) -> str | None:
    """The meta's Transfer Syntax UID as pydicom's conversion of one UI value gives it;
    anything less plain (another VR, several values) is pydicom's to read."""
    raw = meta.get(_TRANSFER_SYNTAX_UID)
    if raw is None:
        return None
    text = (raw.value or b"").decode(default_encoding).rstrip(" \x00")
    if raw.VR != "UI" or "\\" in text:
        raise _Unplain
    return text.strip()


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
) -> tuple[dict[int, RawDataElement], int]:
    """Top-level elements from ``offset`` to the Pixel Data (or ``end``, or the end of
    ``data``): those in ``wanted`` (every one for None) kept raw; the offset where the walk
    stopped."""
    keep = None if wanted is None else frozenset(wanted)
    stop = len(data) if end is None else end
    elements: dict[int, RawDataElement] = {}
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
            key = BaseTag(tag)  # pydicom's conversion takes the tag from the element
            elements[tag] = RawDataElement(
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
