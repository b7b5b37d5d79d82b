"""Pixel Data impossible on its face is refused at the edge with 0xC000 and the reason, over a
real association; everything real (the shared files, pydicom's own test files) is stored."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import JPEG2000Lossless, RLELossless
from sqlalchemy import select

from gateway.errors import InvalidInstance
from gateway.index.tables import InstanceRow
from gateway.ingest.pixels import check_pixel_data
from gateway.pixel_data import PixelGeometry
from pacs_adapters.dicom_scu import Peer, SendReport, send
from tests.inference.hostile import radiograph, shared_files
from tests.services.processes import SHARED_DICOM
from workers.serve import Gateway

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
PADDED_ON_PURPOSE = {"MR_small_padded.dcm"}  # 128 bytes past its Pixel Data: refused


def _send(gateway: Gateway, datasets: list[Dataset], folder: Path) -> SendReport:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, dataset in enumerate(datasets):
        path = folder / f"{number}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return send(paths, Peer("127.0.0.1", gateway.parts.settings.dicom_port, "AIGW", "IRK_CAMI"))


def _stored(gateway: Gateway) -> set[str]:
    with gateway.parts.db.session() as session:
        return set(session.scalars(select(InstanceRow.sop_instance_uid)))


def test_impossible_pixel_data_is_refused_with_the_reason_and_not_stored(
    gateway: Gateway, tmp_path: Path
) -> None:
    short = radiograph(51).datasets[0]
    short.Rows = 65  # one row more than the 64 × 64 × 2 bytes that came
    frames = radiograph(52).datasets[0]
    frames.compress(JPEG2000Lossless)
    frames.NumberOfFrames = 3  # one fragment cannot hold three frames
    sound = radiograph(53).datasets[0]
    sound.compress(RLELossless)

    report = _send(gateway, [short, frames, sound], tmp_path / "in")

    assert report.sent == 1, report.failed
    reasons = {Path(path).name: why for path, why in report.failed.items()}
    assert reasons["0.dcm"].startswith("0xC000")
    assert "Pixel Data has 8192 bytes, not 8320" in reasons["0.dcm"]
    assert reasons["1.dcm"].startswith("0xC000")
    assert "1 fragments for 3 frames" in reasons["1.dcm"]
    assert _stored(gateway) == {sound.SOPInstanceUID}


@pytest.mark.shared_data
def test_every_real_shared_file_is_stored_but_for_its_invalid_uids(gateway: Gateway) -> None:
    files = shared_files()
    report = send(files, Peer("127.0.0.1", gateway.parts.settings.dicom_port, "AIGW", "IRK_CAMI"))
    # One real file carries hex digests as UIDs: refused 0xC002 before its pixels are read.
    assert {Path(p).name: why[:6] for p, why in report.failed.items()} == {
        "CT_Siemens_JPEGLossless_badseq.dcm": "0xC002"
    }
    assert report.sent == len(files) - 1


def _check_file(path: Path) -> None:
    with open(path, "rb") as handle:
        dataset = dcmread(handle, stop_before_pixels=True)
        check_pixel_data(handle, handle.tell(), path.stat().st_size, dataset)


@pytest.mark.parametrize(
    "path", shared_files() if SHARED_DICOM.is_dir() else [], ids=lambda p: p.name
)
def test_no_real_shared_file_is_impossible(path: Path) -> None:
    _check_file(path)


def test_no_pydicom_test_file_that_decodes_is_impossible_and_the_padded_one_is() -> None:
    checked = 0
    for path in sorted(PYDICOM_FILES.glob("*.dcm")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                dcmread(path).pixel_array  # noqa: B018 - what pydicom decodes we must keep
            except Exception:
                continue
        if path.name in PADDED_ON_PURPOSE:
            with pytest.raises(InvalidInstance, match="Pixel Data has 8320 bytes, not 8192"):
                _check_file(path)
            continue
        _check_file(path)
        checked += 1
    assert checked > 40


@pytest.mark.parametrize(
    ("bits", "length", "possible"),
    [(8, 9, True), (8, 10, True), (8, 11, False), (16, 18, True), (16, 20, False), (1, 2, True)],
)
def test_one_pad_byte_is_allowed_after_an_odd_length(
    bits: int, length: int, possible: bool
) -> None:
    geometry = PixelGeometry(3, 3, 1, bits, bits, 1, "MONOCHROME2")
    assert geometry.native_length_matches(length) is possible
