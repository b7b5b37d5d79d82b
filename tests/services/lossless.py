"""Greyscale images encoded in each lossless transfer syntax the gateway accepts, by
encoders independent of the decoders under test: DCMTK's ``dcmcjpeg +e1`` (JPEG lossless,
process 14, first-order prediction), OpenJPH's ``ojph_compress`` (HTJ2K lossless), and
pydicom's encoding plugins for JPEG-LS (pyjpegls), JPEG 2000 (OpenJPEG) and RLE. The
lossless-decode test and the decode benchmark both use them."""

from __future__ import annotations

import subprocess
import tempfile
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from tests.services.processes import ServiceUnavailable, require_tool

LOSSLESS = (JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless, HTJ2KLossless, RLELossless)
CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")


def synthetic(kind: str, rows: int = 96, columns: int = 128, seed: int = 1) -> Dataset:
    """A greyscale image, uncompressed (not square by default: a transposed decode would
    show): ``ct`` signed 16-bit (HU-like, about ±2300), ``dx`` unsigned 12-bit in 16."""
    y, x = np.mgrid[:rows, :columns]
    smooth = np.sin(x / 9.0) * np.cos(y / 7.0)
    noise = np.random.default_rng(seed).integers(-300, 300, (rows, columns))
    if kind == "ct":
        pixels: np.ndarray = (smooth * 2000 + noise).astype(np.int16)
        bits, signed = 16, 1
    elif kind == "dx":
        pixels = ((smooth + 1) * 2000 + noise + 300).clip(0, 4095).astype(np.uint16)
        bits, signed = 12, 0
    else:
        raise ValueError(f"kind is ct or dx, not {kind!r}")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, signed
    ds.PixelData = pixels.tobytes()
    return ds


def part10(ds: Dataset) -> bytes:
    """The dataset as the object store keeps an instance."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def encoded(ds: Dataset, syntax: UID) -> Dataset:
    """``ds`` (uncompressed) in ``syntax``; raises :class:`ServiceUnavailable` where this
    machine has no encoder for it."""
    if syntax == JPEGLosslessSV1:
        return _dcmcjpeg(ds)
    if syntax == HTJ2KLossless:
        return _ojph(ds)
    if syntax not in LOSSLESS:
        raise ValueError(f"{syntax.name} is not one of the lossless syntaxes")
    ds.compress(syntax, generate_instance_uid=False)
    return ds


def _dcmcjpeg(ds: Dataset) -> Dataset:
    tool = require_tool("dcmcjpeg")
    with tempfile.TemporaryDirectory(prefix="aigw-sv1-") as folder:
        source, target = Path(folder) / "native.dcm", Path(folder) / "sv1.dcm"
        ds.save_as(source, enforce_file_format=True)
        subprocess.run([tool, "+e1", str(source), str(target)], check=True, capture_output=True)
        return dcmread(target)


def _ojph(ds: Dataset) -> Dataset:
    if int(ds.PixelRepresentation):
        # ojph_compress (OpenJPH 0.9) reads raw samples as unsigned, whatever -signed says.
        raise ServiceUnavailable(
            "no signed HTJ2K encoder here: OpenJPH's ojph_compress reads unsigned"
        )
    tool = require_tool("ojph_compress")
    with tempfile.TemporaryDirectory(prefix="aigw-htj2k-") as folder:
        raw, codestream = Path(folder) / "image.yuv", Path(folder) / "image.j2c"
        raw.write_bytes(np.asarray(ds.pixel_array, dtype="<u2").tobytes())
        subprocess.run(
            [
                tool,
                *("-i", str(raw), "-o", str(codestream)),
                *("-dims", f"{{{ds.Columns},{ds.Rows}}}", "-num_comps", "1", "-signed", "false"),
                *("-bit_depth", str(ds.BitsStored), "-downsamp", "{1,1}", "-reversible", "true"),
            ],
            check=True,
            capture_output=True,
        )
        frame = codestream.read_bytes()
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return ds
