"""Pixel Data against its dataset before decoding: the known bombs are refused with the
instance and both values named, and no real file is refused."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import JPEG2000Lossless

from gateway.inference.codestreams import CodestreamError, j2k_header, jpeg_header, rle_header
from gateway.inference.decode import DecodeError
from gateway.inference.pixel_checks import (
    DEFAULT_MAX_PIXELS_PER_FRAME,
    DEFAULT_MAX_PIXELS_PER_JOB,
    PixelBudget,
    check_job,
)
from gateway.settings import Settings
from tests.inference.hostile import (
    SOC_SIZ,
    huge_header,
    j2k_bomb,
    jpeg_with_wrong_rows,
    radiograph,
    rle_offsets_past_the_end,
    shared_files,
)
from tests.services.processes import SHARED_DICOM

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
# pydicom's own test file with 128 bytes after its declared Pixel Data: refused on purpose.
PADDED_ON_PURPOSE = {"MR_small_padded.dcm"}


def _refusal(dataset: Dataset, budget: PixelBudget | None = None) -> str:
    with pytest.raises(DecodeError) as refused:
        check_job([dataset], budget or PixelBudget())
    reason = str(refused.value)
    assert str(dataset.SOPInstanceUID) in reason
    return reason


def test_the_budget_defaults_are_the_settings_defaults() -> None:
    fields = Settings.model_fields
    assert fields["max_pixels_per_frame"].default == DEFAULT_MAX_PIXELS_PER_FRAME
    assert fields["max_pixels_per_job"].default == DEFAULT_MAX_PIXELS_PER_JOB
    assert DEFAULT_MAX_PIXELS_PER_FRAME > 4096 * 5625  # the largest real mammogram
    assert DEFAULT_MAX_PIXELS_PER_JOB > 2000 * 512 * 512  # a 2000-slice CT


def test_a_j2k_siz_of_60000_squared_in_a_64_squared_dataset_is_refused() -> None:
    reason = _refusal(j2k_bomb(radiograph(1).datasets[0]))
    assert "JPEG 2000 header has 60000 rows, the dataset's Rows is 64" in reason


def test_the_same_bomb_wrapped_in_a_jp2_file_is_refused() -> None:
    dataset = j2k_bomb(radiograph(2).datasets[0])
    data = bytearray(dataset.PixelData)
    first = data.index(SOC_SIZ)
    codestream = bytes(data[first:])
    boxes = (
        b"\x00\x00\x00\x0cjP  \r\n\x87\n"
        + struct.pack(">I4s4sI4s", 20, b"ftyp", b"jp2 ", 0, b"jp2 ")
        + struct.pack(">I4s", 8 + len(codestream), b"jp2c")
        + codestream
    )
    item = struct.pack("<HHI", 0xFFFE, 0xE000, len(boxes) + len(boxes) % 2)
    dataset.PixelData = bytes(data[: first - 8]) + item + boxes + b"\0" * (len(boxes) % 2)
    assert "JPEG 2000 header has 60000 rows" in _refusal(dataset)


def test_an_htj2k_siz_is_read_like_jpeg_2000_and_named() -> None:
    dataset = radiograph(3).datasets[0]
    dataset.compress(JPEG2000Lossless)
    data = bytearray(dataset.PixelData)
    siz = data.index(SOC_SIZ)
    struct.pack_into(">H", data, siz + 6, 0x4000)  # Rsiz: capabilities (CAP) present
    struct.pack_into(">I", data, siz + 8, 65)  # Xsiz: one column too many
    header = j2k_header(bytes(data[siz:]))
    assert (header.kind, header.rows, header.columns) == ("HTJ2K", 64, 65)
    dataset.PixelData = bytes(data)
    assert "HTJ2K header has 65 columns, the dataset's Columns is 64" in _refusal(dataset)


def test_65535_squared_with_10_bytes_is_over_the_frame_budget_and_the_wrong_length() -> None:
    dataset = huge_header(radiograph(4).datasets[0])
    assert "65535 × 65535 = 4294836225 pixels, more than max_pixels_per_frame" in _refusal(dataset)
    roomy = PixelBudget(max_pixels_per_frame=1 << 33, max_pixels_per_job=1 << 33)
    reason = _refusal(dataset, roomy)
    assert "native Pixel Data of 10 bytes, the dataset declares 8589672450" in reason


def test_rle_segment_offsets_past_the_end_are_refused() -> None:
    reason = _refusal(rle_offsets_past_the_end(radiograph(5).datasets[0]))
    assert "RLE segment 2 starts at byte 2147483632, past the frame's" in reason


@pytest.mark.shared_data
def test_a_real_jpeg_sof_that_disagrees_with_rows_is_refused() -> None:
    dataset = jpeg_with_wrong_rows(radiograph(6).datasets[0])
    assert "JPEG SOF0 header has 1024 rows, the dataset's Rows is 512" in _refusal(dataset)


def test_fewer_fragments_than_frames_is_refused() -> None:
    dataset = radiograph(7).datasets[0]
    dataset.compress(JPEG2000Lossless)
    dataset.NumberOfFrames = 3
    assert "1 fragments for 3 frames" in _refusal(dataset)


def test_an_item_longer_than_the_pixel_data_is_refused_without_reading_it() -> None:
    dataset = radiograph(8).datasets[0]
    dataset.compress(JPEG2000Lossless)
    data = bytearray(dataset.PixelData)
    struct.pack_into("<I", data, 16, 0xFFFFFFF0)  # the first fragment's length
    dataset.PixelData = bytes(data)
    assert "item 1 declares 4294967280 bytes" in _refusal(dataset)


def test_the_job_budget_counts_every_frame_of_every_instance() -> None:
    datasets = [radiograph(9 + n).datasets[0] for n in range(3)]
    budget = PixelBudget(max_pixels_per_frame=64 * 64, max_pixels_per_job=2 * 64 * 64)
    with pytest.raises(DecodeError, match="3 instances declare 12288 pixels in all"):
        check_job(datasets, budget)
    check_job(datasets[:2], budget)


def test_parsers_stop_at_the_end_of_what_they_were_given() -> None:
    with pytest.raises(CodestreamError, match="declares 65535 bytes"):
        jpeg_header(b"\xff\xd8\xff\xe0\xff\xff" + bytes(10))
    with pytest.raises(CodestreamError, match="no SOF"):
        jpeg_header(b"\xff\xd8\xff\xda\x00\x02")
    with pytest.raises(CodestreamError, match="SIZ truncated"):
        j2k_header(SOC_SIZ + bytes(10))
    with pytest.raises(CodestreamError, match="JP2 box"):
        j2k_header(b"\x00\x00\x00\x0cjP  \r\n\x87\n" + struct.pack(">I4s", 1 << 30, b"jp2c"))
    with pytest.raises(CodestreamError, match="17 segments"):
        rle_header(struct.pack("<16I", 17, *([64] * 15)), 1000)


@pytest.mark.shared_data
@pytest.mark.parametrize(
    "path", shared_files() if SHARED_DICOM.is_dir() else [], ids=lambda p: p.name
)
def test_every_real_shared_file_with_pixels_passes(path: Path) -> None:
    dataset = dcmread(path)
    if "PixelData" not in dataset:
        pytest.skip("no Pixel Data (a structured report)")
    check_job([dataset], PixelBudget())


def test_every_pydicom_test_file_that_decodes_passes() -> None:
    checked = 0
    for path in sorted(PYDICOM_FILES.glob("*.dcm")):
        if path.name in PADDED_ON_PURPOSE:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                dataset = dcmread(path)
                if "PixelData" not in dataset:
                    continue
                dataset.pixel_array  # noqa: B018 - what pydicom decodes we must pass
            except Exception:
                continue
            check_job([dataset], PixelBudget())
            checked += 1
    assert checked > 40  # native, RLE, JPEG, JPEG-LS and JPEG 2000, single and multi-frame


def test_a_jpeg_ls_sof55_that_disagrees_with_columns_is_refused() -> None:
    dataset = dcmread(PYDICOM_FILES / "MR_small_jpeg_ls_lossless.dcm")
    dataset.Columns = 65
    assert "JPEG-LS header has 64 columns, the dataset's Columns is 65" in _refusal(dataset)


@pytest.mark.shared_data
def test_a_real_jpeg_lossless_sof3_that_disagrees_with_columns_is_refused() -> None:
    path = SHARED_DICOM / "MG_GE_SenographeEssential_RMLO_ForPresentation_JPEGLossless.dcm"
    if not path.is_file():
        pytest.skip("the shared mammogram is absent")
    dataset = dcmread(path)
    dataset.Columns = 2048
    assert "JPEG SOF3 header has 2394 columns, the dataset's Columns is 2048" in _refusal(dataset)
