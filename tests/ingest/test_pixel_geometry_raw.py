"""The Pixel Data check reads the geometry from the raw elements (gateway.ingest.pixels): on
every real file, and on hand-made encodings of each attribute, it declares what pydicom's own
conversion declares."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.uid import UID, ExplicitVRBigEndian, ImplicitVRLittleEndian

from gateway.errors import PixelDataError
from gateway.ingest.pixels import _declared
from gateway.pixel_data import PixelGeometry, pixel_geometry
from tests.services.processes import SHARED_DICOM

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _through_pydicom(dataset: Dataset) -> PixelGeometry | None:
    try:
        return pixel_geometry(dataset)
    except PixelDataError:
        return None


def _header(path: Path) -> Dataset:
    return dcmread(path, stop_before_pixels=True, force=True)


def _real_files() -> list[Path]:
    shared = sorted(SHARED_DICOM.rglob("*.dcm")) if SHARED_DICOM.is_dir() else []
    return shared + sorted(PYDICOM_FILES.glob("*.dcm"))


@pytest.mark.parametrize("path", _real_files(), ids=lambda p: p.name)
def test_real_files_declare_what_pydicom_declares(path: Path) -> None:
    try:
        raw = _header(path)
    except Exception as exc:  # pydicom's deliberately broken files
        pytest.skip(f"pydicom cannot read it: {exc.__class__.__name__}")
    assert isinstance(raw.get_item(0x00280010), RawDataElement | None)  # still raw here
    assert _declared(raw) == _through_pydicom(_header(path))


def _encoded(dataset: Dataset, syntax: str) -> Dataset:
    dataset.file_meta = pydicom.dataset.FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = UID(syntax)
    dataset.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    dataset.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3.4")
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return dcmread(io.BytesIO(buffer.getvalue()), stop_before_pixels=True)


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
@pytest.mark.parametrize(
    ("frames", "photometric"),
    [
        ("3", "MONOCHROME2"),
        (" 2 ", "RGB "),
        ("+4", " YBR_FULL"),
        ("1.0", "MONOCHROME1"),  # not digits: through pydicom
        ("2\\3", "MONOCHROME2"),  # two values: through pydicom (refused there)
        ("", "PALETTE COLOR"),  # empty: through pydicom (the default of 1)
        ("0", "MONOCHROME2"),  # refused by pixel_geometry, as before
        ("1", "MONOCHROME2\\RGB"),  # two values: through pydicom
        (None, ""),
    ],
)
def test_each_encoding_declares_what_pydicom_declares(
    syntax: str, frames: str | None, photometric: str
) -> None:
    dataset = Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    dataset.SOPInstanceUID = "1.2.3.4"
    dataset.Rows, dataset.Columns = 300, 513
    dataset.SamplesPerPixel, dataset.BitsAllocated, dataset.BitsStored = 3, 16, 12
    dataset.PhotometricInterpretation = photometric
    if frames is not None:
        dataset.add_new(0x00280008, "IS", frames)
    raw = _encoded(dataset, syntax)
    declared = _declared(raw)
    assert declared == _through_pydicom(_encoded(dataset, syntax))
    if frames == "3":
        assert declared == PixelGeometry(300, 513, 3, 16, 12, 3, "MONOCHROME2")
        # read from the raw bytes: pydicom converted none of them
        assert all(
            isinstance(raw.get_item(tag), RawDataElement) for tag in (0x00280010, 0x00280008)
        )


def test_a_converted_element_is_read_through_pydicom() -> None:
    dataset = _encoded(_plain(), ImplicitVRLittleEndian)
    dataset.Rows = 7  # converted now, and changed
    declared = _declared(dataset)
    assert declared is not None and declared.rows == 7


def test_a_missing_attribute_is_still_missing() -> None:
    dataset = _plain()
    del dataset.Columns
    assert _declared(_encoded(dataset, ImplicitVRLittleEndian)) is None


def _plain() -> Dataset:
    dataset = Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    dataset.SOPInstanceUID = "1.2.3.4"
    dataset.Rows, dataset.Columns = 4, 5
    dataset.SamplesPerPixel, dataset.BitsAllocated = 1, 8
    return dataset
