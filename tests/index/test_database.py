"""The index's one boundary with SQLAlchemy: its failures come out as the gateway's
transient DatabaseError, except a unique-constraint conflict, which callers handle."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from gateway.errors import DatabaseError
from gateway.index.database import Database
from gateway.index.tables import Base, RegionRow


def test_a_database_failure_is_a_transient_database_error(db: Database) -> None:
    with pytest.raises(DatabaseError, match=r"OperationalError: .*no such"), db.session() as s:
        s.execute(text("SELECT * FROM no_such_table"))
    with pytest.raises(DatabaseError, match="no such table"), db.transaction() as connection:
        connection.execute(text("SELECT * FROM no_such_table"))


def test_a_conflict_with_a_concurrent_writer_stays_an_integrity_error(db: Database) -> None:
    with db.session() as session:
        session.add(RegionRow(code="38", name="Иркутская область"))
    with pytest.raises(IntegrityError), db.session() as session:
        session.add(RegionRow(code="38", name="again"))
    with db.session() as session:  # the failed transaction was rolled back, nothing half-kept
        assert [r.name for r in session.query(RegionRow)] == ["Иркутская область"]


def test_an_unreachable_server_is_a_database_error(tmp_path: Path) -> None:
    db = Database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(DatabaseError, match="OperationalError"), db.session() as session:
        session.execute(text("SELECT 1"))


def test_sqlite_migrations_match_the_models(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'schema.db'}")
    try:
        db.migrate()
        db.migrate()  # idempotent
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            connection.exec_driver_sql("DROP INDEX ix_study_events_study_at")
            diff = compare_metadata(context, Base.metadata)
        assert [op[0] for op in diff] == ["add_index"]  # the comparison can see a drift
    finally:
        db.dispose()


def test_sqlite_writers_of_two_processes_queue_on_one_file_lock(tmp_path: Path) -> None:
    # Two Database objects open the lock file separately, as two SCP processes do: flock
    # excludes across open files, so the second writer waits for the first's release.
    first = Database(f"sqlite:///{tmp_path / 'index.db'}")
    second = Database(f"sqlite:///{tmp_path / 'index.db'}")
    order: list[str] = []
    second_waiting = threading.Event()

    def second_writer() -> None:
        second_waiting.set()
        with second.write_lock:
            order.append("second")

    with first.write_lock:
        thread = threading.Thread(target=second_writer)
        thread.start()
        second_waiting.wait(timeout=30)
        thread.join(timeout=0.2)  # it cannot get in while the first holds the lock
        order.append("first")
    thread.join(timeout=30)
    assert order == ["first", "second"]
    assert (tmp_path / "index.db.write-lock").exists()
    first.dispose()
    second.dispose()
