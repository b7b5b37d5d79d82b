"""Group commit: instances arriving together share one index transaction; each is answered
only after the commit that holds it, a failed group answers every member with a failure,
and ``kill -9`` in the middle of groups loses nothing that was acknowledged."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pydicom
import pytest
from sqlalchemy import func, select
from sqlalchemy.pool import QueuePool

from gateway.dimse_status import Status
from gateway.errors import DatabaseError
from gateway.index.database import Database
from gateway.index.object_store import FolderStore
from gateway.index.recovery import recover
from gateway.index.tables import InstanceRow
from gateway.ingest.group_commit import GroupCommit, GroupFailed
from gateway.ingest.receive import Ingest, Outcome, Sender
from gateway.ingest.sources import load_directory, sync_directory
from gateway.settings import Settings
from tests.services import (
    ROOT,
    GatewayProcess,
    acknowledged_files,
    free_port,
    gateway_env,
    indexed_rows,
    postgres_server,
    require_tool,
    storescu,
    storescu_command,
    write_ct_series,
)
from tests.services.dcmtk import dcmtk_env
from workers.serve import Gateway

SOURCES = ROOT / "gateway" / "configs" / "sources.yaml"
REGIONS = ROOT / "gateway" / "configs" / "regions.yaml"
LONG_WINDOW_S = 60.0  # a leader waits this long only for members on their way


# --- the mechanism ---------------------------------------------------------------------------


def _run_threads(count: int, target: Callable[[int], None]) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    return threads


def _recorded(writes: list[list[int]], members: list[int]) -> list[int]:
    writes.append(list(members))
    return [m * 10 for m in members]


def test_members_preparing_together_share_one_write_and_each_gets_its_own_result() -> None:
    writes: list[list[int]] = []
    group: GroupCommit[int, int] = GroupCommit(
        lambda members: _recorded(writes, members), LONG_WINDOW_S
    )
    everyone_preparing = threading.Barrier(8)
    results: dict[int, int] = {}

    def member(number: int) -> None:
        with group.arriving() as ticket:
            everyone_preparing.wait()  # all hold tickets: the leader waits for the others
            results[number] = ticket.submit(number)

    for thread in _run_threads(8, member):
        thread.join(timeout=30)
    assert results == {n: n * 10 for n in range(8)}
    assert [sorted(w) for w in writes] == [list(range(8))]


def test_a_lone_member_does_not_wait_for_the_window() -> None:
    group: GroupCommit[int, int] = GroupCommit(lambda members: list(members), LONG_WINDOW_S)
    done: list[int] = []

    def member(number: int) -> None:
        with group.arriving() as ticket:
            done.append(ticket.submit(number))

    (thread,) = _run_threads(1, member)
    thread.join(timeout=LONG_WINDOW_S / 2)  # it would still be waiting had it waited
    assert done == [0]


def test_a_failed_write_fails_every_member_and_the_next_group_goes_on() -> None:
    calls: list[list[int]] = []

    def write(members: list[int]) -> list[int]:
        calls.append(members)
        if len(calls) == 1:
            raise RuntimeError("disk on fire")
        return list(members)

    group: GroupCommit[int, int] = GroupCommit(write, LONG_WINDOW_S)
    failed: list[int] = []
    together = threading.Barrier(4)

    def member(number: int) -> None:
        with group.arriving() as ticket:
            together.wait()
            try:
                ticket.submit(number)
            except GroupFailed:
                failed.append(number)

    for thread in _run_threads(4, member):
        thread.join(timeout=30)
    assert sorted(failed) == [0, 1, 2, 3]
    with group.arriving() as ticket:
        assert ticket.submit(7) == 7  # leadership was handed back


# --- ingest: a group whose commit fails -------------------------------------------------------


@pytest.fixture
def ingest_parts(tmp_path: Path) -> Iterator[tuple[Ingest, Database, FolderStore, Sender]]:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.migrate()
    directory = load_directory(SOURCES, REGIONS, open_mode=False)
    source = directory.by_name("irk-cami")
    assert source is not None
    source_ids = sync_directory(db, directory)
    store = FolderStore(tmp_path / "objects")
    sender = Sender(source=source, source_id=source_ids[source.name], calling_ae=source.ae_title)
    yield Ingest(db, store, commit_window_ms=LONG_WINDOW_S * 1000), db, store, sender
    db.dispose()


def _indexed_sops(db: Database) -> set[str]:
    with db.session() as session:
        return set(session.scalars(select(InstanceRow.sop_instance_uid)))


def _receive_together(ingest: Ingest, files: list[Path], sender: Sender) -> list[Outcome]:
    """Receive ``files`` from one thread each, all in one group: the test holds a ticket of
    its own until every one has queued, so the leader waits for them all."""
    outcomes: dict[int, Outcome] = {}

    def receive(number: int) -> None:
        outcomes[number] = ingest.receive(files[number].read_bytes(), sender)

    with ingest.group.arriving():
        threads = _run_threads(len(files), receive)
        while ingest.group.queued < len(files) and any(t.is_alive() for t in threads):
            threading.Event().wait(0.01)
    for thread in threads:
        thread.join(timeout=30)
    return [outcomes[n] for n in range(len(files))]


def test_a_failed_group_commit_answers_every_member_and_loses_nothing_acknowledged(
    ingest_parts: tuple[Ingest, Database, FolderStore, Sender], tmp_path: Path
) -> None:
    ingest, db, store, sender = ingest_parts
    healthy = write_ct_series(tmp_path / "healthy", 4, seed="group-ok")
    doomed = write_ct_series(tmp_path / "doomed", 3, seed="group-doomed")
    first = ingest.receive(healthy[0].read_bytes(), sender)
    assert first.status == Status.SUCCESS

    # The doomed study's folder cannot be created (a file stands where it goes): publishing
    # fails inside the group's transaction, after the rows were inserted.
    study_uid = str(pydicom.dcmread(doomed[0]).StudyInstanceUID)
    blocker = store.root / "studies" / study_uid
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"not a folder")

    group = [*healthy[1:], *doomed]
    outcomes = _receive_together(ingest, group, sender)
    assert ingest.group.groups_written == 2  # the first instance, then one group of six
    assert [o.status for o in outcomes] == [Status.OUT_OF_RESOURCES] * len(group)
    assert all(o.reason.startswith("object store: cannot write") for o in outcomes)

    sops = {str(pydicom.dcmread(path).SOPInstanceUID) for path in healthy}
    first_sop = str(pydicom.dcmread(healthy[0]).SOPInstanceUID)
    assert _indexed_sops(db) == {first_sop}  # the acknowledged one, and only it
    left = [key for key in store.keys("studies/") if first_sop not in key]
    assert left == [f"studies/{study_uid}"]  # the blocker, and no object of the group
    assert not list((store.root / "staging").iterdir())

    blocker.unlink()
    again = _receive_together(ingest, group, sender)  # the senders try again
    assert [o.status for o in again] == [Status.SUCCESS] * len(group)
    doomed_sops = {str(pydicom.dcmread(path).SOPInstanceUID) for path in doomed}
    assert _indexed_sops(db) == sops | doomed_sops


def test_an_scp_s_groups_in_a_row_write_on_one_kept_connection(tmp_path: Path) -> None:
    db, store, sender = _parts(tmp_path)
    pool = db.engine.pool
    assert isinstance(pool, QueuePool)
    files = write_ct_series(tmp_path / "row", 4, seed="kept-row")
    scp = Ingest(db, store, keep_connection=True)
    connections = set()
    for path in files:
        assert scp.receive(path.read_bytes(), sender).status == Status.SUCCESS
        assert pool.checkedout() == 1  # kept between groups, not checked in and out
        connections.add(id(scp._writer._connection))
    assert len(connections) == 1 and scp.group.groups_written == 4
    scp._writer.release()
    # Any other ingest (a STOW request, a follower) gives its connection back after a group.
    other = Ingest(db, store)
    for path in write_ct_series(tmp_path / "other", 2, seed="kept-other"):
        assert other.receive(path.read_bytes(), sender).status == Status.SUCCESS
        assert pool.checkedout() == 0
    assert len(_indexed_sops(db)) == 6
    db.dispose()


def _parts(tmp_path: Path, url: str | None = None) -> tuple[Database, FolderStore, Sender]:
    db = Database(url or f"sqlite:///{tmp_path / 'index.db'}")
    db.migrate()
    directory = load_directory(SOURCES, REGIONS, open_mode=False)
    source = directory.by_name("irk-cami")
    assert source is not None
    source_ids = sync_directory(db, directory)
    sender = Sender(source=source, source_id=source_ids[source.name], calling_ae=source.ae_title)
    return db, FolderStore(tmp_path / "objects"), sender


def test_a_postgresql_restart_between_groups_fails_no_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kept far longer than the restart takes: the next group finds its connection dropped.
    monkeypatch.setattr("gateway.ingest.receive.KEEP_IDLE_S", 600.0)
    with postgres_server() as pg:
        db, store, sender = _parts(tmp_path, pg.url)
        scp = Ingest(db, store, keep_connection=True)
        first, second = write_ct_series(tmp_path / "pg", 2, seed="kept-pg")
        assert scp.receive(first.read_bytes(), sender).status == Status.SUCCESS
        pg.restart()
        outcome = scp.receive(second.read_bytes(), sender)
        assert outcome.status == Status.SUCCESS, outcome.reason  # once more, on a new one
        assert len(_indexed_sops(db)) == 2
        scp._writer.release()
        db.dispose()


def test_a_resent_copy_restores_an_indexed_instance_s_missing_object(
    ingest_parts: tuple[Ingest, Database, FolderStore, Sender], tmp_path: Path
) -> None:
    # An indexed instance whose object is gone (deleted behind the index, or by the failure
    # path of versions before 2026-12-07 after a COMMIT that had landed): the sender's
    # resend must not be answered "duplicate" over a row without its bytes.
    ingest, db, store, sender = ingest_parts
    first, other = write_ct_series(tmp_path / "lost", 2, seed="lost-object")
    assert ingest.receive(first.read_bytes(), sender).status == Status.SUCCESS
    with db.session() as session:
        key = session.scalars(select(InstanceRow.object_key)).one()
    store.delete(key)
    again = _receive_together(ingest, [first, first, other], sender)
    assert [(o.status, o.duplicate) for o in again] == [
        (Status.SUCCESS, True),
        (Status.SUCCESS, True),
        (Status.SUCCESS, False),
    ]
    assert store.get(key) == first.read_bytes()  # restored, once, from the copy sent again
    assert not list((store.root / "staging").iterdir())
    assert len(_indexed_sops(db)) == 2
    assert ingest.receive(first.read_bytes(), sender).duplicate  # and then a plain duplicate


@contextmanager
def _commit_raises(db: Database, error: Exception, *, lands: bool) -> Iterator[list[int]]:
    """The next COMMIT raises ``error``, after it committed (``lands``) or instead of it:
    what a connection lost during COMMIT looks like to the writer, which cannot tell which.
    Yields the list that counts the COMMITs that raised."""
    dialect = db.engine.dialect
    real = dialect.do_commit
    raised: list[int] = []

    def do_commit(dbapi_connection: Any) -> None:
        if raised:
            return real(dbapi_connection)
        raised.append(1)
        if lands:
            real(dbapi_connection)
        raise error

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dialect, "do_commit", do_commit)
        yield raised


def _object_keys(db: Database) -> dict[str, str]:
    with db.session() as session:
        rows = session.execute(select(InstanceRow.sop_instance_uid, InstanceRow.object_key))
        return {str(sop): str(key) for sop, key in rows}


def _assert_stored(db: Database, store: FolderStore, files: list[Path]) -> None:
    """Each file is indexed and its object holds its bytes."""
    keys = _object_keys(db)
    for path in files:
        sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert store.get(keys[sop]) == path.read_bytes()


def test_a_commit_reported_failed_that_landed_is_answered_as_stored(
    ingest_parts: tuple[Ingest, Database, FolderStore, Sender],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ingest, db, store, sender = ingest_parts
    files = write_ct_series(tmp_path / "landed", 3, seed="commit-landed")
    with _commit_raises(db, sqlite3.OperationalError("disk I/O error"), lands=True) as raised:
        outcomes = _receive_together(ingest, files, sender)
    assert raised == [1] and ingest.group.groups_written == 1
    assert [(o.status, o.duplicate) for o in outcomes] == [(Status.SUCCESS, False)] * 3
    assert "had landed" in caplog.text
    assert len(_object_keys(db)) == 3
    _assert_stored(db, store, files)  # every row has its bytes: none deleted behind the index
    assert not list((store.root / "staging").iterdir())
    assert ingest.receive(files[0].read_bytes(), sender).duplicate


def test_a_commit_that_landed_while_the_database_cannot_say_so_keeps_its_objects(
    ingest_parts: tuple[Ingest, Database, FolderStore, Sender],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ingest, db, store, sender = ingest_parts
    files = write_ct_series(tmp_path / "unsure", 2, seed="commit-unsure")

    def unreachable() -> Iterator[None]:
        raise DatabaseError("OperationalError: connection refused")

    with _commit_raises(db, sqlite3.OperationalError("disk I/O error"), lands=True):
        monkeypatch.setattr(db, "transaction", contextmanager(unreachable))
        outcomes = _receive_together(ingest, files, sender)
        monkeypatch.undo()
    # Not known to be stored, so not acknowledged; but the rows are there, and so are
    # their objects: the senders' resends are duplicates of complete instances.
    assert [o.status for o in outcomes] == [Status.OUT_OF_RESOURCES] * 2
    keys = _object_keys(db)
    assert len(keys) == 2 and all(store.exists(key) for key in keys.values())
    again = _receive_together(ingest, files, sender)
    assert [(o.status, o.duplicate) for o in again] == [(Status.SUCCESS, True)] * 2
    _assert_stored(db, store, files)
    assert recover(db, store).missing_objects == 0


def test_a_commit_that_failed_leaves_its_objects_to_recovery_and_a_resend(
    ingest_parts: tuple[Ingest, Database, FolderStore, Sender], tmp_path: Path
) -> None:
    ingest, db, store, sender = ingest_parts
    files = write_ct_series(tmp_path / "lost", 4, seed="commit-lost")
    with _commit_raises(db, sqlite3.OperationalError("disk I/O error"), lands=False):
        outcomes = _receive_together(ingest, files, sender)
    assert [o.status for o in outcomes] == [Status.OUT_OF_RESOURCES] * 4
    assert all(o.reason.startswith("database: ") for o in outcomes)
    assert _indexed_sops(db) == set()
    assert len(list(store.keys("studies/"))) == 4  # not deleted after the rows were unlocked
    # Two senders try again: their objects are published again under the same keys ...
    again = _receive_together(ingest, files[:2], sender)
    assert [(o.status, o.duplicate) for o in again] == [(Status.SUCCESS, False)] * 2
    _assert_stored(db, store, files[:2])
    keys = _object_keys(db)
    # ... and start-up recovery removes the two whose senders have not (yet).
    report = recover(db, store)
    assert (report.orphans_removed, report.missing_objects) == (2, 0)
    assert sorted(store.keys("studies/")) == sorted(keys.values())


def _terminate(db: Database, dbapi_connection: Any) -> None:
    """End the connection's PostgreSQL session from another one (waits up to 5 s for it)."""
    pid = dbapi_connection.driver_connection.info.backend_pid
    with db.engine.connect() as other:
        other.exec_driver_sql(f"SELECT pg_terminate_backend({pid}, 5000)")


