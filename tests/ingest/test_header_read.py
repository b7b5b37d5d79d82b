"""The received header is parsed in memory from the file's first bytes when they hold its
Pixel Data element's start (by gateway.ingest.header where it is plain, else pydicom); the
index attributes, the elements they come from and the Pixel Data checks come out exactly as
when the whole file is read by pydicom (real files of ../shared/data/dicom, and headers
built to fall back: longer than the in-memory part, no Pixel Data, cut short)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset, dcmread

from gateway.errors import InvalidInstance
from gateway.ingest import receive
from gateway.ingest.header import Header, PlainHeader
from gateway.ingest.pixels import check_pixel_data
from gateway.ingest.tags import read_tags
from tests.report_fixtures import SHARED_DICOM
from tests.services.series import ct_instance, make_uid

REAL = sorted(SHARED_DICOM.rglob("*.dcm")) if SHARED_DICOM.is_dir() else []


def _before(path: Path) -> tuple[Dataset, int]:
    """What ingest did before: the whole file through pydicom's file reader."""
    with open(path, "rb") as handle:
        dataset = dcmread(handle, stop_before_pixels=True)
        dataset.get("StudyInstanceUID")
        position = handle.tell()
        check_pixel_data(handle, position, path.stat().st_size, dataset)
    return dataset, position


def _kept(header: Header) -> dict[int, str]:
    """The values (as pydicom converts them) of the elements ingest reads."""
    dataset = header.dataset() if isinstance(header, PlainHeader) else header
    return {tag: repr(dataset[tag].value) for tag in sorted(receive._WANTED) if tag in dataset}


def _outcome(read: Callable[[], tuple[Header, int]]) -> tuple[object, ...]:
    """The index attributes, the Pixel Data position and the elements read; or the
    refusal."""
    try:
        dataset, position = read()
        return position, _kept(dataset), read_tags(dataset)
    except InvalidInstance as exc:
        return "refused", exc.reason
    except Exception as exc:
        return "refused", exc.__class__.__name__


def _now(path: Path) -> tuple[Header, int]:
    with open(path, "rb") as handle:
        dataset, position = receive._read_header(handle)
        dataset.get("StudyInstanceUID")
        check_pixel_data(handle, position, path.stat().st_size, dataset)
    return dataset, position


def _same(path: Path) -> tuple[object, ...]:
    before = _outcome(lambda: _before(path))
    assert _outcome(lambda: _now(path)) == before
    return before


@pytest.mark.skipif(not REAL, reason=f"no real DICOM files under {SHARED_DICOM}")
@pytest.mark.parametrize("path", REAL, ids=[p.name for p in REAL])
def test_real_files_read_alike(path: Path) -> None:
    _same(path)


def _ct(tmp_path: Path, **extra: object) -> Path:
    study = make_uid("header-read")
    ds = ct_instance(study, make_uid(study, "s"), make_uid(study, "i"), size=64)
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_small_file_is_read_whole_in_memory(tmp_path: Path) -> None:
    _same(_ct(tmp_path))


def test_a_header_longer_than_the_in_memory_part_is_read_from_the_file(tmp_path: Path) -> None:
    long_header = _ct(tmp_path, ImageComments="x" * (receive._HEADER_BYTES + 4000))
    assert long_header.stat().st_size > receive._HEADER_BYTES
    _same(long_header)


def test_a_large_file_with_a_short_header_is_read_in_memory(tmp_path: Path) -> None:
    study = make_uid("header-read-large")
    ds = ct_instance(study, make_uid(study, "s"), make_uid(study, "i"), size=512)
    path = tmp_path / "large.dcm"
    ds.save_as(path, enforce_file_format=True)
    with open(path, "rb") as handle:
        _dataset, position = receive._read_header(handle)
        assert position < receive._HEADER_BYTES and handle.tell() <= receive._HEADER_BYTES + 12
    _same(path)


def test_pixel_data_cut_short_is_refused_as_before(tmp_path: Path) -> None:
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(_ct(tmp_path).read_bytes()[:-10])
    assert _same(cut)[0] == "refused"
    with pytest.raises(InvalidInstance, match="truncated"):
        receive._parse(receive._Received(path=cut))


def test_a_header_cut_inside_an_element_reads_as_before(tmp_path: Path) -> None:
    path = _ct(tmp_path, ImageComments="y" * (receive._HEADER_BYTES * 2))
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(path.read_bytes()[: receive._HEADER_BYTES + 100])
    _same(cut)


def test_a_dataset_without_pixel_data_reads_alike(tmp_path: Path) -> None:
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = make_uid("no-pixels", "i")
    ds.StudyInstanceUID = make_uid("no-pixels")
    ds.SeriesInstanceUID = make_uid("no-pixels", "s")
    ds.TextValue = "z" * (receive._HEADER_BYTES + 10)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    path = tmp_path / "sr.dcm"
    path.write_bytes(buffer.getvalue())
    _same(path)
