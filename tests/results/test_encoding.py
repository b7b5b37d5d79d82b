"""Part-10 bytes of the result objects: the fast paths write what pydicom's writer writes."""

from __future__ import annotations

import copy
import io

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from gateway.results import flags, gsps, seg, sr
from gateway.results.encoding import part10
from gateway.results.header import source_header
from gateway.results.input import ReportInput
from tests import report_fixtures
from tests.services import require_shared_data


def _pydicom_bytes(dataset: Dataset) -> bytes:
    """What pydicom's own writer makes of the object (a copy: part10 marks what it wrote)."""
    fresh = copy.deepcopy(dataset)
    buffer = io.BytesIO()
    fresh.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _with_meta(dataset: Dataset) -> Dataset:
    dataset.file_meta = pydicom.dataset.FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return dataset


@pytest.fixture(scope="module")
def chest() -> ReportInput:
    return report_fixtures.chest_xray_input(positive=True)


def _radiograph_objects(report: ReportInput) -> list[Dataset]:
    """The SR, GSPS and flag images of a radiograph's results, as the results stage builds them."""
    objects = [sr.build_sr(report), gsps.build_gsps(report)]
    objects += [flag.dataset for flag in flags.build_flags(report)]
    assert None not in objects
    return [dataset for dataset in objects if dataset is not None]


def test_result_objects_are_the_bytes_pydicom_writes(chest: ReportInput) -> None:
    for dataset in _radiograph_objects(chest):
        expected = _pydicom_bytes(_with_meta(dataset))
        assert part10(dataset) == expected, dataset.Modality
        assert part10(dataset) == expected, "written twice"  # the marks change nothing


def test_pixel_data_joined_behind_is_padded_and_reads_back() -> None:
    dataset = Dataset()
    dataset.SOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = generate_uid()
    dataset.SpecificCharacterSet = "ISO_IR 192"
    dataset.PatientName = "Иванов^Иван"
    pixels = np.random.default_rng(3).integers(0, 256, (1 << 20) + 1, dtype=np.uint8)
    dataset.add_new(0x7FE00010, "OB", pixels.tobytes())  # odd length: written with a pad byte
    expected = _pydicom_bytes(_with_meta(dataset))
    written = part10(dataset)
    assert written == expected
    back = pydicom.dcmread(io.BytesIO(written))
    assert back.PixelData[: len(pixels)] == pixels.tobytes() and len(back.PixelData) % 2 == 0
    assert str(back.PatientName) == "Иванов^Иван"


def test_real_headers_in_their_character_sets() -> None:
    """Copied headers of real scanner files (sequences read lazily, other character sets)."""
    files = sorted(require_shared_data().glob("*.dcm"))
    assert files
    for path in files:
        source = pydicom.dcmread(path, stop_before_pixels=True)
        header = _with_meta(source_header(source))
        assert part10(header) == _pydicom_bytes(header), path.name


@pytest.mark.parametrize("size", [(2048, 2048), (2500, 2048)])
def test_radiograph_objects_at_detector_sizes(size: tuple[int, int]) -> None:
    """The objects of a chest X-ray at real detector sizes, as the results stage builds
    them: each the bytes pydicom's writer makes."""
    for dataset in _radiograph_objects(report_fixtures.chest_xray_input(size=size)):
        expected = _pydicom_bytes(_with_meta(dataset))  # first: it gives the file meta
        assert part10(dataset) == expected, dataset.Modality


def test_ct_objects_with_a_segmentation() -> None:
    ct = report_fixtures.ct_chest_input(n_slices=20, size=(128, 128))
    segmentation = seg.build_seg(ct)
    assert segmentation is not None
    for dataset in (sr.build_sr(ct), segmentation):
        expected = _pydicom_bytes(_with_meta(dataset))
        assert part10(dataset) == expected, dataset.Modality


def test_every_kind_of_value_the_element_writer_takes() -> None:
    """Values the fast element writer encodes itself and those it leaves to pydicom."""
    dataset = Dataset()
    dataset.SOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = "1.2.3.45"  # odd length: a NUL pad
    dataset.SpecificCharacterSet = "ISO_IR 192"
    dataset.PatientName = "Петров^Пётр"
    dataset.PatientID = ""
    dataset.StudyDescription = "odd"
    dataset.SeriesDescription = "Серия"
    dataset.ImageType = ["DERIVED", "SECONDARY"]
    dataset.StudyDate = "20240101"
    dataset.PixelSpacing = [0.139, 0.1390]
    dataset.SliceThickness = "1.25"
    dataset.InstanceNumber = 7
    dataset.Rows, dataset.Columns = 3, 5
    dataset.add_new(0x00280106, "US", None)  # empty
    dataset.add_new(0x00181310, "US", [0, 512, 512, 0])
    dataset.add_new(0x00700022, "FL", [1.5, 2.25, 3.0])
    dataset.add_new(0x0040A30A, "DS", ["1.0", "2.5e3"])
    dataset.add_new(0x00189219, "SS", -3)
    dataset.add_new(0x00700250, "FD", 0.5)
    dataset.add_new(0x00211010, "LO", "private")  # a private element without its creator
    dataset.ImageComments = "x" * 70_001  # over a 16-bit length: pydicom writes it as UN
    dataset.add_new(0x00660023, "OW", b"\x01\x02\x03")  # odd: a NUL pad
    item, empty_item = Dataset(), Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "1", "DCM", "Код"
    empty_item.is_undefined_length_sequence_item = True
    dataset.DerivationCodeSequence = [item, empty_item]
    dataset.ReferencedImageSequence = []
    dataset["DerivationCodeSequence"].is_undefined_length = True
    expected = _pydicom_bytes(_with_meta(dataset))
    assert part10(dataset) == expected
    back = pydicom.dcmread(io.BytesIO(part10(dataset)))
    assert back.DerivationCodeSequence[0].CodeMeaning == "Код"
    assert list(back[0x00700022].value) == [1.5, 2.25, 3.0]


def test_file_meta_as_pydicom_writes_it() -> None:
    """A file meta of its own (implementation names, a stale instance UID, a group length,
    a preamble) written as dcmwrite writes it: the data set's UIDs win, lengths recounted."""
    dataset = Dataset()
    dataset.SOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = "1.2.3.4.5"
    dataset.PatientID = "X"
    dataset.file_meta = pydicom.dataset.FileMetaDataset()
    dataset.file_meta.FileMetaInformationGroupLength = 999
    dataset.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID("1.2.3.9")
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.ImplementationClassUID = pydicom.uid.UID("1.2.826.0.1.3680043.10.1")
    dataset.file_meta.ImplementationVersionName = "AIGW 1"
    dataset.file_meta.SourceApplicationEntityTitle = "AIGW"
    dataset.preamble = bytes(range(128))
    expected = _pydicom_bytes(dataset)
    assert part10(dataset) == expected
    assert dataset.file_meta.MediaStorageSOPInstanceUID == "1.2.3.9"  # the object's own kept
    with pytest.raises(ValueError):
        dataset.preamble = b"short"
        part10(dataset)
