"""Fixtures of the index tests: a migrated database on each backend, SQLite and a real
PostgreSQL (one server per module)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.index.database import Database
from tests.services import Postgres, postgres_server


@pytest.fixture
def db(tmp_path: Path) -> Database:
    """A fresh, migrated SQLite index."""
    database = Database(f"sqlite:///{tmp_path / 'index.db'}")
    database.migrate()
    return database


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def migrated(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh, migrated index on each backend in turn."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'aigw.db'}"
    else:
        postgres: Postgres = request.getfixturevalue("pg")
        url = postgres.create_database(f"aigw_{uuid.uuid4().hex[:12]}")
    database = Database(url)
    database.migrate()
    yield database
    database.dispose()