@contextmanager
def _session_lost_at_commit(db: Database, *, lands: bool) -> Iterator[list[int]]:
    """The real thing on PostgreSQL: the server ends the writer's session as its next COMMIT
    goes out (it does not land), or right after it landed (its answer lost); the driver
    reports the connection lost either way. Yields the list that counts the lost COMMITs."""
    real = db.engine.dialect.do_commit
    lost: list[int] = []

    def do_commit(dbapi_connection: Any) -> None:
        if lost:
            return real(dbapi_connection)
        lost.append(1)
        if not lands:
            _terminate(db, dbapi_connection)
            return real(dbapi_connection)
        real(dbapi_connection)
        _terminate(db, dbapi_connection)
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(db.engine.dialect, "do_commit", do_commit)
        yield lost


@pytest.fixture
def pg_scp(tmp_path: Path) -> Iterator[tuple[Ingest, Database, FolderStore, Sender]]:
    """An SCP process's ingest (a kept connection, a long window) on a real PostgreSQL."""
    with postgres_server() as pg:
        db, store, sender = _parts(tmp_path, pg.url)
        scp = Ingest(db, store, LONG_WINDOW_S * 1000, keep_connection=True)
        try:
            yield scp, db, store, sender
        finally:
            scp._writer.release()
            db.dispose()


