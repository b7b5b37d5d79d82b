"""Database engine, sessions and migrations (SQLite embedded, PostgreSQL distributed)."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from gateway.errors import DatabaseError

MIGRATIONS = Path(__file__).parent / "migrations"

# libpq's bounds for a PostgreSQL the network stops answering (packets dropped, its host
# gone; a stopped server refuses at once and needs none). Without them a connection attempt
# resends its SYN for ~2 minutes and a statement on an open connection waits ~15 minutes
# for TCP to give up, while the thread waits — for an SCP process's group leader, every
# C-STORE of the process; and once the network is back such a wait ends only at the next
# retransmission, up to one or two minutes later. With them the attempt or statement fails
# and the caller's own retry (with backoff) goes on. Values an operator names are kept: in
# the URL's query, PGCONNECT_TIMEOUT, or a pg_service.conf service (then none is set here).
POSTGRES_NETWORK_BOUNDS: dict[str, int] = {
    "connect_timeout": 10,  # s: the whole connection attempt
    # An idle connection's peer gone: probed after 30 s, every 10 s, and dropped ~40 s in
    # (Linux lets tcp_user_timeout stand in for the probe count once probes go unanswered).
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # ms: data sent and not acknowledged for that long
}
_LIBPQ_DRIVERS = frozenset({"psycopg", "psycopg2"})


class Database:
    """An engine and its session factory; ``session()`` is one transaction."""

    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.url = url
        self.engine = _create_engine(url, pool_size)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time: writers queue here instead of sleep-polling in
        # SQLite's busy handler (1, 2, 5, 10… ms between tries), threads of this process on
        # a lock and SCP processes on a file lock beside the database.
        self.write_lock: AbstractContextManager[Any] = (
            SqliteWriteLock(_sqlite_path(url)) if self.is_sqlite else nullcontext()
        )

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on any error.

        The database's own failures come out as :class:`DatabaseError` (transient: the
        caller tries again later), except :class:`IntegrityError`, which says that a
        concurrent writer got there first and is the caller's to handle.
        """
        with translated(), self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One Core transaction (no ORM), with errors translated as in :meth:`session`."""
        with translated(), self.engine.begin() as connection:
            yield connection

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except SQLAlchemyError as exc:
            raise DatabaseError(f"migration failed: {exc}") from exc

    def check(self) -> None:
        try:
            with self.engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        except SQLAlchemyError as exc:
            raise DatabaseError(f"database unreachable: {exc.__class__.__name__}") from exc

    def dispose(self) -> None:
        self.engine.dispose()


@contextmanager
def translated() -> Iterator[None]:
    """SQLAlchemy's errors as the gateway's: the one place they are translated."""
    try:
        yield
    except IntegrityError:
        raise
    except SQLAlchemyError as exc:
        first = (str(exc).splitlines() or [""])[0][:300]
        raise DatabaseError(f"{exc.__class__.__name__}: {first}") from exc


# How long a kept connection may idle between transactions before it goes back to the pool.
KEEP_IDLE_S = 1.0


def connection_dropped(exc: DatabaseError) -> bool:
    """Whether ``exc`` came from a connection the database had dropped (a server restarted),
    which the pool has invalidated: a new one may well work."""
    cause = exc.__cause__
    return isinstance(cause, DBAPIError) and bool(cause.connection_invalidated)


class KeptConnection:
    """One pooled connection kept across the transactions of a writer that runs one at a
    time, back to back — an SCP process's group commit leader, the job recorder's thread.

    :meth:`Database.transaction` checks a connection out of the pool and back in for each
    transaction: ~0.1 ms of one core (the pool's queue, the connection's wrapper, the reset
    on return), under the write lock and the GIL, for every group of received instances.
    Here the connection stays checked out while transactions follow each other; one idle
    for longer than ``idle_s`` goes back to the pool before the next, whose checkout then
    tests it (``pool_pre_ping`` on PostgreSQL: a server restarted meanwhile is noticed, not
    failed on), and so does one whose transaction failed. ``idle_s`` 0 keeps nothing: each
    transaction checks a connection out and back in, for writers off the hot path (a STOW
    request, a follower), which need not hold one of the pool's connections between calls.
    Not for concurrent use: the owner runs one transaction at a time (several threads may
    take turns, as group commit's leaders do).
    """

    def __init__(self, db: Database, idle_s: float = KEEP_IDLE_S) -> None:
        self._db = db
        self._idle_s = idle_s
        self._connection: Connection | None = None
        self._last_used = 0.0
        self.reused = False  # the last transaction ran on a connection kept from an earlier one

    @property
    def held(self) -> bool:
        """Whether a connection is checked out now."""
        return self._connection is not None

    @contextmanager
    def transaction(self, lock: AbstractContextManager[Any] | None = None) -> Iterator[Connection]:
        """As :meth:`Database.transaction`, on the kept connection, with ``lock`` (the
        database's write lock) held from before the transaction begins to after it ends.

        The connection is checked out before the lock is taken: a writer that waited for
        the pool while holding the lock would stall every writer that holds a connection
        and waits for the lock.
        """
        with translated():
            connection = self._checked_out()
            try:
                with lock if lock is not None else nullcontext(), connection.begin():
                    yield connection
            except BaseException:
                self.release()
                raise
            if self._idle_s > 0:
                self._last_used = time.monotonic()
            else:
                self.release()

    def release(self) -> None:
        """Return the connection to the pool (the next transaction checks one out)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            # A broken connection's close may raise; the pool has invalidated it already.
            with suppress(SQLAlchemyError):
                connection.close()

    def _checked_out(self) -> Connection:
        if self._connection is not None and time.monotonic() - self._last_used > self._idle_s:
            self.release()
        self.reused = self._connection is not None
        if self._connection is None:
            self._connection = self._db.engine.connect()
        return self._connection


class SqliteWriteLock:
    """One writer at a time across the threads of this process (a lock) and the processes
    sharing the database file (``flock`` on ``<database>.write-lock``, which wakes the next
    waiter at once when released)."""

    def __init__(self, database: Path | None) -> None:
        self._threads = threading.Lock()
        self._file = database.with_name(database.name + ".write-lock") if database else None
        self._fd: int | None = None

    def __enter__(self) -> None:
        self._threads.acquire()
        try:
            if self._file is not None:
                if self._fd is None:
                    self._fd = os.open(self._file, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise

    def __exit__(self, *_exc: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()


def _sqlite_path(url: str) -> Path | None:
    path = url.split("///", 1)[-1] if "///" in url else ""
    return Path(path) if path and path != ":memory:" else None


def _create_engine(url: str, pool_size: int) -> Engine:
    if url.startswith("sqlite"):
        path = _sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args=_network_bounds(url),
    )


def _network_bounds(url: str) -> dict[str, int]:
    parsed = make_url(url)
    if parsed.get_driver_name() not in _LIBPQ_DRIVERS:
        return {}  # another driver's keywords differ: the URL says what it needs
    if "service" in parsed.query or os.environ.get("PGSERVICE"):
        return {}  # keyword arguments would override the service file's values
    named = set(parsed.query)
    if os.environ.get("PGCONNECT_TIMEOUT"):
        named.add("connect_timeout")
    return {key: value for key, value in POSTGRES_NETWORK_BOUNDS.items() if key not in named}


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control from the driver so that "begin" below can be IMMEDIATE:
    # a deferred transaction that later writes can fail at once with "database is locked"
    # under concurrent associations instead of waiting for the lock.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # an acknowledged instance survives power loss
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_on_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")
