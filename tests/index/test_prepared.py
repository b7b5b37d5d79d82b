"""Statements run through the driver (gateway.index.prepared) write and read what SQLAlchemy's
execute would, and fail as it would, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import cast

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, bindparam, insert, select
from sqlalchemy.exc import IntegrityError

from gateway.errors import DatabaseError
from gateway.index.database import Database
from gateway.index.prepared import Prepared
from gateway.index.tables import OrthancCursorRow, RegionRow, SourceRow

REGIONS = cast(Table, RegionRow.__table__)
SOURCES = cast(Table, SourceRow.__table__)
CURSORS = cast(Table, OrthancCursorRow.__table__)
WRITE_SOURCE = Prepared(
    insert(SOURCES)
    .inline()
    .values({n: bindparam(n) for n in ("name", "title", "ae_title", "region_code")})
)
WRITE_CURSOR = Prepared(
    insert(CURSORS)
    .inline()
    .values({n: bindparam(n) for n in ("source_id", "url", "last_change", "updated_at")})
)
READ_SOURCE = Prepared(
    select(SOURCES.c.id, SOURCES.c.title).where(SOURCES.c.name == bindparam("n"))
)


@pytest.fixture
def db(migrated: Database) -> Database:
    with migrated.transaction() as connection:
        connection.execute(insert(REGIONS).values(code="ir", name="Irkutsk"))
    return migrated


def _source(name: str) -> dict[str, object]:
    return {"name": name, "title": f"title of {name}", "ae_title": "AE", "region_code": "ir"}


def test_rows_written_and_read_through_the_driver_match_sqlalchemys(db: Database) -> None:
    with db.transaction() as connection:
        WRITE_SOURCE.executemany(connection, [_source("first")])
        WRITE_SOURCE.executemany(connection, [_source("second"), _source("third")])
        (found,) = READ_SOURCE.execute(connection, {"n": "third"})
    assert found[1] == "title of third"
    with db.transaction() as connection:
        held = connection.execute(select(SOURCES).order_by(SOURCES.c.id)).mappings().all()
    assert [dict(row) for row in held] == [
        {"id": found[0] - 2 + i, "frmo_oid": None, **_source(name)}
        for i, name in enumerate(["first", "second", "third"])
    ]


def test_a_zoned_datetime_is_stored_as_utc_and_read_back_equal(db: Database) -> None:
    local = datetime(2026, 12, 6, 20, 30, 15, 123456, tzinfo=timezone(timedelta(hours=8)))
    with db.transaction() as connection:
        WRITE_SOURCE.execute(connection, _source("irk"))
        (source,) = READ_SOURCE.execute(connection, {"n": "irk"})
        row = {"source_id": source[0], "url": "http://o", "last_change": 7, "updated_at": local}
        WRITE_CURSOR.execute(connection, row)
    with db.transaction() as connection:
        stored = connection.execute(select(CURSORS.c.updated_at)).scalar_one()
    assert stored == local
    assert stored.utcoffset() == timedelta(0)
    assert stored.hour == 12  # 20:30 at UTC+8


def test_a_naive_datetime_is_refused_as_sqlalchemy_refuses_it(db: Database) -> None:
    with pytest.raises(ValueError, match="naive"), db.transaction() as connection:
        WRITE_SOURCE.execute(connection, _source("irk"))
        (source,) = READ_SOURCE.execute(connection, {"n": "irk"})
        row = {
            "source_id": source[0],
            "url": "u",
            "last_change": 1,
            "updated_at": datetime(2026, 1, 1),
        }
        WRITE_CURSOR.execute(connection, row)


def test_a_constraint_violation_is_sqlalchemys_integrity_error(db: Database) -> None:
    with pytest.raises(IntegrityError), db.transaction() as connection:
        WRITE_SOURCE.executemany(connection, [_source("twice"), _source("twice")])
    with db.transaction() as connection:  # nothing of the failed transaction is left
        assert connection.execute(select(SOURCES.c.id)).all() == []


def test_any_other_driver_error_is_a_database_error(db: Database) -> None:
    missing = Table("no_such_table", MetaData(), Column("id", Integer))
    query = Prepared(select(missing.c.id).where(missing.c.id == bindparam("a")))
    with pytest.raises(DatabaseError, match="no_such_table"), db.transaction() as connection:
        query.execute(connection, {"a": 1})