def test_a_postgresql_connection_lost_during_commit_loses_nothing(
    pg_scp: tuple[Ingest, Database, FolderStore, Sender],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    scp, db, store, sender = pg_scp
    files = write_ct_series(tmp_path / "pg-lost", 3, seed="commit-pg")
    with _session_lost_at_commit(db, lands=False) as lost:
        outcomes = _receive_together(scp, files, sender)
    assert lost == [1] and "left for recovery" in caplog.text
    assert [o.status for o in outcomes] == [Status.OUT_OF_RESOURCES] * 3
    assert _indexed_sops(db) == set() and len(list(store.keys("studies/"))) == 3
    again = _receive_together(scp, files, sender)  # on a new connection
    assert [o.status for o in again] == [Status.SUCCESS] * 3
    _assert_stored(db, store, files)
    assert recover(db, store).orphans_removed == 0


def test_a_postgresql_commit_that_landed_before_its_session_was_lost_is_answered_stored(
    pg_scp: tuple[Ingest, Database, FolderStore, Sender],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    scp, db, store, sender = pg_scp
    files = write_ct_series(tmp_path / "pg-landed", 3, seed="commit-pg-landed")
    with _session_lost_at_commit(db, lands=True) as lost:
        outcomes = _receive_together(scp, files, sender)
    assert lost == [1] and "had landed" in caplog.text
    assert [(o.status, o.duplicate) for o in outcomes] == [(Status.SUCCESS, False)] * 3
    _assert_stored(db, store, files)  # found by another connection, its objects kept
    assert scp.receive(files[0].read_bytes(), sender).duplicate


def test_a_member_refused_on_its_own_does_not_fail_its_group(
    ingest_parts: tuple[Ingest, Database, FolderStore, Sender], tmp_path: Path
) -> None:
    ingest, db, _store, sender = ingest_parts
    series = write_ct_series(tmp_path / "a", 3, seed="own-a")
    ingest.receive(series[0].read_bytes(), sender)
    # the same series UID under another study: refused, nothing written for it
    stray = write_ct_series(
        tmp_path / "b",
        1,
        seed="own-b",
        series_uid=str(pydicom.dcmread(series[0]).SeriesInstanceUID),
    )
    outcomes = _receive_together(ingest, [*series[1:], *stray], sender)
    assert [o.status for o in outcomes] == [
        Status.SUCCESS,
        Status.SUCCESS,
        Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    ]
    assert len(_indexed_sops(db)) == 3


# --- real senders ------------------------------------------------------------------------------


def test_concurrent_dcmtk_senders_share_commits_and_duplicates_keep_one_row(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[[Settings], Gateway],
    tmp_path: Path,
) -> None:
    require_tool("storescu")
    settings = make_settings(ingest_commit_window_ms=20.0)
    gateway = start_gateway(settings)
    studies = [write_ct_series(tmp_path / f"s{n}", 25, seed=f"concurrent-{n}") for n in range(3)]
    # a fourth association re-sends the first study while it is being sent
    shares = [*studies, studies[0]]
    results: list[subprocess.CompletedProcess[str]] = []
    threads = [
        threading.Thread(target=lambda f=files: results.append(storescu(settings.dicom_port, f)))
        for files in shares
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [r.returncode for r in results] == [0, 0, 0, 0], [r.stderr for r in results]

    db = gateway.parts.db
    with db.session() as session:
        rows = list(session.scalars(select(InstanceRow)))
        per_sop = session.execute(
            select(InstanceRow.sop_instance_uid, func.count()).group_by(
                InstanceRow.sop_instance_uid
            )
        ).all()
    assert len(rows) == 75 and {count for _sop, count in per_sop} == {1}
    for row in rows:
        data = gateway.parts.store.get(row.object_key)
        assert hashlib.sha256(data).hexdigest() == row.sha256
    assert gateway.scp is not None
    assert gateway.scp.ingest.group.groups_written < 100  # 100 C-STOREs, fewer commits


@pytest.mark.slow
def test_kill_9_mid_group_loses_no_acknowledged_instance(tmp_path: Path) -> None:
    require_tool("storescu")
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    env = gateway_env(min_free_bytes="0", ingest_commit_window_ms="20")
    port = free_port()
    studies = [write_ct_series(tmp_path / f"s{n}", 80, seed=f"kill-group-{n}") for n in range(4)]
    db_file, store = data_dir / "aigw.db", data_dir / "objects"

    first = GatewayProcess(data_dir, port, env, [])
    first.start()
    logs = [tmp_path / f"storescu-{n}.log" for n in range(len(studies))]
    try:
        with ExitStack() as stack:
            senders = [
                subprocess.Popen(
                    storescu_command(port, files, extra=["-v"]),
                    stdout=stack.enter_context(open(log, "w")),
                    stderr=subprocess.STDOUT,
                    env=dcmtk_env(),
                )
                for files, log in zip(studies, logs, strict=True)
            ]
            while indexed_rows(db_file) < 60 and all(s.poll() is None for s in senders):
                threading.Event().wait(0.005)
            first.kill()
            for sender in senders:
                sender.wait(timeout=60)
    finally:
        first.stop()
    acked = [path for log in logs for path in acknowledged_files(log.read_text())]
    every = [path for files in studies for path in files]
    assert 0 < len(acked) < len(every), "the kill must land mid-transfer"

    second = GatewayProcess(data_dir, port, env, [])
    second.start()  # recovery runs before the port opens
    db = Database(f"sqlite:///{db_file}")
    try:
        with db.session() as session:
            rows = {r.sop_instance_uid: r for r in session.scalars(select(InstanceRow))}
        acked_sops = {
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in acked
        }
        assert acked_sops <= set(rows)
        for row in rows.values():  # every indexed instance is whole
            assert hashlib.sha256((store / row.object_key).read_bytes()).hexdigest() == row.sha256
        assert {p.relative_to(store).as_posix() for p in store.rglob("*.dcm")} == {
            row.object_key for row in rows.values()
        }
        for files in studies:  # each sender tries again: nothing twice, nothing missing
            assert storescu(port, files).returncode == 0
        with db.session() as session:
            versions = list(session.scalars(select(InstanceRow.version)))
        assert len(versions) == len(every) and set(versions) == {1}
    finally:
        db.dispose()
        second.stop()
