"""Decoding stored instances into pixels a device can read.

Every transfer syntax pydicom can decode with the installed plugins (pylibjpeg: JPEG,
JPEG-lossless, JPEG 2000, RLE; pyjpegls: JPEG-LS; deflate natively); on a GPU node JPEG,
JPEG lossless, JPEG 2000 and HTJ2K on the GPU instead (:mod:`gateway.inference.gpu_decode`;
the lossless syntaxes give the same arrays bit for bit, the lossy ones may differ by the
decoders' rounding). The modality LUT is applied (CT values in HU). A volume is ordered from
ImagePositionPatient / ImageOrientationPatient, not by InstanceNumber, which scanners number
inconsistently: along
the slice normal, turned to point into the patient's superior / left / posterior side along
its main axis, from that side's end — for an axial series, cranial first, as radiologists
page it and as the reference devices were trained, whichever way the scanner moved.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from typing import BinaryIO, cast

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.pixels.processing import apply_modality_lut

from gateway.errors import GatewayError
from gateway.inference.gpu_decode import gpu_pixels
from gateway.inference.native import DEFER_BYTES, native_pixels
from models.preprocess import rescaled

# What a decoder may raise that is not about the data: let it through. Everything else
# (Rust panics from pyo3 decoders derive from BaseException) is the data's fault.
_NOT_OURS = (KeyboardInterrupt, SystemExit, GeneratorExit)


class DecodeError(GatewayError):
    """Pixel data cannot be decoded or the series is not usable; says which instance and why."""


@dataclass(frozen=True)
class Image2D:
    sop_instance_uid: str
    stored: np.ndarray  # rows × columns as decoded: integers, or float32 with the LUT applied
    photometric: str
    spacing_mm: tuple[float, float] | None  # (row, column)
    intercept: float = 0.0  # the modality LUT is stored + intercept, exact in float32

    @property
    def pixels(self) -> np.ndarray:
        """float32 rows × columns, modality LUT applied."""
        return rescaled(self.stored, self.intercept)


@dataclass(frozen=True)
class Volume:
    sop_instance_uids: tuple[str, ...]  # one per slice, in volume order
    voxels: np.ndarray  # float32 slices × rows × columns (HU for CT)
    spacing_mm: tuple[float, float, float]  # (slice, row, column)


Stored = bytes | mmap.mmap  # a stored instance's bytes, read or mapped


def read_dataset(data: Stored, in_place: bool = False) -> Dataset:
    """``in_place``: values longer than :data:`~gateway.inference.native.DEFER_BYTES` stay in
    ``data`` until read (native Pixel Data is then decoded from there without a copy)."""
    if isinstance(data, mmap.mmap):  # a file object already; BytesIO would copy it
        data.seek(0)  # read from its start, whoever read it before
        source = cast(BinaryIO, data)
    else:
        source = BytesIO(data)
    try:
        return dcmread(source, defer_size=DEFER_BYTES if in_place else None)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise DecodeError(f"cannot parse stored instance: {exc.__class__.__name__}: {exc}") from exc


def decode_image(dataset: Dataset) -> Image2D:
    """A projection image; of a multi-frame object, the first frame."""
    with _unreadable_as_decode_error(dataset):
        return _decode_image(dataset)


def _decode_image(dataset: Dataset) -> Image2D:
    stored, intercept = _stored(dataset)
    if stored.ndim == 3 and int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        stored = stored[0]
    spacing = _pixel_spacing(dataset)
    return Image2D(
        str(dataset.SOPInstanceUID),
        stored,
        str(dataset.get("PhotometricInterpretation", "")),
        spacing,
        intercept,
    )


def decode_volume(datasets: list[Dataset]) -> Volume:
    """Single-frame slices of one series → a volume sorted along the slice normal."""
    if not datasets:
        raise DecodeError("no instances in the series")
    with _unreadable_as_decode_error(datasets[0]):
        return _decode_volume(datasets)


Decoded = tuple[list[Image2D], Volume | None]


def decode_datasets(datasets: list[Dataset], dims: int) -> Decoded:
    """One job's instances: 2D images, or one volume (``dims`` 3)."""
    if dims == 3:
        return [], decode_volume(datasets)
    return [decode_image(d) for d in datasets], None


@contextmanager
def _unreadable_as_decode_error(dataset: Dataset) -> Iterator[None]:
    """pydicom converts values when they are first read, so a damaged attribute (a US of
    three bytes, a DS of letters) raises whatever its converter raises, wherever it is read:
    every such error from a received dataset is that dataset's fault, reported as such."""
    try:
        yield
    except (DecodeError, *_NOT_OURS):
        raise
    except BaseException as exc:  # pylibjpeg-rle's panics (pyo3) are not Exceptions
        raise DecodeError(
            f"cannot read {instance_uid(dataset)}: {exc.__class__.__name__}: {_first_line(exc)}"
        ) from exc


def instance_uid(dataset: Dataset) -> str:
    """The SOP Instance UID for a reason, whatever state the dataset is in."""
    try:
        return str(dataset.get("SOPInstanceUID", "?"))[:64]
    except Exception:  # the UID's own value may be what is damaged
        return "?"


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:200]


