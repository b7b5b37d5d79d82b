"""Hostile pixel data for the tests: each a valid-looking dataset whose Pixel Data lies.

Built from the synthetic studies (so they route like real ones) and, for JPEG, from a real
JPEG Baseline codestream of the shared files.
"""

from __future__ import annotations

import struct
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from gateway.demo.synthetic import SyntheticStudy, chest_xray_study
from tests.services.processes import require_shared_data

SOC_SIZ = b"\xff\x4f\xff\x51"
REAL_JPEG = "CR_chest_PA_SIIM_JPEGBaseline.dcm"  # 1024 × 1024, 8-bit, one fragment


def radiograph(seed: int, size: tuple[int, int] = (64, 64)) -> SyntheticStudy:
    return chest_xray_study(seed=seed, kind="radiography", modality="CR", sop="cr", size=size)


def j2k_bomb(dataset: Dataset, rows: int = 60000, columns: int = 60000) -> Dataset:
    """JPEG 2000 lossless whose SIZ claims ``rows`` × ``columns``: a few hundred bytes that
    openjpeg would decode into gigabytes."""
    dataset.compress(JPEG2000Lossless)
    data = bytearray(dataset.PixelData)
    siz = data.index(SOC_SIZ)
    struct.pack_into(">II", data, siz + 8, columns, rows)  # Xsiz, Ysiz (offsets are 0)
    dataset.PixelData = bytes(data)
    return dataset


def huge_header(dataset: Dataset) -> Dataset:
    """Rows = Columns = 65535 with 10 bytes of native Pixel Data."""
    dataset.Rows = dataset.Columns = 65535
    dataset.PixelData = bytes(10)
    return dataset


def huge_j2k(dataset: Dataset) -> Dataset:
    """Rows = Columns = 65535, and a JPEG 2000 SIZ that says the same: consistent, so only
    the pixel budget stops it (ingest cannot judge a codestream)."""
    j2k_bomb(dataset, 65535, 65535)
    dataset.Rows = dataset.Columns = 65535
    return dataset


def rle_offsets_past_the_end(dataset: Dataset) -> Dataset:
    """RLE whose second segment starts far past the end of the frame."""
    dataset.compress(RLELossless)
    data = bytearray(dataset.PixelData)
    header = data.index(b"\xfe\xff\x00\xe0", 8) + 8  # the first fragment's value
    struct.pack_into("<I", data, header + 8, 0x7FFFFFF0)  # segment 2's offset
    dataset.PixelData = bytes(data)
    return dataset


def rle_cut_short(dataset: Dataset) -> Dataset:
    """RLE whose header is sound but whose last segment ends after 10 bytes: passes every
    check and fails only in the decoder."""
    dataset.compress(RLELossless)
    data = bytearray(dataset.PixelData)
    header = data.index(b"\xfe\xff\x00\xe0", 8) + 8
    count, *offsets = struct.unpack_from("<16I", data, header)
    cut = data[: header + offsets[count - 1] + 10]
    struct.pack_into("<I", cut, header - 4, len(cut) - header)
    dataset.PixelData = bytes(cut)
    return dataset


def jpeg_with_wrong_rows(dataset: Dataset, rows: int = 512) -> Dataset:
    """The real 1024 × 1024 JPEG Baseline codestream inside ``dataset``, Rows set to
    ``rows``: the SOF0 header disagrees with the dataset."""
    real = dcmread(require_shared_data() / REAL_JPEG)
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    dataset.PixelData = real.PixelData
    dataset["PixelData"].VR = "OB"
    dataset["PixelData"].is_undefined_length = True
    dataset.Rows, dataset.Columns = rows, int(real.Columns)
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
    dataset.PixelRepresentation = 0
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    for keyword in ("RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth"):
        if keyword in dataset:
            del dataset[keyword]
    return dataset


def shared_files() -> list[Path]:
    """Every file the shared MANIFEST.tsv lists (skips where the shared data is absent)."""
    root = require_shared_data()
    lines = (root / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [root / line.split("\t")[0] for line in lines if line.strip()]
