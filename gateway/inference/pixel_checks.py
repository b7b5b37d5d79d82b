"""Pixel Data checked against its dataset, and the pixel budget, before anything is decoded.

A decoder sizes its output from the codestream's own header, not from Rows and Columns: a
241-byte JPEG 2000 frame whose SIZ claims 60000×60000 inside a 512×512 DX took 7.5 GB to
fail. So, for every instance of a job and before any decode:

1. the declared geometry (Rows, Columns, SamplesPerPixel, BitsAllocated, BitsStored,
   NumberOfFrames) is read and held to the pixel budget per frame and per job;
2. native Pixel Data must be exactly Rows × Columns × frames × samples × bytes long (one pad
   byte allowed after an odd length);
3. encapsulated Pixel Data is walked item by item (no value copied), split into frames the
   way pydicom will split it, and each frame's header — JPEG SOFn, JPEG-LS SOF55, JPEG 2000
   / HTJ2K SIZ (raw or JP2), RLE segment table — must agree with the declaration.

Any disagreement raises :class:`DecodeError` naming the instance and both values.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO

from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.uid import (
    UID,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

from gateway.errors import PixelDataError
from gateway.inference.codestreams import FrameHeader, j2k_header, jpeg_header, rle_header
from gateway.inference.decode import DecodeError, instance_uid
from gateway.pixel_data import Item, PixelGeometry, pixel_geometry, read_items

# Defaults of the settings of the same names: the largest real mammogram (4096 × 5625 ≈
# 23 Mpx) fits a frame with room; a 2000-slice CT of 512² (524 Mpx) or a DBT of ~70 frames
# of 3328 × 2560 (596 Mpx) fits a job. At float32 a full job is at most ~2.6 GB.
DEFAULT_MAX_PIXELS_PER_FRAME = 40_000_000
DEFAULT_MAX_PIXELS_PER_JOB = 640_000_000
_HEAD_BYTES = 1 << 20  # what of a frame is looked at for its header: markers come first
_EOI = b"\xff\xd9"  # JPEG EOI / JPEG 2000 EOC: where pydicom ends a frame without tables


@dataclass(frozen=True)
class PixelBudget:
    """Pixels (Rows × Columns) one frame, and all frames of one job, may declare."""

    max_pixels_per_frame: int = DEFAULT_MAX_PIXELS_PER_FRAME
    max_pixels_per_job: int = DEFAULT_MAX_PIXELS_PER_JOB


def check_job(datasets: Sequence[Dataset], budget: PixelBudget) -> None:
    """Every instance's Pixel Data against its declaration, all of them within the budget."""
    geometries = [_geometry(dataset, budget) for dataset in datasets]
    total = sum(g.pixels for g in geometries)
    if total > budget.max_pixels_per_job:
        raise DecodeError(
            f"{len(datasets)} instances declare {total} pixels in all, more than "
            f"max_pixels_per_job {budget.max_pixels_per_job}"
        )
    for dataset, geometry in zip(datasets, geometries, strict=True):
        check_pixel_data(dataset, geometry)


def _geometry(dataset: Dataset, budget: PixelBudget) -> PixelGeometry:
    try:
        geometry = pixel_geometry(dataset)
    except PixelDataError as exc:
        raise DecodeError(f"{instance_uid(dataset)}: {exc}") from exc
    except Exception as exc:  # a damaged value raises what its pydicom converter raises
        raise DecodeError(
            f"{instance_uid(dataset)}: cannot read the image attributes: {exc.__class__.__name__}: "
            f"{str(exc)[:200]}"
        ) from exc
    if geometry.pixels_per_frame > budget.max_pixels_per_frame:
        raise DecodeError(
            f"{instance_uid(dataset)}: a frame of {geometry.rows} × {geometry.columns} = "
            f"{geometry.pixels_per_frame} pixels, more than max_pixels_per_frame "
            f"{budget.max_pixels_per_frame}"
        )
    return geometry


def check_pixel_data(dataset: Dataset, geometry: PixelGeometry) -> None:
    """Pixel Data of one instance against its declared ``geometry``; :class:`DecodeError`
    names the instance and the two values that disagree."""
    try:
        _check(dataset, geometry)
    except PixelDataError as exc:
        raise DecodeError(f"{instance_uid(dataset)}: {exc}") from exc
    except Exception as exc:  # a damaged value raises what its pydicom converter raises
        raise DecodeError(
            f"{instance_uid(dataset)}: cannot read Pixel Data: {exc.__class__.__name__}: "
            f"{str(exc)[:200]}"
        ) from exc


def _check(dataset: Dataset, geometry: PixelGeometry) -> None:
    if "PixelData" not in dataset:
        raise PixelDataError("no Pixel Data")
    syntax = UID(str(dataset.file_meta.get("TransferSyntaxUID", "")))
    if not syntax.is_compressed:
        length = _native_length(dataset)
        if not geometry.native_length_matches(length):
            raise PixelDataError(
                f"native Pixel Data of {length} bytes, the dataset declares "
                f"{geometry.native_length()} ({geometry.rows} × {geometry.columns} × "
                f"{geometry.frames} frames × {geometry.samples} samples × "
                f"{geometry.bits_allocated} bits)"
            )
        return
    data = _pixel_data(dataset)
    for number, frame in enumerate(_frames(dataset, data, geometry.frames), start=1):
        _check_frame(syntax, frame, geometry, number)


