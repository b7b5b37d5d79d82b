"""The headers of compressed frames, read without decoding them.

JPEG (SOF0–SOF15: baseline, extended, lossless SOF3), JPEG-LS (SOF55, 0xFFF7), JPEG 2000
and HTJ2K (the SIZ marker segment, of a raw codestream or inside a JP2 file's ``jp2c``
box), and the RLE header. A decoder allocates what these headers declare, not what the
dataset says, so they are what must agree with Rows and Columns before any decode.

Every parser walks a ``bytes``-like value it was given, checks each declared length against
what remains before using it, and raises :class:`CodestreamError` rather than reading past
the end; none of them allocates anything sized by the input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from itertools import pairwise

from gateway.errors import PixelDataError

JPEG_SOI = b"\xff\xd8"
J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
HTJ2K_CAPABILITIES = 0x4000  # Rsiz bit 14: a CAP marker follows (Part 15, HTJ2K)
_MAX_JP2_BOXES = 64
_SOF_MARKERS = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}) | {0xF7}
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI: no length follows


class CodestreamError(PixelDataError):
    """A frame's codestream header is missing, damaged, or cannot be read."""


@dataclass(frozen=True)
class FrameHeader:
    """What a frame's codestream declares: what its decoder will allocate."""

    kind: str  # "JPEG SOF3", "JPEG-LS", "JPEG 2000", "HTJ2K", "RLE"
    rows: int
    columns: int
    components: int
    precision: int  # bits per sample; 0 for RLE, whose header does not say


def jpeg_header(data: bytes | memoryview) -> FrameHeader:
    """The first SOFn (or JPEG-LS SOF55) segment of a JPEG or JPEG-LS codestream."""
    view = memoryview(data)
    if bytes(view[:2]) != JPEG_SOI:
        raise CodestreamError("JPEG frame does not start with SOI (FFD8)")
    position = 2
    while position + 4 <= len(view):
        if view[position] != 0xFF:
            raise CodestreamError(f"JPEG header: no marker at byte {position}")
        marker = view[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in _STANDALONE:
            position += 2
            continue
        (length,) = struct.unpack_from(">H", view, position + 2)
        if length < 2 or position + 2 + length > len(view):
            raise CodestreamError(
                f"JPEG header: marker FF{marker:02X} declares {length} bytes, "
                f"{len(view) - position - 2} remain"
            )
        if marker in _SOF_MARKERS:
            return _sof(view, position + 4, length - 2, marker)
        if marker == 0xDA:  # SOS: scan data follows, no frame header came first
            break
        position += 2 + length
    raise CodestreamError("JPEG header: no SOF marker before the scan")


def _sof(view: memoryview, start: int, length: int, marker: int) -> FrameHeader:
    if length < 6:
        raise CodestreamError(f"JPEG SOF{marker - 0xC0} segment of {length} bytes is too short")
    precision, rows, columns, components = struct.unpack_from(">BHHB", view, start)
    kind = "JPEG-LS" if marker == 0xF7 else f"JPEG SOF{marker - 0xC0}"
    return FrameHeader(kind, rows, columns, components, precision)


def j2k_header(data: bytes | memoryview) -> FrameHeader:
    """The SIZ segment of a JPEG 2000 / HTJ2K codestream, raw or in a JP2 file."""
    view = memoryview(data)
    if bytes(view[: len(JP2_SIGNATURE)]) == JP2_SIGNATURE:
        view = _jp2_codestream(view)
    if bytes(view[:4]) != J2K_SOC_SIZ:
        raise CodestreamError("JPEG 2000 frame does not start with SOC and SIZ (FF4F FF51)")
    if len(view) < 4 + 40:
        raise CodestreamError(f"JPEG 2000 SIZ truncated: {len(view)} bytes")
    lsiz, rsiz, xsiz, ysiz, x_offset, y_offset = struct.unpack_from(">HHIIII", view, 4)
    (csiz,) = struct.unpack_from(">H", view, 4 + 36)
    if csiz < 1 or lsiz != 38 + 3 * csiz or 4 + lsiz > len(view):
        raise CodestreamError(
            f"JPEG 2000 SIZ: {csiz} components in a segment of {lsiz} bytes "
            f"({len(view) - 4} remain)"
        )
    if x_offset >= xsiz or y_offset >= ysiz:
        raise CodestreamError(
            f"JPEG 2000 SIZ: image offset ({x_offset}, {y_offset}) outside ({xsiz}, {ysiz})"
        )
    precisions = {(view[4 + 38 + 3 * i] & 0x7F) + 1 for i in range(csiz)}
    kind = "HTJ2K" if rsiz & HTJ2K_CAPABILITIES else "JPEG 2000"
    return FrameHeader(kind, ysiz - y_offset, xsiz - x_offset, csiz, max(precisions))


def _jp2_codestream(view: memoryview) -> memoryview:
    """The contents of the JP2 file's ``jp2c`` box (the codestream the decoder reads)."""
    position = 0
    for _box in range(_MAX_JP2_BOXES):
        if position + 8 > len(view):
            break
        length, box = struct.unpack_from(">I4s", view, position)
        header = 8
        if length == 1:  # the real length follows as 64 bits
            if position + 16 > len(view):
                break
            (length,) = struct.unpack_from(">Q", view, position + 8)
            header = 16
        elif length == 0:  # the box runs to the end
            length = len(view) - position
        if length < header or position + length > len(view):
            raise CodestreamError(
                f"JP2 box {bytes(box)!r} declares {length} bytes, {len(view) - position} remain"
            )
        if box == b"jp2c":
            return view[position + header : position + length]
        position += length
    raise CodestreamError("JP2 file has no codestream box (jp2c)")


def rle_header(data: bytes | memoryview, frame_length: int) -> tuple[int, list[int]]:
    """The RLE header's segment count and offsets, checked: 1–15 segments, the first at byte
    64, each after the one before and inside the frame's ``frame_length`` bytes."""
    view = memoryview(data)
    if len(view) < 64:
        raise CodestreamError(f"RLE header truncated: {len(view)} of 64 bytes")
    count, *offsets = struct.unpack_from("<16I", view, 0)
    if not 1 <= count <= 15:
        raise CodestreamError(f"RLE header declares {count} segments (1 to 15 allowed)")
    used = offsets[:count]
    if used[0] != 64:
        raise CodestreamError(f"RLE segment 1 starts at byte {used[0]}, not 64")
    for index, (before, after) in enumerate(pairwise(used), start=2):
        if after <= before:
            raise CodestreamError(
                f"RLE segment {index} starts at byte {after}, not after segment "
                f"{index - 1} at {before}"
            )
    if used[-1] >= frame_length:
        raise CodestreamError(
            f"RLE segment {count} starts at byte {used[-1]}, past the frame's {frame_length} bytes"
        )
    return count, used
