"""Faults with real parts: the S3 server stopped and restarted, the object folder gone,
PostgreSQL stopped, ``kill -9`` of ``aigw serve`` mid-study, and a full disk. In every case
an acknowledged instance is never lost and a refused one leaves nothing behind."""

from __future__ import annotations

import hashlib
import logging
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import select

from gateway.index.database import Database
from gateway.index.object_store import FolderStore
from gateway.index.study_state import OPEN_STATES
from gateway.index.tables import InstanceRow, StudyEventRow, StudyRow
from gateway.settings import Settings
from pacs_adapters.dicom_scu import Peer, SendReport, send
from pacs_adapters.requestor import associate
from tests.services import (
    CT_IMAGE_STORAGE,
    S3_CREDENTIALS,
    GatewayProcess,
    Postgres,
    S3Server,
    acknowledged_files,
    free_port,
    gateway_env,
    indexed_rows,
    make_uid,
    postgres_server,
    require_tool,
    s3_server,
    storescu,
    storescu_command,
    write_ct_series,
)
from tests.services.dcmtk import dcmtk_env
from workers.serve import Gateway

OUT_OF_RESOURCES = "0xA700"


def _send(settings: Settings, files: list[Path]) -> SendReport:
    return send(files, Peer("127.0.0.1", settings.dicom_port, settings.ae_title, "IRK_CAMI"))


def _sop_uids(files: list[Path]) -> list[str]:
    return [str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in files]


def _indexed(db: Database, sop_uids: list[str]) -> list[InstanceRow]:
    with db.session() as session:
        return list(
            session.scalars(select(InstanceRow).where(InstanceRow.sop_instance_uid.in_(sop_uids)))
        )


def _study_exists(db: Database, study_uid: str) -> bool:
    with db.session() as session:
        return (
            session.scalar(select(StudyRow.id).where(StudyRow.study_uid == study_uid)) is not None
        )


def _assert_all_refused(report: SendReport, files: list[Path], why: str) -> None:
    assert report.sent == 0, report
    assert set(report.failed) == {str(path) for path in files}, report
    for status in report.failed.values():
        assert status.startswith(OUT_OF_RESOURCES), status
        assert why in status, status


def _assert_stored(gateway: Gateway, files: list[Path]) -> None:
    rows = _indexed(gateway.parts.db, _sop_uids(files))
    assert len(rows) == len(files)
    for row in rows:
        data = gateway.parts.store.get(row.object_key)
        assert hashlib.sha256(data).hexdigest() == row.sha256


def _echo_ok(settings: Settings) -> None:
    echo = subprocess.run(
        [
            require_tool("echoscu"),
            "-aet",
            "IRK_CAMI",
            "-aec",
            "AIGW",
            "127.0.0.1",
            str(settings.dicom_port),
        ],
        capture_output=True,
        text=True,
    )
    assert echo.returncode == 0, echo.stderr


# --- the object store goes away --------------------------------------------------------------


@pytest.fixture
def own_s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


def test_s3_stopped_then_restarted(
    own_s3: S3Server,
    make_settings: Callable[..., Settings],
    start_gateway: Callable[[Settings], Gateway],
    tmp_path: Path,
) -> None:
    settings = make_settings(object_store="s3", s3_endpoint=own_s3.endpoint, **S3_CREDENTIALS)
    gateway = start_gateway(settings)
    before = write_ct_series(tmp_path / "before", 3, seed="s3-before")
    during = write_ct_series(tmp_path / "during", 3, seed="s3-during")
    during_study = str(pydicom.dcmread(during[0]).StudyInstanceUID)

    assert _send(settings, before).sent == 3
    _assert_stored(gateway, before)

    own_s3.stop()
    report = _send(settings, during)
    _assert_all_refused(report, during, "object store")
    assert _indexed(gateway.parts.db, _sop_uids(during)) == []
    assert not _study_exists(gateway.parts.db, during_study)
    _echo_ok(settings)  # the SCP itself is fine

    own_s3.start()  # same ports, same data: a real S3 server keeps what it acknowledged
    report = _send(settings, during)
    assert report.failed == {} and report.sent == 3, report
    _assert_stored(gateway, before + during)