def _pixel_data(dataset: Dataset) -> bytes:
    data = dataset.PixelData
    if not isinstance(data, bytes | bytearray):
        raise PixelDataError(f"Pixel Data is {type(data).__name__}, not bytes")
    return bytes(data)


def _native_length(dataset: Dataset) -> int:
    """Its length; a value read_dataset left in the stored bytes (``in_place``) is not read."""
    element = dataset.get_item("PixelData", keep_deferred=True)
    if isinstance(element, RawDataElement) and element.value is None:
        return int(element.length)
    return len(_pixel_data(dataset))


def _check_frame(
    syntax: UID, frame: tuple[memoryview, int], geometry: PixelGeometry, number: int
) -> None:
    head, length = frame
    if syntax == RLELossless:
        count, _offsets = rle_header(head, length)
        expected = geometry.samples * (geometry.bits_allocated // 8)
        if geometry.bits_allocated % 8 == 0 and count != expected:
            raise PixelDataError(
                f"frame {number}: RLE header has {count} segments, the dataset declares "
                f"{expected} ({geometry.samples} samples × {geometry.bits_allocated} bits)"
            )
        return
    if syntax in JPEGTransferSyntaxes or syntax in JPEGLSTransferSyntaxes:
        _agree(jpeg_header(head), geometry, number)
    elif syntax in JPEG2000TransferSyntaxes:
        _agree(j2k_header(head), geometry, number)
    else:
        raise PixelDataError(f"no header check for transfer syntax {syntax}: not decoded")


def _agree(header: FrameHeader, geometry: PixelGeometry, number: int) -> None:
    pairs = [
        ("rows", header.rows, "Rows", geometry.rows),
        ("columns", header.columns, "Columns", geometry.columns),
        ("components", header.components, "SamplesPerPixel", geometry.samples),
    ]
    for name, found, keyword, declared in pairs:
        if found != declared:
            raise PixelDataError(
                f"frame {number}: {header.kind} header has {found} {name}, "
                f"the dataset's {keyword} is {declared}"
            )
    if header.precision > geometry.bits_allocated:
        raise PixelDataError(
            f"frame {number}: {header.kind} header has {header.precision}-bit samples, "
            f"the dataset's BitsAllocated is {geometry.bits_allocated}"
        )


def _frames(dataset: Dataset, data: bytes, declared: int) -> list[tuple[memoryview, int]]:
    """Each frame's head (its first bytes, up to 1 MiB, joined across fragments only when
    the first is shorter) and its length, split as pydicom splits them; at most
    ``declared`` frames, and an error when there are fewer."""
    items, _ended = read_items(BytesIO(data), 0, len(data))
    if not items:
        raise PixelDataError("encapsulated Pixel Data has no Basic Offset Table item")
    table, fragments = items[0], items[1:]
    if len(fragments) < declared:
        raise PixelDataError(
            f"{len(fragments)} fragments for {declared} frames (NumberOfFrames): a fragment "
            "never holds two frames"
        )
    groups = _group(dataset, data, table, fragments, declared)
    if len(groups) < declared:
        raise PixelDataError(f"{len(groups)} frames found, NumberOfFrames is {declared}")
    return [_head(data, group) for group in groups[:declared]]


def _group(
    dataset: Dataset, data: bytes, table: Item, fragments: list[Item], declared: int
) -> list[list[Item]]:
    if "ExtendedOffsetTable" in dataset:
        return [[f] for f in fragments]  # one fragment per frame (PS3.3 C.7.6.3.1.8)
    if table.length:
        return _by_offsets(data, table, fragments)
    if len(fragments) == declared:
        return [[f] for f in fragments]
    if declared == 1:
        return [fragments]
    groups: list[list[Item]] = [[]]
    for fragment in fragments:  # no tables: a frame ends at a fragment ending in EOI
        groups[-1].append(fragment)
        end = fragment.offset + fragment.length
        if _EOI in data[max(fragment.offset, end - 10) : end]:
            groups.append([])
    return [g for g in groups if g]


def _by_offsets(data: bytes, table: Item, fragments: list[Item]) -> list[list[Item]]:
    if table.length % 4:
        raise PixelDataError(f"Basic Offset Table of {table.length} bytes is not whole offsets")
    count = table.length // 4
    offsets = struct.unpack_from(f"<{count}I", data, table.offset)
    first = fragments[0].tag_offset
    starts = {f.tag_offset - first: index for index, f in enumerate(fragments)}
    indices = []
    for number, offset in enumerate(offsets, start=1):
        if offset not in starts:
            raise PixelDataError(
                f"Basic Offset Table: frame {number} at byte {offset}, where no fragment starts"
            )
        indices.append(starts[offset])
    if indices != sorted(indices) or indices[0] != 0:
        raise PixelDataError("Basic Offset Table: frame offsets are not in order from 0")
    ends = [*indices[1:], len(fragments)]
    return [fragments[start:end] for start, end in zip(indices, ends, strict=True)]


def _head(data: bytes, group: list[Item]) -> tuple[memoryview, int]:
    length = sum(f.length for f in group)
    first = group[0]
    if first.length >= min(_HEAD_BYTES, length):
        view = memoryview(data)[first.offset : first.offset + min(first.length, _HEAD_BYTES)]
        return view, length
    head = bytearray()
    for fragment in group:  # a frame whose first fragment is tiny: join until 1 MiB
        take = min(fragment.length, _HEAD_BYTES - len(head))
        head += data[fragment.offset : fragment.offset + take]
        if len(head) >= _HEAD_BYTES:
            break
    return memoryview(bytes(head)), length
