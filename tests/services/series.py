"""Synthetic DICOM instances written as Part-10 files, Explicit VR Little Endian: CT series
(tiny 8×8 slices for tests that need many quick instances, or 512² slices of a body for the
ingest benchmark) and chest radiographs of flat-panel size. UIDs derive from a seed, so a
run is reproducible and two seeds never share a UID."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray, For Presentation
CT_INTERCEPT = -1024
DX_SIZE = (2500, 2000)  # rows, columns: a typical flat-panel chest radiograph

Slice = npt.NDArray[np.uint16] | npt.NDArray[np.int16]
SlicePixels = Callable[[int], Slice]  # instance number → stored values


def make_uid(*parts: object) -> str:
    """A valid, deterministic UID under the pydicom test root for ``parts``."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[str(part) for part in parts]))


def _dataset(sop_class: str, sop_uid: str, study_uid: str, series_uid: str) -> pydicom.Dataset:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = "Test^Phantom"
    ds.PatientID = "PHANTOM-1"
    ds.PatientSex = "O"
    ds.PatientAge = "045Y"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC1"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.BodyPartExamined = "CHEST"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    return ds


def _set_pixels(ds: pydicom.Dataset, pixels: Slice, bits_stored: int) -> None:
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()


def ct_instance(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    number: int = 1,
    *,
    size: int = 8,
    fill: int = 0,
    pixels: Slice | None = None,
) -> pydicom.Dataset:
    """A complete CT Image Storage instance, signed 16-bit: ``pixels`` (stored values,
    HU + 1024), else ``size``² of the value ``number + fill``."""
    ds = _dataset(CT_IMAGE_STORAGE, sop_uid, study_uid, series_uid)
    ds.FrameOfReferenceUID = make_uid(study_uid, "frame")
    ds.Modality = "CT"
    ds.SeriesDescription = "test series"
    ds.InstanceNumber = number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SliceThickness = 1.5
    ds.ImagePositionPatient = [0.0, 0.0, float(number) * 1.5]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.RescaleIntercept = CT_INTERCEPT
    ds.RescaleSlope = 1
    if pixels is None:
        pixels = np.full((size, size), (number + fill) % 65536, dtype=np.uint16).view(np.int16)
    _set_pixels(ds, pixels, bits_stored=16)
    return ds


def write_ct_series(
    folder: Path,
    n: int,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    seed: object = 0,
    size: int = 8,
    pixels: SlicePixels | None = None,
) -> list[Path]:
    """``n`` CT slices of one series written as Part-10 files; returns their paths.
    ``pixels`` makes each slice's stored values (see :func:`body_slices`)."""
    study_uid = study_uid or make_uid("study", seed)
    series_uid = series_uid or make_uid("series", study_uid, seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(1, n + 1):
        sop_uid = make_uid("sop", series_uid, number)
        values = pixels(number) if pixels else None
        ds = ct_instance(study_uid, series_uid, sop_uid, number, size=size, pixels=values)
        path = folder / f"ct{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _ellipse(shape: tuple[int, int], a: float, b: float) -> npt.NDArray[np.bool_]:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    y = (rows - shape[0] / 2) / (a * shape[0] / 2)
    x = (cols - shape[1] / 2) / (b * shape[1] / 2)
    return np.asarray(x * x + y * y <= 1.0)


def body_slices(size: int, seed: int) -> SlicePixels:
    """Axial slices of a body: air, soft tissue, two lungs, and noise that differs per
    slice (so that no two slices compress or hash alike). Stored values, HU + 1024."""
    shape = (size, size)
    hu = np.full(shape, -1000, dtype=np.int32)
    hu[_ellipse(shape, 0.8, 0.9)] = 40
    lung = _ellipse(shape, 0.55, 0.3)
    shift = size // 5
    hu[np.roll(lung, -shift, axis=1) | np.roll(lung, shift, axis=1)] = -850
    rng = np.random.default_rng(seed)

    def make(number: int) -> Slice:
        noise = rng.integers(-30, 30, size=shape, dtype=np.int32)
        return (hu + noise - CT_INTERCEPT).astype(np.int16)

    return make


def write_dx_studies(
    folder: Path, count: int, *, seed: object = 0, size: tuple[int, int] = DX_SIZE
) -> list[Path]:
    """``count`` chest radiographs, one study each, unsigned 16-bit with 14 stored: a
    gradient and per-image noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = np.linspace(0.0, 1.0, size[0])[:, None]
    cols = np.abs(np.linspace(-1.0, 1.0, size[1]))[None, :]
    background = (4000 + 6000 * rows * (1 - 0.5 * cols)).astype(np.uint16)
    rng = np.random.default_rng(int(hashlib.sha256(str(seed).encode()).hexdigest()[:8], 16))
    paths = []
    for number in range(1, count + 1):
        study_uid = make_uid("dx-study", seed, number)
        ds = _dataset(
            DX_IMAGE_STORAGE,
            make_uid("dx-sop", study_uid),
            study_uid,
            make_uid("dx-series", study_uid),
        )
        ds.Modality = "DX"
        ds.SeriesDescription = "chest PA"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.InstanceNumber = 1
        ds.ImagerPixelSpacing = [0.15, 0.15]
        noise = rng.integers(0, 200, size=size, dtype=np.uint16)
        _set_pixels(ds, background + noise, bits_stored=14)
        path = folder / f"dx-{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