def test_folder_store_gone_then_restored(
    gateway: Gateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = gateway.parts.settings
    root = settings.resolved_store_dir
    before = write_ct_series(tmp_path / "before", 2, seed="folder-before")
    during = write_ct_series(tmp_path / "during", 3, seed="folder-during")
    assert _send(settings, before).sent == 2

    saved = root.with_name("objects.saved")
    root.rename(saved)
    root.write_bytes(b"not a folder")  # root is root here: chmod would not stop a write
    with caplog.at_level(logging.WARNING, logger="gateway"):
        report = _send(settings, during)
    _assert_all_refused(report, during, "object store")
    assert _indexed(gateway.parts.db, _sop_uids(during)) == []
    reasons = [getattr(r, "reason", "") for r in caplog.records if r.msg == "instance refused"]
    assert len(reasons) == 3 and all("cannot write" in reason for reason in reasons), reasons

    root.unlink()
    saved.rename(root)
    report = _send(settings, during)
    assert report.failed == {} and report.sent == 3, report
    _assert_stored(gateway, before + during)
    assert not list(root.rglob("*.partial"))


# --- the database goes away ------------------------------------------------------------------


@pytest.fixture
def own_pg() -> Iterator[Postgres]:
    with postgres_server() as server:
        yield server


def test_database_stopped_then_restarted(
    own_pg: Postgres,
    make_settings: Callable[..., Settings],
    start_gateway: Callable[[Settings], Gateway],
    tmp_path: Path,
) -> None:
    settings = make_settings(database_url=own_pg.url)
    gateway = start_gateway(settings)
    before = write_ct_series(tmp_path / "before", 2, seed="pg-before")
    during = write_ct_series(tmp_path / "during", 3, seed="pg-during")
    during_study = str(pydicom.dcmread(during[0]).StudyInstanceUID)
    assert _send(settings, before).sent == 2
    keys_before = set(gateway.parts.store.keys("studies/"))
    assert len(keys_before) == 2

    own_pg.stop()
    report = _send(settings, during)
    _assert_all_refused(report, during, "database")
    # no object without its index row
    assert set(gateway.parts.store.keys("studies/")) == keys_before
    assert not list(settings.resolved_store_dir.rglob("*.partial"))

    own_pg.start()
    assert not _study_exists(gateway.parts.db, during_study)
    report = _send(settings, during)
    assert report.failed == {} and report.sent == 3, report
    _assert_stored(gateway, before + during)


# --- kill -9 ---------------------------------------------------------------------------------


def _wait_until_settled(db: Database, study_uid: str, completions: int) -> list[str | None]:
    """Wait (up to 60 s) until the study has completed at least ``completions`` times and is
    no longer open; it may go on past ``complete`` (routed, not_applicable) as later stages
    run. Returns its state timeline."""
    deadline = time.monotonic() + 60
    while True:
        states = _timeline(db, study_uid)
        settled = states.count("complete") >= completions and states[-1] not in OPEN_STATES
        if settled or time.monotonic() > deadline:
            assert settled, states
            return states
        time.sleep(0.1)


def _state_in_file(db_file: Path, study_uid: str) -> str:
    with sqlite3.connect(f"file:{db_file}?mode=ro", uri=True) as connection:
        row = connection.execute(
            "SELECT state FROM studies WHERE study_uid = ?", (study_uid,)
        ).fetchone()
    return str(row[0])


def _timeline(db: Database, study_uid: str) -> list[str | None]:
    with db.session() as session:
        return list(
            session.scalars(
                select(StudyEventRow.state)
                .join(StudyRow)
                .where(StudyRow.study_uid == study_uid, StudyEventRow.kind == "state")
                .order_by(StudyEventRow.id)
            )
        )


@pytest.mark.slow
def test_kill_9_mid_study_loses_nothingacknowledged_files(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    env = gateway_env(quiet_period_s="3", assembly_poll_s="0.2", min_free_bytes="0")
    port = free_port()
    files = write_ct_series(tmp_path / "study", 120, seed="kill9")
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    series_uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    db_file = data_dir / "aigw.db"
    store = data_dir / "objects"

    first = GatewayProcess(data_dir, port, env, [])
    first.start()
    try:
        log_path = tmp_path / "storescu.log"
        with open(log_path, "w") as log:
            sender = subprocess.Popen(
                storescu_command(port, files, extra=["-v"]),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dcmtk_env(),
            )
            while indexed_rows(db_file) < 20 and sender.poll() is None:
                time.sleep(0.01)
            first.kill()
            sender.wait(timeout=60)
    finally:
        first.stop()
    acked = acknowledged_files(log_path.read_text())
    assert 0 < len(acked) < len(files), "the kill must land mid-study"
    assert sender.returncode != 0

    # the crash window: an object written without its index row, and a half-written temp
    series_dir = store / "studies" / study_uid / series_uid
    orphan = series_dir / f"{make_uid('orphan')}.dcm"
    orphan.write_bytes(files[0].read_bytes())
    partial = series_dir / f".{make_uid('partial')}.dcm.0123abcd.partial"
    partial.write_bytes(b"half an obj")

    assert _state_in_file(db_file, study_uid) == "receiving"  # the crash came mid-study

    second = GatewayProcess(data_dir, port, env, [])
    second.start()  # recovery runs before the port opens
    db = Database(f"sqlite:///{db_file}")
    try:
        assert not orphan.exists() and not partial.exists()
        rows = _indexed(db, _sop_uids(files))
        indexed = {row.sop_instance_uid: row for row in rows}
        assert set(_sop_uids(acked)) <= set(indexed)
        for row in rows:  # every indexed instance is whole
            assert hashlib.sha256((store / row.object_key).read_bytes()).hexdigest() == row.sha256
        assert {p.relative_to(store).as_posix() for p in store.rglob("*.dcm")} == {
            row.object_key for row in rows
        }
        recovered = [
            e for e in second.log_lines() if e.get("event") == "recovered after an unclean stop"
        ]
        assert recovered and int(str(recovered[-1]["orphans_removed"])) >= 1
        assert int(str(recovered[-1]["partial_writes_removed"])) >= 1

        # the quiet-period timer resumes from the database after the restart
        assert _wait_until_settled(db, study_uid, 1)[:2] == ["receiving", "complete"]

        result = storescu(port, files)  # the sender retries everything it was not told
        assert result.returncode == 0, result.stderr
        states = _wait_until_settled(db, study_uid, 2)
        rows = _indexed(db, _sop_uids(files))
        assert len(rows) == len(files) and {row.version for row in rows} == {1}
        for row in rows:
            assert hashlib.sha256((store / row.object_key).read_bytes()).hexdigest() == row.sha256
        # reopened by the resend, then complete again after it
        assert states[0] == "receiving" and "superseded" in states, states
        last_complete = len(states) - 1 - states[::-1].index("complete")
        last_superseded = len(states) - 1 - states[::-1].index("superseded")
        assert last_complete > last_superseded > states.index("complete"), states
    finally:
        db.dispose()
        second.stop()


def test_orphans_and_temp_files_removed_at_start(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[[Settings], Gateway],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings()
    gateway = start_gateway(settings)
    files = write_ct_series(tmp_path / "s", 3, seed="orphans")
    assert _send(settings, files).sent == 3
    gateway.stop()
    root = settings.resolved_store_dir
    indexed = {p: p.read_bytes() for p in root.rglob("*.dcm")}
    assert len(indexed) == 3
    some_series = next(iter(indexed)).parent
    orphan_same_series = some_series / f"{make_uid('orphan', 1)}.dcm"
    orphan_new_study = root / "studies" / make_uid("o-st") / make_uid("o-se") / "1.2.3.dcm"
    temp = some_series / ".1.2.3.4.dcm.deadbeef.partial"
    for path in (orphan_same_series, orphan_new_study, temp):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"crash leftovers")
    missing = sorted(indexed)[0]
    missing.unlink()  # an index row whose object is gone is reported, never hidden

    with caplog.at_level(logging.INFO, logger="gateway"):
        restarted = start_gateway(settings)
    assert not orphan_same_series.exists() and not orphan_new_study.exists()
    assert not temp.exists()
    for path, data in indexed.items():
        if path != missing:
            assert path.read_bytes() == data
    recovered = [r for r in caplog.records if r.msg == "recovered after an unclean stop"]
    assert len(recovered) == 1
    fields = recovered[0].__dict__
    assert fields["orphans_removed"] == 2 and fields["partial_writes_removed"] == 1
    assert any(
        r.msg == "indexed instances whose objects are missing" and r.__dict__["count"] == 1
        for r in caplog.records
    )
    assert len(_indexed(restarted.parts.db, _sop_uids(files))) == 3


# --- disk watermark --------------------------------------------------------------------------


def test_free_space_floor_refuses_associations(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[[Settings], Gateway],
    tmp_path: Path,
) -> None:
    free = shutil.disk_usage(tmp_path).free
    settings = make_settings(min_free_bytes=free + 2**40)
    gateway = start_gateway(settings)
    port = str(settings.dicom_port)
    echo = subprocess.run(
        [require_tool("echoscu"), "-aet", "IRK_CAMI", "-aec", "AIGW", "127.0.0.1", port],
        capture_output=True,
        text=True,
    )
    assert echo.returncode != 0
    assert "Association Rejected" in echo.stderr and "Local Limit Exceeded" in echo.stderr
    files = write_ct_series(tmp_path / "s", 2, seed="floor")
    result = storescu(settings.dicom_port, files)
    assert "Association Rejected" in result.stderr
    assert list(gateway.parts.store.keys()) == []
    assert _indexed(gateway.parts.db, _sop_uids(files)) == []


def test_free_space_floor_crossed_during_an_association(gateway: Gateway, tmp_path: Path) -> None:
    settings = gateway.parts.settings
    files = write_ct_series(tmp_path / "s", 2, seed="floor-during")
    ae = AE("IRK_CAMI")
    ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    assoc = associate(ae, "127.0.0.1", settings.dicom_port, ae_title="AIGW")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(files[0]).Status == 0
        store = gateway.parts.store
        assert isinstance(store, FolderStore)
        store.min_free_bytes = shutil.disk_usage(tmp_path).free + 2**40
        response = assoc.send_c_store(files[1])
        assert response.Status == 0xA700
        assert "free-space floor" in response.ErrorComment
    finally:
        assoc.release()
    assert len(list(gateway.parts.store.keys("studies/"))) == 1
    assert len(_indexed(gateway.parts.db, _sop_uids(files))) == 1
