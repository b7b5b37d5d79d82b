"""Core statements compiled once per dialect and run on the transaction's DBAPI connection.

For the few statements that run for every received instance. SQLAlchemy's ``execute`` builds
an execution context, looks its compiled form up in the cache, processes every parameter and
wraps the cursor, each time (~40 µs of one core a statement here, six per instance); this
compiles the statement once, keeps its SQL text, parameter order and the column types' bind
processors, and hands the driver the text and the processed values. The driver then reuses
its own prepared statement: sqlite3 caches them per connection by text, psycopg 3 prepares
server-side with ``prepare=True``.

The statement runs inside the caller's SQLAlchemy transaction (same connection, same
``BEGIN``); the driver's errors come out as SQLAlchemy's (``IntegrityError`` and the rest), so
callers and :func:`gateway.index.database.translated` see what ``Connection.execute`` raises.
Results are the driver's rows, unprocessed: meant for integers and strings. An INSERT should be
``.inline()``: compiled alone, PostgreSQL's would otherwise fetch the new primary key back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

Params = Mapping[str, object]


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # the parameters in the order the SQL text wants them
    positional: bool
    processors: tuple[tuple[str, Callable[[Any], Any]], ...]
    prepare: bool  # psycopg: ask for a server-side prepared statement


class Prepared:
    """One Core statement; ``execute``/``executemany`` on a :class:`Connection` in a
    transaction. Parameters are named as the statement's bind parameters."""

    def __init__(self, statement: ClauseElement) -> None:
        self._statement = statement
        self._compiled: dict[Dialect, _Compiled] = {}
        self._lock = threading.Lock()

    def execute(self, connection: Connection, params: Params) -> list[Sequence[Any]]:
        """Run once with ``params``; the rows it returned (none for a write)."""
        compiled = self._compile(connection.dialect)
        values = _values(compiled, params)
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            if compiled.prepare:
                cursor.execute(compiled.sql, values, prepare=True)
            else:
                cursor.execute(compiled.sql, values)
            return list(cursor.fetchall()) if cursor.description is not None else []
        except connection.dialect.loaded_dbapi.Error as exc:
            raise _translated(connection, compiled, values, exc) from exc
        finally:
            cursor.close()

    def executemany(self, connection: Connection, rows: Sequence[Params]) -> None:
        """Run once per row (a write: nothing is returned)."""
        if len(rows) == 1:
            self.execute(connection, rows[0])
            return
        compiled = self._compile(connection.dialect)
        values = [_values(compiled, row) for row in rows]
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(compiled.sql, values)
        except connection.dialect.loaded_dbapi.Error as exc:
            raise _translated(connection, compiled, values, exc) from exc
        finally:
            cursor.close()

    def _compile(self, dialect: Dialect) -> _Compiled:
        found = self._compiled.get(dialect)
        if found is not None:
            return found
        with self._lock:
            compiled = cast(SQLCompiler, self._statement.compile(dialect=dialect))
            names = tuple(compiled.positiontup or ()) if dialect.positional else ()
            processors = []
            for name, bind in compiled.binds.items():
                processor = bind.type.bind_processor(dialect)
                if processor is not None:
                    processors.append((compiled.bind_names.get(bind, name), processor))
            found = _Compiled(
                sql=compiled.string,
                names=names,
                positional=dialect.positional,
                processors=tuple(processors),
                prepare=dialect.driver == "psycopg",
            )
            self._compiled[dialect] = found
            return found


def _values(compiled: _Compiled, params: Params) -> Any:
    if compiled.processors:
        processed = dict(params)
        for name, processor in compiled.processors:
            if name in processed:
                processed[name] = processor(processed[name])
        params = processed
    if compiled.positional:
        return tuple(params[name] for name in compiled.names)
    return params


def _translated(
    connection: Connection, compiled: _Compiled, values: Any, exc: Exception
) -> StatementError:
    """The driver's error as ``Connection.execute`` would have raised it."""
    dialect = connection.dialect
    return DBAPIError.instance(
        compiled.sql,
        values,
        exc,
        dialect.loaded_dbapi.Error,
        hide_parameters=True,  # patient attributes are parameters; errors get logged
        dialect=dialect,
    )
