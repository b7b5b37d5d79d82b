"""Pixel Data that is impossible on its face, refused before anything is stored.

Ingest stores what it receives as received and decodes nothing; but some Pixel Data cannot
be an image whatever a decoder makes of it, and the sender is better told now (``0xC000``
with the reason) than a job failing later:

- a value cut short (the file ends inside it, or encapsulated Pixel Data has no end);
- native Pixel Data whose length is not Rows × Columns × frames × samples × bytes (one pad
  byte allowed after an odd length);
- encapsulated Pixel Data with fewer fragments than frames (a frame may span fragments, a
  fragment never holds two frames), or whose items do not walk to the end.

Only headers are read: 8 bytes per item, with a seek over each value, so a large instance is
never held whole. What cannot be judged without decoding (a deflated dataset's pixels, a
codestream's own header) is left to the inference stage's checks.
"""

from __future__ import annotations

import re
import struct
from typing import Any, BinaryIO, cast

from pydicom import Dataset
from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)

from gateway.dimse_status import Status
from gateway.errors import InvalidInstance, PixelDataError
from gateway.ingest.header import Header, transfer_syntax
from gateway.ingest.tags import single_us
from gateway.pixel_data import (
    UNDEFINED_LENGTH,
    PixelGeometry,
    fragments_per_frame_possible,
    pixel_geometry,
    read_items,
)

_LONG_VRS = frozenset({b"OB", b"OW", b"OD", b"OF", b"OL", b"OV", b"UN"})
# The geometry's attributes, read from the raw elements (see _RawGeometry): tag and VR.
_GEOMETRY: dict[str, tuple[int, str]] = {
    "Rows": (0x00280010, "US"),
    "Columns": (0x00280011, "US"),
    "SamplesPerPixel": (0x00280002, "US"),
    "BitsAllocated": (0x00280100, "US"),
    "BitsStored": (0x00280101, "US"),
    "NumberOfFrames": (0x00280008, "IS"),
    "PhotometricInterpretation": (0x00280004, "CS"),
}
GEOMETRY_TAGS = frozenset(tag for tag, _vr in _GEOMETRY.values())  # what the check reads
_DIGITS = re.compile(r"[+-]?[0-9]+")
_ABSENT = object()


def check_pixel_data(handle: BinaryIO, position: int, size: int, dataset: Header) -> None:
    """Raise :class:`InvalidInstance` (``0xC000``) for Pixel Data impossible on its face.

    ``dataset`` was read with ``stop_before_pixels``, which left ``handle`` at ``position``,
    the Pixel Data element's tag, unread; ``size`` is where the received bytes end.
    """
    syntax = transfer_syntax(dataset)
    if position >= size or syntax == DeflatedExplicitVRLittleEndian:
        return
    order = ">" if syntax == ExplicitVRBigEndian else "<"
    handle.seek(position)
    element = handle.read(12)
    header = 12 if _explicit(element) else 8
    (length,) = struct.unpack_from(order + "I", element, header - 4)
    geometry = _declared(dataset)
    if length == UNDEFINED_LENGTH:
        _check_encapsulated(handle, position + header, size, geometry)
        return
    if position + header + length > size:
        arrived = size - position - header
        raise _refusal(f"truncated: Pixel Data declares {length} bytes, {arrived} arrived")
    if geometry is not None and not geometry.native_length_matches(length):
        raise _refusal(  # ASCII and the numbers first: the Error Comment keeps 64 characters
            f"Pixel Data has {length} bytes, not {geometry.native_length()} (Rows x Columns x "
            f"frames x samples x bits = {geometry.rows} x {geometry.columns} x "
            f"{geometry.frames} x {geometry.samples} x {geometry.bits_allocated})"
        )


def _explicit(element: bytes) -> bool:
    """Whether the Pixel Data element has an explicit VR. A file may say one thing in its
    meta and be encoded in the other (pydicom reads what it finds), so look: read as an
    implicit length, "OB\\0\\0" and its kin are odd numbers, which Pixel Data never is."""
    return element[4:6] in _LONG_VRS and element[6:8] == b"\0\0"


def _check_encapsulated(
    handle: BinaryIO, start: int, size: int, geometry: PixelGeometry | None
) -> None:
    try:
        items, ended = read_items(handle, start, size)
    except PixelDataError as exc:
        raise _refusal(str(exc)) from exc
    if not ended:
        raise _refusal("truncated: encapsulated Pixel Data has no end")
    fragments = max(len(items) - 1, 0)  # the first item is the Basic Offset Table
    frames = geometry.frames if geometry is not None else 1
    if not items or not fragments_per_frame_possible(fragments, frames):
        raise _refusal(
            f"encapsulated Pixel Data: {fragments} fragments for {frames} frames "
            "(a fragment never holds two frames)"
        )


def _declared(dataset: Header) -> PixelGeometry | None:
    """The declared geometry, or None where it is incomplete (then nothing is compared:
    ingest keeps what it cannot judge, inference refuses it with the reason)."""
    try:
        return pixel_geometry(cast(Dataset, _RawGeometry(dataset)))
    except PixelDataError:
        return None


class _RawGeometry:
    """What :func:`pixel_geometry` reads (``get`` by keyword), taken from the raw elements
    when they are plain: one 2-byte US, an IS of digits, a CS of one value, in the values
    pydicom's conversion gives. That conversion (a keyword lookup, the element converted,
    an ``IS`` object) was half of the Pixel Data check's cost on every C-STORE; anything
    else (empty, several values, another VR, converted already) still goes through pydicom,
    so the checks and their reasons stay :func:`pixel_geometry`'s."""

    def __init__(self, dataset: Header) -> None:
        self._dataset = dataset

    def get(self, keyword: str, default: Any = None) -> Any:
        value = _raw_geometry_value(self._dataset, keyword)
        if value is _ABSENT:
            return default
        if value is None:
            return self._dataset.get(keyword, default)
        return value


def _raw_geometry_value(dataset: Header, keyword: str) -> object:
    """The plain value, :data:`_ABSENT`, or None: read it through pydicom."""
    tag, vr = _GEOMETRY[keyword]
    element = dataset.get_item(tag)
    if element is None:
        return _ABSENT
    if vr == "US":
        return single_us(element)
    if not isinstance(element, RawDataElement) or element.VR not in (None, vr):
        return None
    raw = element.value
    text = raw.decode(default_encoding).rstrip(" \x00") if raw else ""
    if not text or "\\" in text:
        return None
    if vr == "IS":
        text = text.strip()
        return int(text) if _DIGITS.fullmatch(text) else None
    return text


def _refusal(reason: str) -> InvalidInstance:
    return InvalidInstance(reason, Status.CANNOT_UNDERSTAND)