def _decode_volume(datasets: list[Dataset]) -> Volume:
    ordered = volume_order(datasets)
    shapes = {(int(d.Rows), int(d.Columns)) for d in ordered}
    if len(shapes) != 1:
        raise DecodeError(f"slices differ in size: {sorted(shapes)}")
    voxels = np.stack([_pixels(d) for d in ordered]).astype(np.float32, copy=False)
    row_mm, col_mm = _pixel_spacing(ordered[0]) or (1.0, 1.0)
    return Volume(
        tuple(str(d.SOPInstanceUID) for d in ordered),
        voxels,
        (_slice_spacing(ordered), row_mm, col_mm),
    )


def _pixels(dataset: Dataset) -> np.ndarray:
    """float32, modality LUT applied."""
    return rescaled(*_stored(dataset))


def _stored(dataset: Dataset) -> tuple[np.ndarray, float]:
    """The decoded array and the intercept that makes it the modality LUT's output: stored
    integers and a whole intercept where that is exact in float32 (the caller converts, or
    resizes the integers first), else float32 with the LUT applied and 0."""
    try:
        raw = native_pixels(dataset)  # plain native: in place, no copy
        if raw is None:
            raw = gpu_pixels(dataset)
        if raw is None:  # not on the GPU here, or not a syntax it decodes
            raw = dataset.pixel_array
        if _rescale_is_exact_in_float32(dataset, raw):
            # pydicom's apply_modality_lut works in float64 (a 5-megapixel radiograph: 40 MB
            # and ~40 ms) only for the result to be cast to float32; integers of at most
            # 16 bits plus a whole intercept are exact in float32.
            intercept = float(dataset.RescaleIntercept) if _has_rescale(dataset) else 0.0
            return raw, intercept
        return np.asarray(apply_modality_lut(raw, dataset), dtype=np.float32), 0.0
    except _NOT_OURS:
        raise
    except BaseException as exc:  # decoders raise anything from ValueError to a Rust panic
        raise DecodeError(
            f"cannot decode pixel data of {instance_uid(dataset)}: {exc.__class__.__name__}: {exc}"
        ) from exc


def _has_rescale(dataset: Dataset) -> bool:
    return "RescaleSlope" in dataset and "RescaleIntercept" in dataset


def _rescale_is_exact_in_float32(dataset: Dataset, raw: np.ndarray) -> bool:
    """No modality LUT sequence, ≤16-bit integers, and no rescale or slope 1 with a whole
    intercept: then the modality LUT in float32 equals pydicom's float64 result."""
    if dataset.get("ModalityLUTSequence") or raw.dtype.kind not in "iu" or raw.itemsize > 2:
        return False
    if not _has_rescale(dataset):
        return True  # pydicom applies nothing
    slope, intercept = float(dataset.RescaleSlope), float(dataset.RescaleIntercept)
    return slope == 1.0 and intercept.is_integer()


def _pixel_spacing(dataset: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = dataset.get(keyword)
        if value is not None and len(value) == 2:
            try:
                row, col = float(value[0]), float(value[1])
            except (TypeError, ValueError):
                continue
            if row > 0 and col > 0:
                return row, col
    return None


def _normal(dataset: Dataset) -> np.ndarray | None:
    """The slice normal, signed so its main component is positive (LPS: +z is superior)."""
    orientation = dataset.get("ImageOrientationPatient")
    if orientation is None or len(orientation) != 6:
        return None
    values = np.asarray([float(v) for v in orientation])
    normal = np.cross(values[:3], values[3:])
    main = int(np.argmax(np.abs(normal)))
    return normal if normal[main] >= 0 else -normal


def volume_order(datasets: list[Dataset]) -> list[Dataset]:
    """Single-frame slices in volume order: the order :func:`decode_volume` stacks them and
    the result builders reference them in (slice indices of findings count in it)."""
    if not datasets:
        return []
    normal = _normal(datasets[0])
    positioned = [d for d in datasets if d.get("ImagePositionPatient") is not None]
    if normal is None or len(positioned) != len(datasets):
        return sorted(datasets, key=lambda d: int(d.get("InstanceNumber", 0) or 0))
    return sorted(
        datasets,
        key=lambda d: float(np.dot(normal, [float(v) for v in d.ImagePositionPatient])),
        reverse=True,
    )


def _slice_spacing(ordered: list[Dataset]) -> float:
    normal = _normal(ordered[0])
    if (
        normal is not None
        and len(ordered) > 1
        and all("ImagePositionPatient" in d for d in ordered)
    ):
        positions = [
            float(np.dot(normal, [float(v) for v in d.ImagePositionPatient])) for d in ordered
        ]
        gaps = -np.diff(positions)  # positions decrease along the volume
        if len(gaps) and float(np.median(gaps)) > 0:
            return float(np.median(gaps))
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = ordered[0].get(keyword)
        if value:
            return float(value)
    return 1.0
