"""Attributes the index does not keep, taken from the stored objects' headers (QIDO-RS's
``includefield``, the results' series and SOP class): read together, a batch at a time,
not one read per object as each is asked for; the values are the objects' own."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pydicom
import pytest

from gateway.dicomweb.catalog import InstanceRecord
from gateway.dicomweb.qido import Headers, instance_datasets, parse_query
from gateway.index.object_store import FolderStore
from tests.services import write_ct_series


class _Counted(FolderStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.head_calls: list[list[str]] = []

    def get_heads(self, keys: Sequence[str], size: int) -> list[bytes]:
        self.head_calls.append(list(keys))
        return super().get_heads(keys, size)


def _stored(tmp_path: Path, count: int) -> tuple[_Counted, list[InstanceRecord]]:
    store = _Counted(tmp_path / "objects")
    records = []
    for number, path in enumerate(write_ct_series(tmp_path / "series", count), start=1):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        key = f"studies/s/{number}.dcm"
        store.put(key, path.read_bytes())
        records.append(
            InstanceRecord(
                study_uid=str(ds.StudyInstanceUID),
                series_uid=str(ds.SeriesInstanceUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                object_key=key,
                is_result=False,
                sop_class_uid=str(ds.SOPClassUID),
                instance_number=number,
            )
        )
    return store, records


def test_an_includefield_reads_the_pages_headers_together(tmp_path: Path) -> None:
    store, records = _stored(tmp_path, 12)
    query = parse_query({"includefield": ["ImagePositionPatient,SliceThickness"]}, "instances", 100)

    found = instance_datasets(records, query, "http://gw", Headers(store))

    assert store.head_calls == [[r.object_key for r in records]]  # one read of all twelve
    for record, ds in zip(records, found, strict=True):
        stored = pydicom.dcmread(store.root / record.object_key, stop_before_pixels=True)
        assert ds.SOPInstanceUID == record.sop_instance_uid
        assert ds.ImagePositionPatient == stored.ImagePositionPatient
        assert ds.SliceThickness == stored.SliceThickness
    assert len({str(ds.ImagePositionPatient) for ds in found}) == 12  # each slice its own


def test_only_the_page_is_read_and_nothing_when_the_index_answers(tmp_path: Path) -> None:
    store, records = _stored(tmp_path, 6)
    paged = parse_query(
        {"includefield": ["ImagePositionPatient"], "limit": ["2"], "offset": ["3"]},
        "instances",
        100,
    )
    found = instance_datasets(records, paged, "http://gw", Headers(store))
    assert [ds.SOPInstanceUID for ds in found] == [r.sop_instance_uid for r in records[3:5]]
    assert store.head_calls == [[r.object_key for r in records[3:5]]]

    store.head_calls.clear()
    indexed = parse_query({"includefield": ["InstanceNumber"]}, "instances", 100)
    instance_datasets(records, indexed, "http://gw", Headers(store))
    assert store.head_calls == []


def test_a_header_read_once_is_not_read_again_and_a_damaged_one_is_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, records = _stored(tmp_path, 3)
    store.put("results/r/sr.dcm", b"not a DICOM object at all")
    headers = Headers(store)
    headers.read_together([records[0].object_key, "results/r/sr.dcm", records[0].object_key])
    assert store.head_calls == [[records[0].object_key, "results/r/sr.dcm"]]

    header = headers.of(records[0].object_key)
    assert header is not None and header.SOPInstanceUID == records[0].sop_instance_uid
    assert headers.of("results/r/sr.dcm") is None
    assert len(store.head_calls) == 1  # both answered from what was read
    (logged,) = [r for r in caplog.records if r.getMessage() == "stored object unreadable"]
    assert "File Meta Information" in logged.__dict__["error"]


def test_a_damaged_object_leaves_out_its_attributes_not_the_answer(tmp_path: Path) -> None:
    store, records = _stored(tmp_path, 3)
    store.put(records[1].object_key, b"\0" * 200)  # an original damaged since it came in
    store.put("results/r/sr.dcm", b"DICM but nothing more")
    result = InstanceRecord("1.2", "1.3", "1.4", "results/r/sr.dcm", is_result=True)
    headers = Headers(store)

    assert headers.complete_all([*records, result])[-1] == result  # as the index has it
    query = parse_query({"includefield": ["ImagePositionPatient"]}, "instances", 100)
    found = instance_datasets(records, query, "http://gw", headers)
    assert [ds.SOPInstanceUID for ds in found] == [r.sop_instance_uid for r in records]
    assert ["ImagePositionPatient" in ds for ds in found] == [True, False, True]
