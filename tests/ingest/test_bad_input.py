"""Untrusted input over the network: crafted C-STORE datasets sent byte for byte (pynetdicom's
chunked send puts a file's bytes after its meta on the wire without decoding them). Each is
answered with a named failure status and an Error Comment, logged with its reason, and the
server keeps answering. Then the legitimate oddities: the same instance twice, a changed
instance, and instances after completion."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from sqlalchemy import select

from gateway.index.tables import InstanceRow, SeriesRow, StudyEventRow, StudyRow
from gateway.ingest.scp import VERIFICATION
from gateway.settings import Settings
from gateway.uids import is_valid_uid
from pacs_adapters.requestor import associate
from tests.mutations import encode_body
from tests.services import CT_IMAGE_STORAGE, ct_instance, make_uid
from workers.serve import Gateway

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)


def encode(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    """The dataset's bytes in ``syntax`` (no file meta), invalid values allowed."""
    return encode_body(ds, syntax)


class Sender:
    """One association to the gateway that sends crafted Part-10 files as they are."""

    def __init__(self, port: int, folder: Path) -> None:
        self.folder = folder
        self.count = 0
        ae = AE("IRK_CAMI")
        for syntax in SYNTAXES:
            ae.add_requested_context(CT_IMAGE_STORAGE, syntax)
        ae.add_requested_context(VERIFICATION)
        self.assoc: Association = associate(ae, "127.0.0.1", port, ae_title="AIGW")
        assert self.assoc.is_established

    def store(
        self, request_sop_uid: str, body: bytes, syntax: str = ExplicitVRLittleEndian
    ) -> Dataset:
        """C-STORE ``body`` as the dataset of a request for ``request_sop_uid``."""
        meta = create_file_meta(
            sop_class_uid=UID(CT_IMAGE_STORAGE),
            sop_instance_uid=UID(request_sop_uid),
            transfer_syntax=UID(syntax),
        )
        self.count += 1
        path = self.folder / f"crafted{self.count}.dcm"
        path.write_bytes(b"\0" * 128 + b"DICM" + encode_file_meta(meta) + body)
        response = self.assoc.send_c_store(path)
        assert "Status" in response, "no response: the association broke"
        return response

    def echo(self) -> int:
        return int(self.assoc.send_c_echo().Status)


@pytest.fixture
def sender(gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sender]:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    one = Sender(gateway.parts.settings.dicom_port, tmp_path)
    yield one
    if one.assoc.is_established:
        one.assoc.release()


def _instance(tag: object = 0) -> Dataset:
    study = make_uid("bad-input-study", tag)
    series = make_uid("bad-input-series", tag)
    return ct_instance(study, series, make_uid("bad-input-sop", tag), size=16)


def _refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "gateway.ingest.receive" and r.msg == "instance refused"
    ]


def _assert_refused(
    response: Dataset,
    caplog: pytest.LogCaptureFixture,
    status_class: int,
    comment: str,
    sender: Sender,
    exact: int | None = None,
) -> None:
    status = int(response.Status)
    assert status & 0xF000 == status_class, hex(status)
    if exact is not None:
        assert status == exact, hex(status)
    assert comment in str(response.get("ErrorComment", "")), response
    logged = _refusals(caplog)
    assert logged, "no log line for the refusal"
    assert logged[-1].__dict__["status"] == f"0x{status:04X}"
    assert comment in logged[-1].__dict__["reason"]
    assert sender.echo() == 0  # the same association still works
    assert sender.assoc.is_established


def _indexed_sops(gateway: Gateway) -> list[str]:
    with gateway.parts.db.session() as session:
        return list(session.scalars(select(InstanceRow.sop_instance_uid)))


# --- malformed datasets ----------------------------------------------------------------------


