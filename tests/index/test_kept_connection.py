"""A writer's kept connection: one checkout for transactions back to back, the pool again
after an idle spell or a failure, and a PostgreSQL restarted meanwhile is not failed on."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, func, select, text
from sqlalchemy.pool import QueuePool

from gateway.errors import DatabaseError
from gateway.index.database import Database, KeptConnection
from gateway.index.tables import RegionRow
from tests.services import Postgres


def _checked_out(db: Database) -> int:
    pool = db.engine.pool
    assert isinstance(pool, QueuePool)
    return pool.checkedout()


def _add_region(connection: Connection, code: str) -> None:
    connection.execute(text("INSERT INTO regions (code, name) VALUES (:c, :c)"), {"c": code})


def _regions(db: Database) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(RegionRow)) or 0)


def test_transactions_back_to_back_share_one_checkout_and_commit(db: Database) -> None:
    kept = KeptConnection(db, idle_s=60)
    seen = set()
    for code in ("01", "02", "03"):
        with kept.transaction() as connection:
            _add_region(connection, code)
            seen.add(id(connection.connection.dbapi_connection))
        assert kept.held and _checked_out(db) == 1
    assert len(seen) == 1  # one connection for all three
    assert _regions(db) == 3  # each committed, read through another connection
    kept.release()
    assert not kept.held and _checked_out(db) == 0


def test_a_connection_idle_too_long_goes_back_to_the_pool_first(db: Database) -> None:
    kept = KeptConnection(db, idle_s=0.05)
    with kept.transaction() as connection:
        first = connection
    time.sleep(0.1)
    with kept.transaction() as connection:
        assert connection is not first  # checked out again
        assert first.closed  # and the old one returned, not leaked
    assert _checked_out(db) == 1
    kept.release()


def test_a_failed_transaction_rolls_back_and_returns_its_connection(db: Database) -> None:
    kept = KeptConnection(db, idle_s=60)
    with pytest.raises(DatabaseError, match="no such table"), kept.transaction() as connection:
        _add_region(connection, "04")
        connection.execute(text("SELECT * FROM no_such_table"))
    assert not kept.held and _checked_out(db) == 0
    assert _regions(db) == 0  # the insert before the failure was rolled back
    with kept.transaction() as connection:  # and the next transaction works
        _add_region(connection, "05")
    assert _regions(db) == 1
    kept.release()


def test_with_no_keep_each_transaction_gives_its_connection_back(db: Database) -> None:
    kept = KeptConnection(db, idle_s=0)
    for code in ("06", "07"):
        with kept.transaction() as connection:
            _add_region(connection, code)
        assert not kept.held and _checked_out(db) == 0
    assert _regions(db) == 2


def test_the_pool_is_waited_for_before_the_lock_is_taken(tmp_path: Path) -> None:
    # A writer that waited for a connection while holding the write lock would stall the
    # writers that hold connections and wait for the lock.
    db = Database(f"sqlite:///{tmp_path / 'small.db'}")
    db.migrate()
    db.engine = create_engine(db.url, pool_size=1, max_overflow=0, pool_timeout=30)
    lock = threading.Lock()
    kept = KeptConnection(db, idle_s=60)
    other = db.engine.connect()  # the pool's only connection
    written = threading.Event()

    def write() -> None:
        with kept.transaction(lock) as connection:
            _add_region(connection, "20")
        written.set()

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(0.3)
    assert not written.is_set()  # waiting for the pool…
    assert lock.acquire(blocking=False)  # …without the lock
    lock.release()
    other.close()
    writer.join(timeout=30)
    assert written.is_set() and _regions(db) == 1
    kept.release()
    db.engine.dispose()


def test_postgresql_restarted_between_bursts_is_not_failed_on(pg: Postgres) -> None:
    db = Database(pg.create_database("aigw_kept"))
    db.migrate()
    kept = KeptConnection(db, idle_s=0.2)
    with kept.transaction() as connection:
        _add_region(connection, "10")
    pg.restart()  # the kept connection's server side is gone
    time.sleep(0.3)  # an idle spell: the next checkout goes through the pool's ping
    with kept.transaction() as connection:
        _add_region(connection, "11")
    assert _regions(db) == 2
    kept.release()
    # Restarted within a burst: that transaction fails (a transient DatabaseError, which
    # the group answers as a failure and its senders retry), the next one has a new one.
    busy = KeptConnection(db, idle_s=600)
    with busy.transaction() as connection:
        _add_region(connection, "12")
    pg.restart()
    with pytest.raises(DatabaseError), busy.transaction() as connection:
        _add_region(connection, "13")
    assert not busy.held
    with busy.transaction() as connection:
        _add_region(connection, "14")
    assert _regions(db) == 4
    busy.release()
    db.dispose()
