"""Stored objects' headers read from their first bytes (``gateway.index.stored_headers``), on
a folder store and a real S3 server: the same dataset as a parse of the whole object, the
whole object read only where the head does not reach the pixels."""

from __future__ import annotations

import io
import itertools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from gateway.errors import StorageError
from gateway.index.object_store import FolderStore, ObjectStore
from gateway.index.s3_store import S3Store
from gateway.index.stored_headers import HEAD_BYTES, read_header, read_headers
from tests.services import S3_CREDENTIALS, S3Server, require_shared_data, s3_server

_UIDS = itertools.count(1)


def _uid() -> UID:
    # One length for every UID: two encodings of a slice differ only where a test says.
    return UID(f"1.2.826.0.1.3680043.10.1299.{10**11 + next(_UIDS)}")


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


class _CountedFolder(FolderStore):
    whole_reads = 0

    def get(self, key: str) -> bytes:
        self.whole_reads += 1
        return super().get(key)


class _CountedS3(S3Store):
    whole_reads = 0

    def get(self, key: str) -> bytes:
        self.whole_reads += 1
        return super().get(key)


Counted = _CountedFolder | _CountedS3


@pytest.fixture(params=["folder", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Counted:
    if request.param == "folder":
        return _CountedFolder(tmp_path / "objects")
    server: S3Server = request.getfixturevalue("s3")
    return _CountedS3(
        server.endpoint,
        S3_CREDENTIALS["s3_access_key"],
        S3_CREDENTIALS["s3_secret_key"],
        f"aigw-{uuid.uuid4().hex[:12]}",
    )


def _ct_slice(
    blob: int = 0,
    comments: str = "after the blob",
    pixels: bool = True,
    size: int = 64,
    syntax: UID = ExplicitVRLittleEndian,
) -> bytes:
    """A CT slice of ``size``²: a private OB value of ``blob`` bytes before Image Comments,
    then pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = _uid()
    ds.SOPClassUID = CTImageStorage
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(), _uid()
    ds.Modality, ds.PatientName = "CT", "Test^Header"
    if blob:
        ds.add_new(0x00091010, "LO", "AIGW TEST")
        ds.add_new(0x00091011, "OB", b"\x01" * blob)
    ds.ImageComments = comments
    if pixels:
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.SamplesPerPixel, ds.PixelRepresentation = 1, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = (np.arange(size * size) % 2000).astype(np.int16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _ending_at_the_head(comments: str) -> bytes:
    """A slice whose elements end exactly where the head does, Image Comments beyond it:
    a parse of the head alone ends cleanly, without it."""
    first = _ct_slice(blob=HEAD_BYTES - 2000, comments=comments)
    start = first.index(b"\x20\x00\x00\x40LT")  # Image Comments, explicit VR little endian
    data = _ct_slice(blob=HEAD_BYTES - 2000 + HEAD_BYTES - start, comments=comments)
    assert data.index(b"\x20\x00\x00\x40LT") == HEAD_BYTES
    return data


def _undefined_length_blob(comments: str) -> bytes:
    """A slice whose private OB has an undefined length (delimited), its value beginning with
    Pixel Data's tag bytes and its delimiter beyond the head: a parse of the head alone ends
    quietly at the value's start, as if at the pixels."""
    data = _ct_slice(blob=70_000, comments=comments)
    header = b"\x09\x00\x11\x10OB\x00\x00" + (70_000).to_bytes(4, "little")
    start = data.index(header) + len(header)
    value = b"\xe0\x7f\x10\x00" + data[start + 4 : start + 70_000]
    delimited = (
        b"\x09\x00\x11\x10OB\x00\x00\xff\xff\xff\xff" + value + b"\xfe\xff\xdd\xe0" + bytes(4)
    )
    return data[: start - len(header)] + delimited + data[start + 70_000 :]


def _parsed_whole(data: bytes) -> dict[str, object]:
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).to_json_dict()


def _put(store: ObjectStore, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        store.put(key, data)


def test_a_plain_header_is_read_from_the_head_alone(store: Counted) -> None:
    objects = {
        "studies/1/explicit.dcm": _ct_slice(comments="explicit", size=512),
        "studies/1/implicit.dcm": _ct_slice(
            comments="implicit", size=512, syntax=ImplicitVRLittleEndian
        ),
        "studies/1/small.dcm": _ct_slice(comments="shorter than the head"),
        "studies/1/sr.dcm": _ct_slice(comments="no pixels", pixels=False),
    }
    assert len(objects["studies/1/explicit.dcm"]) > HEAD_BYTES
    _put(store, objects)
    found = dict(read_headers(store, list(objects)))
    for key, data in objects.items():
        header = found[key]
        assert isinstance(header, Dataset)
        assert header.to_json_dict() == _parsed_whole(data)
        assert "PixelData" not in header
    assert store.whole_reads == 0


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: _ct_slice(blob=3 * HEAD_BYTES), id="header-longer-than-the-head"),
        pytest.param(lambda: _ending_at_the_head("beyond the head"), id="cut-between-elements"),
        pytest.param(lambda: _ct_slice(blob=HEAD_BYTES - 30), id="cut-inside-an-element"),
        pytest.param(lambda: _undefined_length_blob("beyond the head"), id="undefined-length"),
    ],
)
def test_a_head_that_does_not_reach_the_pixels_is_read_whole(
    store: Counted, make: Callable[[], bytes]
) -> None:
    data = make()
    _put(store, {"studies/2/long.dcm": data})
    header = read_header(store, "studies/2/long.dcm")
    assert header.to_json_dict() == _parsed_whole(data)
    assert header.ImageComments == pydicom.dcmread(io.BytesIO(data)).ImageComments
    assert store.whole_reads == 1


def test_an_unreadable_object_is_reported_and_the_others_go_on(store: Counted) -> None:
    objects = {
        "studies/3/a.dcm": _ct_slice(comments="a"),
        "studies/3/damaged.dcm": b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00\xff\xff",
        "studies/3/empty.dcm": b"",
        "studies/3/b.dcm": _ct_slice(comments="b"),
    }
    _put(store, objects)
    found = dict(read_headers(store, list(objects)))
    assert isinstance(found["studies/3/damaged.dcm"], Exception)
    assert isinstance(found["studies/3/empty.dcm"], Exception)
    for key, comments in (("studies/3/a.dcm", "a"), ("studies/3/b.dcm", "b")):
        header = found[key]
        assert isinstance(header, Dataset) and header.ImageComments == comments


def test_a_missing_object_is_the_stores_failure(store: Counted) -> None:
    _put(store, {"studies/4/a.dcm": _ct_slice()})
    with pytest.raises(StorageError, match="studies/4/gone"):
        list(read_headers(store, ["studies/4/a.dcm", "studies/4/gone.dcm"]))


@pytest.mark.shared_data
def test_real_scanner_files_give_the_whole_files_headers(store: Counted) -> None:
    root = require_shared_data()
    files = sorted(p for p in root.rglob("*.dcm") if p.stat().st_size < 4 * 2**20)
    objects = {f"real/{i}.dcm": path.read_bytes() for i, path in enumerate(files)}
    _put(store, objects)
    for key, header in read_headers(store, list(objects)):
        assert isinstance(header, Dataset), key
        assert header.to_json_dict() == _parsed_whole(objects[key]), key
    # Every one of these reaches its pixels (or ends) within the head.
    assert store.whole_reads == 0
