"""What a dataset declares about its pixels, and the items of encapsulated Pixel Data.

Shared by ingest (which refuses what is impossible on its face) and inference (which checks
each codestream against the declaration before decoding). Nothing here allocates from a
length it has not checked against the bytes that are really there: an item's length is
compared with what remains before anything is read past its header.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from pydicom import Dataset

from gateway.errors import PixelDataError

ITEM = (0xFFFE, 0xE000)
SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)
_ITEM_HEADER = struct.Struct("<HHI")
UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class PixelGeometry:
    """Rows, Columns, samples, bits and frames as the dataset declares them."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    frames: int
    photometric: str

    @property
    def pixels_per_frame(self) -> int:
        return self.rows * self.columns

    @property
    def pixels(self) -> int:
        return self.pixels_per_frame * self.frames

    def native_length(self) -> int:
        """The bytes of native (uncompressed) Pixel Data, before the even-length pad."""
        values = self.pixels * self.samples
        if self.photometric == "YBR_FULL_422":  # two chroma values per two pixels
            values = self.pixels * 2
        if self.bits_allocated == 1:
            return (values + 7) // 8
        return values * (self.bits_allocated // 8)

    def native_length_matches(self, length: int) -> bool:
        expected = self.native_length()
        return length == expected or (expected % 2 == 1 and length == expected + 1)


def pixel_geometry(dataset: Dataset) -> PixelGeometry:
    """The declared geometry; :class:`PixelDataError` when an attribute is missing or
    impossible (a zero, a negative, a BitsAllocated that is no whole number of bytes)."""
    rows = _whole(dataset, "Rows")
    columns = _whole(dataset, "Columns")
    samples = _whole(dataset, "SamplesPerPixel", 1)
    bits_allocated = _whole(dataset, "BitsAllocated")
    bits_stored = _whole(dataset, "BitsStored", bits_allocated)
    frames = _whole(dataset, "NumberOfFrames", 1)
    if samples not in (1, 3, 4):
        raise PixelDataError(f"SamplesPerPixel {samples} is not 1, 3 or 4")
    if bits_allocated != 1 and (bits_allocated % 8 or bits_allocated > 64):
        raise PixelDataError(f"BitsAllocated {bits_allocated} is not 1 or a whole byte ≤ 64")
    if bits_stored > bits_allocated:
        raise PixelDataError(f"BitsStored {bits_stored} exceeds BitsAllocated {bits_allocated}")
    photometric = str(dataset.get("PhotometricInterpretation", "") or "").strip()
    return PixelGeometry(rows, columns, samples, bits_allocated, bits_stored, frames, photometric)


def _whole(dataset: Dataset, keyword: str, default: int | None = None) -> int:
    value = dataset.get(keyword)
    if value is None or value == "":
        if default is None:
            raise PixelDataError(f"{keyword} is missing")
        return default
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise PixelDataError(f"{keyword} {str(value)[:40]!r} is not a whole number") from exc
    if number < 1:
        raise PixelDataError(f"{keyword} is {number}")
    return number


@dataclass(frozen=True)
class Item:
    """One item of encapsulated Pixel Data: where its value starts and how long it is."""

    offset: int  # of the value, after the 8-byte item header
    length: int

    @property
    def tag_offset(self) -> int:
        return self.offset - _ITEM_HEADER.size


def read_items(handle: BinaryIO, start: int, end: int) -> tuple[list[Item], bool]:
    """The items of encapsulated Pixel Data in ``[start, end)`` of ``handle`` (the Basic
    Offset Table first), and whether the Sequence Delimitation Item was reached.

    Only the 8-byte headers are read; values are skipped by seeking. An item that is not an
    item, has an undefined length, or runs past ``end`` raises
    :class:`PixelDataError`.
    """
    items: list[Item] = []
    position = start
    while position + _ITEM_HEADER.size <= end:
        handle.seek(position)
        header = handle.read(_ITEM_HEADER.size)
        if len(header) < _ITEM_HEADER.size:
            break
        group, element, length = _ITEM_HEADER.unpack(header)
        if (group, element) == SEQUENCE_DELIMITER:
            return items, True
        if (group, element) != ITEM:
            raise PixelDataError(
                f"encapsulated Pixel Data: ({group:04X},{element:04X}) where item "
                f"{len(items)} should start"
            )
        if length == UNDEFINED_LENGTH:
            raise PixelDataError(f"encapsulated Pixel Data: item {len(items)} has no length")
        value = position + _ITEM_HEADER.size
        if value + length > end:
            raise PixelDataError(
                f"encapsulated Pixel Data: item {len(items)} declares {length} bytes, "
                f"{end - value} remain"
            )
        items.append(Item(value, length))
        position = value + length
    if position != end:
        raise PixelDataError(
            f"encapsulated Pixel Data: {end - position} bytes after item {len(items) - 1}"
        )
    return items, False


def fragments_per_frame_possible(fragments: int, frames: int) -> bool:
    """A frame may span several fragments, but a fragment never holds two frames: fewer
    fragments than frames cannot be decoded whatever the offset tables say."""
    return fragments >= frames
