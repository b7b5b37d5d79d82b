"""Start in any order: a worker started before the gateway has migrated a fresh database
waits for the schema (and then for the broker), saying so once each; a schema older than
the code, or one it does not know, is refused with the revisions. Migration 0007 makes work
that was pending at the upgrade due at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from gateway.index.database import MIGRATIONS, Database
from gateway.index.schema import SchemaState, code_head, read_schema
from tests.services import ROOT, free_port


def upgrade(db: Database, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def newest_migration() -> str:
    """The revision of the newest migration file: what the code's head must be."""
    return max(
        path.name[:4] for path in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py")
    )


def worker(tmp_path: Path, db_file: Path) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIGW_")}
    env.update(
        {
            "AIGW_DATABASE_URL": f"sqlite:///{db_file}",
            "AIGW_DATA_DIR": str(tmp_path / "var"),
            "AIGW_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens
            "AIGW_RETRY_MAX_BACKOFF_S": "1",
            "AIGW_LOG_JSON": "true",
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "worker"],
        env=env,
        cwd=ROOT,
        stdout=(tmp_path / "worker.log").open("ab"),
        stderr=subprocess.STDOUT,
    )


def wait_for_line(log: Path, text_: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if text_ in log.read_text(errors="replace"):
            return
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"{text_!r} never logged: {log.read_text(errors='replace')[-3000:]}")


def test_schema_states(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    try:
        assert read_schema(db).state == SchemaState.EMPTY
        upgrade(db, "0006")
        older = read_schema(db)
        assert older.state == SchemaState.OLDER and older.revision == "0006"
        head = newest_migration()
        assert head > "0006"
        assert f"revision 0006, older than this aigw's {head}" in older.explain()
        upgrade(db, "head")
        assert read_schema(db).state == SchemaState.CURRENT
        assert code_head() == head
        with db.engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        unknown = read_schema(db)
        assert unknown.state == SchemaState.UNKNOWN
        assert "migrated by a newer aigw" in unknown.explain()
    finally:
        db.dispose()


def test_migration_0007_makes_pending_work_due(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    try:
        upgrade(db, "0006")
        now = "2026-11-20 10:00:00.000000"
        with db.engine.begin() as connection:
            connection.execute(text("INSERT INTO regions (code, name) VALUES ('38', 'И')"))
            connection.execute(
                text(
                    "INSERT INTO sources (id, name, title, ae_title, region_code) "
                    "VALUES (1, 'irk-cami', '', 'IRK_CAMI', '38')"
                )
            )
            for number, state in ((1, "complete"), (2, "receiving"), (3, "routed")):
                connection.execute(
                    text(
                        "INSERT INTO studies (id, study_uid, source_id, region_code, state, "
                        "first_received_at, last_received_at, state_changed_at) VALUES "
                        f"({number}, '1.2.{number}', 1, '38', '{state}', :t, :t, :t)"
                    ),
                    {"t": now},
                )
            for number, state in ((1, "queued"), (2, "running"), (3, "failed")):
                connection.execute(
                    text(
                        "INSERT INTO jobs (id, study_id, study_completed_at, series_uid, "
                        "series_uids, device_key, study_type, service_code, rule, priority, "
                        "queue, state, attempts, timings_ms, created_at) VALUES "
                        f"({number}, 3, :t, '1.3.{number}', '[]', 'd@1', 'cxr', 'A', 'r', 3, "
                        f"'infer', '{state}', 0, '{{}}', :t)"
                    ),
                    {"t": now},
                )
        upgrade(db, "head")
        with db.engine.connect() as connection:
            studies: dict[int, object] = {
                row[0]: row[1]
                for row in connection.execute(text("SELECT id, next_attempt_at FROM studies"))
            }
            jobs: dict[int, object] = {
                row[0]: row[1]
                for row in connection.execute(text("SELECT id, next_attempt_at FROM jobs"))
            }
            sends = set(connection.execute(text("SELECT sends FROM jobs")).scalars())
        assert studies[1] is not None and studies[2] is None and studies[3] is None
        assert jobs[1] is not None and jobs[2] is None and jobs[3] is None
        assert sends == {0}
    finally:
        db.dispose()


def test_a_worker_waits_for_the_schema_then_for_the_broker(tmp_path: Path) -> None:
    db_file = tmp_path / "index.db"
    db = Database(f"sqlite:///{db_file}")
    db.check()  # the file exists, empty: the gateway has not migrated it yet
    process = worker(tmp_path, db_file)
    log = tmp_path / "worker.log"
    try:
        wait_for_line(log, '"waiting for the database schema"', process)
        time.sleep(2)  # it keeps waiting, quietly
        assert log.read_text().count('"waiting for the database schema"') == 1
        db.migrate()  # what aigw serve does at start-up
        wait_for_line(log, '"the database schema is there"', process)
        wait_for_line(log, '"waiting for the broker"', process)
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(timeout=20)
        db.dispose()


def test_a_worker_refuses_a_schema_older_than_its_code(tmp_path: Path) -> None:
    db_file = tmp_path / "index.db"
    db = Database(f"sqlite:///{db_file}")
    upgrade(db, "0006")
    db.dispose()
    process = worker(tmp_path, db_file)
    assert process.wait(timeout=120) != 0
    output = (tmp_path / "worker.log").read_text()
    head = newest_migration()
    assert f"the database schema is at revision 0006, older than this aigw's {head}" in output
    assert "start aigw serve of this version (it migrates) first" in output