def test_missing_study_uid(
    gateway: Gateway, sender: Sender, caplog: pytest.LogCaptureFixture
) -> None:
    ds = _instance("no-study")
    del ds.StudyInstanceUID
    response = sender.store(ds.SOPInstanceUID, encode(ds))
    _assert_refused(response, caplog, 0xC000, "missing StudyInstanceUID", sender, exact=0xC001)
    assert _indexed_sops(gateway) == []


@pytest.mark.parametrize(
    ("syntax", "comment"),
    [
        (ExplicitVRLittleEndian, "missing StudyInstanceUID"),
        (ImplicitVRLittleEndian, "missing StudyInstanceUID"),
        (DeflatedExplicitVRLittleEndian, "cannot parse dataset"),  # the stream cut short
    ],
)
def test_truncated_in_the_header(
    gateway: Gateway,
    sender: Sender,
    syntax: str,
    comment: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ds = _instance("truncated")
    body = encode(ds, syntax)
    if syntax == DeflatedExplicitVRLittleEndian:
        cut = body[: len(body) // 2]
    else:
        cut = body[: body.index(b"\x20\x00\x0d\x00") + 4]  # inside Study Instance UID's header
    response = sender.store(ds.SOPInstanceUID, cut, syntax)
    _assert_refused(response, caplog, 0xC000, comment, sender)
    assert _indexed_sops(gateway) == []


def test_truncated_in_the_pixel_data(
    gateway: Gateway, sender: Sender, caplog: pytest.LogCaptureFixture
) -> None:
    ds = _instance("truncated-pixels")
    body = encode(ds)
    response = sender.store(ds.SOPInstanceUID, body[: len(body) - 100])
    comment = "truncated: Pixel Data declares 512 bytes, 412 arrived"
    _assert_refused(response, caplog, 0xC000, comment, sender)
    assert _indexed_sops(gateway) == []


@pytest.mark.parametrize(
    ("name", "body", "comment"),
    [
        # Read as elements until the bytes stop making sense: none of the UIDs among them.
        ("random", random.Random(7).randbytes(600), "missing StudyInstanceUID"),
        # (FFFF,FFFF) of undefined length: taken for encapsulated Pixel Data, refused there.
        ("all 0xFF", b"\xff" * 64, "encapsulated Pixel Data: (FFFF,FFFF)"),
        ("text", b"this is not a DICOM dataset at all; " * 8, "missing StudyInstanceUID"),
        (
            "unclosed sequence",
            b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff"
            b"\xfe\xff\x00\xe0\xff\xff\xff\xff\x08\x00\x50\x11UI\x04\x001.2\x00",
            "cannot parse dataset",
        ),
        ("overlong element", b"\x08\x00\x18\x00UI\xff\xff1.2", "missing StudyInstanceUID"),
    ],
)
def test_garbage_after_a_valid_file_meta(
    gateway: Gateway,
    sender: Sender,
    name: str,
    body: bytes,
    comment: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    response = sender.store(make_uid("garbage", name), body)
    _assert_refused(response, caplog, 0xC000, comment, sender)
    assert _indexed_sops(gateway) == []


def test_garbage_in_a_deflated_dataset(
    gateway: Gateway, sender: Sender, caplog: pytest.LogCaptureFixture
) -> None:
    response = sender.store(
        make_uid("garbage-deflate"), random.Random(3).randbytes(300), DeflatedExplicitVRLittleEndian
    )
    _assert_refused(response, caplog, 0xC000, "cannot parse", sender)
    assert _indexed_sops(gateway) == []


def test_request_and_dataset_disagree(
    gateway: Gateway, sender: Sender, caplog: pytest.LogCaptureFixture
) -> None:
    ds = _instance("mismatch")
    response = sender.store(make_uid("some other instance"), encode(ds))
    _assert_refused(response, caplog, 0xA000, "SOP Instance UID differs", sender, exact=0xA900)
    ds.SOPClassUID = SECONDARY_CAPTURE  # the request says CT Image Storage
    response = sender.store(ds.SOPInstanceUID, encode(ds))
    _assert_refused(response, caplog, 0xA000, "SOP Class", sender, exact=0xA900)
    assert _indexed_sops(gateway) == []


# --- identifiers that would become paths -----------------------------------------------------

BAD_UIDS = [
    "../../etc/passwd",
    "1.2.3/../../x",
    "1.2.3/4",
    "..",
    "1..2",
    ".1.2",
    "1.2.",
    "1.2.3a",
    "1.2\\..\\x",
    "/tmp/x",
]


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_invalid_uids_never_become_keys(
    gateway: Gateway,
    sender: Sender,
    keyword: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings: Settings = gateway.parts.settings
    good = _instance("good")
    assert sender.store(good.SOPInstanceUID, encode(good)).Status == 0
    outside_before = {p for p in _tree(tmp_path) if not p.startswith("var")}
    values = BAD_UIDS
    for number, value in enumerate(values):
        ds = _instance(("bad", keyword, number))
        setattr(ds, keyword, value)
        request_uid = make_uid("request", keyword, number)
        if keyword != "SOPInstanceUID":
            request_uid = ds.SOPInstanceUID
        elif "\\" not in value:  # a backslash would make the request's UID two values
            request_uid = value
        response = sender.store(request_uid, encode(ds))
        _assert_refused(
            response, caplog, 0xC000, f"not a valid DICOM UID: {keyword}", sender, exact=0xC002
        )

    keys = list(gateway.parts.store.keys())
    assert keys == [
        f"studies/{good.StudyInstanceUID}/{good.SeriesInstanceUID}/{good.SOPInstanceUID}.dcm"
    ]
    store_root = settings.resolved_store_dir.resolve()
    for path in store_root.rglob("*"):
        assert path.resolve().is_relative_to(store_root)
    for path in (store_root / "studies").rglob("*"):
        names = path.relative_to(store_root / "studies").parts
        assert all(is_valid_uid(name.removesuffix(".dcm")) for name in names), path
    # nothing appeared next to the data folder (the request files are ours)
    outside_after = {p for p in _tree(tmp_path) if not p.startswith("var")}
    assert {p for p in outside_after - outside_before if not p.startswith("crafted")} == set()
    assert not any("passwd" in p or p.endswith("/x") for p in _tree(tmp_path))
    with gateway.parts.db.session() as session:
        uids = [
            *session.scalars(select(StudyRow.study_uid)),
            *session.scalars(select(SeriesRow.series_uid)),
            *session.scalars(select(InstanceRow.sop_instance_uid)),
            *session.scalars(select(InstanceRow.object_key)),
        ]
    assert len(uids) == 4
    assert all(is_valid_uid(uid) for uid in uids[:3])
    assert not set(values) & set(uids)


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_overlong_uid_is_refused_not_truncated(
    gateway: Gateway, sender: Sender, keyword: str, caplog: pytest.LogCaptureFixture
) -> None:
    ds = _instance(("overlong", keyword))
    overlong = "1.2." + "3" * 61
    assert len(overlong) == 65
    setattr(ds, keyword, overlong)
    # pynetdicom will not put a 65-character UID in a request: ask for its 64-character cut
    request_uid = overlong[:64] if keyword == "SOPInstanceUID" else ds.SOPInstanceUID
    response = sender.store(request_uid, encode(ds))
    _assert_refused(
        response, caplog, 0xC000, f"not a valid DICOM UID: {keyword}", sender, exact=0xC002
    )
    assert list(gateway.parts.store.keys()) == []


# --- the same instance again, a changed instance, late instances ------------------------------


def _study_rows(gateway: Gateway, study_uid: str) -> tuple[list[InstanceRow], list[StudyEventRow]]:
    with gateway.parts.db.session() as session:
        study_id = session.scalar(select(StudyRow.id).where(StudyRow.study_uid == study_uid))
        instances = list(
            session.scalars(
                select(InstanceRow)
                .join(SeriesRow)
                .where(SeriesRow.study_id == study_id)
                .order_by(InstanceRow.id)
            )
        )
        events = list(
            session.scalars(
                select(StudyEventRow)
                .where(StudyEventRow.study_id == study_id)
                .order_by(StudyEventRow.id)
            )
        )
    return instances, events


def test_same_instance_twice_and_a_new_version(gateway: Gateway, sender: Sender) -> None:
    ds = _instance("versions")
    first = encode(ds)
    assert sender.store(ds.SOPInstanceUID, first).Status == 0
    assert sender.store(ds.SOPInstanceUID, first).Status == 0  # a retry: nothing duplicated
    instances, events = _study_rows(gateway, ds.StudyInstanceUID)
    assert len(instances) == 1 and instances[0].version == 1
    assert [e.kind for e in events] == ["state"]

    ds.PixelData = b"\x01\x02" * (16 * 16)  # the modality re-sent a corrected image
    assert sender.store(ds.SOPInstanceUID, encode(ds)).Status == 0
    instances, events = _study_rows(gateway, ds.StudyInstanceUID)
    assert [i.version for i in instances] == [1, 2]
    base = f"studies/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}"
    assert [i.object_key for i in instances] == [f"{base}.dcm", f"{base}.v2.dcm"]
    assert instances[0].sha256 != instances[1].sha256
    store = gateway.parts.store
    assert store.get(f"{base}.dcm").endswith(first)  # version 1 is kept as it was
    assert store.get(f"{base}.v2.dcm").endswith(encode(ds))
    versions = [e for e in events if e.kind == "instance_version"]
    assert len(versions) == 1
    assert versions[0].detail == {
        "sop_instance_uid": ds.SOPInstanceUID,
        "version": 2,
        "object_key": f"{base}.v2.dcm",
    }
    # both versions again: still two rows
    assert sender.store(ds.SOPInstanceUID, first).Status == 0
    assert sender.store(ds.SOPInstanceUID, encode(ds)).Status == 0
    assert len(_study_rows(gateway, ds.StudyInstanceUID)[0]) == 2


def _poll(condition: Callable[[], bool], tries: int = 100) -> None:
    """Wait (up to tries × 0.1 s) for the assembler thread; the caller asserts the outcome."""
    for _ in range(tries):
        if condition():
            return
        time.sleep(0.1)


def test_instances_after_completion_reopen_the_study(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Gateway],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    completed: list[str] = []
    gateway = start_gateway(
        make_settings(quiet_period_s=2.0), on_complete=lambda c: completed.append(c.study_uid)
    )
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    late_sender = Sender(gateway.parts.settings.dicom_port, tmp_path)
    try:
        study, series = make_uid("late-study"), make_uid("late-series")
        first = ct_instance(study, series, make_uid("late", 1), 1)
        assert late_sender.store(first.SOPInstanceUID, encode(first)).Status == 0
        assert gateway.assembler.complete(study) is True
        assert gateway.assembler.complete(study) is False  # already complete
        _poll(lambda: completed.count(study) >= 1)
        assert completed == [study]  # the next stage heard of it once
        late = ct_instance(study, series, make_uid("late", 2), 2)
        assert late_sender.store(late.SOPInstanceUID, encode(late)).Status == 0
        _instances, events = _study_rows(gateway, study)
        assert [e.state for e in events if e.kind == "state"] == [
            "receiving",
            "complete",
            "superseded",
        ]
        assert events[-1].detail["previous_state"] == "complete"
        # the quiet period completes it again, and the next stage hears of it again
        _poll(lambda: _study_rows(gateway, study)[1][-1].state == "complete")
        _instances, events = _study_rows(gateway, study)
        assert [e.state for e in events if e.kind == "state"] == [
            "receiving",
            "complete",
            "superseded",
            "complete",
        ]
        assert events[-1].detail == {"reason": "quiet_period"}
        assert len(_instances) == 2
        _poll(lambda: completed.count(study) >= 2)
        assert completed.count(study) == 2
    finally:
        late_sender.assoc.release()
