"""One ingest flow through every storage combination: folder or S3 (SeaweedFS over HTTP) for
the objects, SQLite or a private PostgreSQL for the index. DCMTK storescu is the sender. And
the harness's two servers keep what they acknowledged across a hard stop and a start on the
same port."""

from __future__ import annotations

import hashlib
import io
import struct
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pydicom
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from minio import Minio
from sqlalchemy import select
from urllib3.exceptions import HTTPError

from gateway.index.database import Database
from gateway.index.tables import Base, InstanceRow, SeriesRow, SourceRow, StudyRow
from gateway.settings import Settings
from tests.services import (
    S3_CREDENTIALS,
    Postgres,
    S3Server,
    make_uid,
    postgres_server,
    s3_server,
    storescu,
    write_ct_series,
)
from workers.serve import Gateway


def dataset_bytes(part10: bytes) -> bytes:
    """The dataset part of a Part-10 encoding: what follows the file meta group."""
    assert part10[128:132] == b"DICM"
    assert part10[132:136] == b"\x02\x00\x00\x00"  # (0002,0000) group length, UL
    (group_length,) = struct.unpack("<I", part10[140:144])
    return part10[144 + group_length :]


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


def _backend_settings(request: pytest.FixtureRequest, store: str, database: str) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if store == "s3":
        server: S3Server = request.getfixturevalue("s3")
        overrides.update(
            object_store="s3",
            s3_endpoint=server.endpoint,
            s3_bucket=f"aigw-{uuid.uuid4().hex[:12]}",
            **S3_CREDENTIALS,
        )
    if database == "postgresql":
        postgres: Postgres = request.getfixturevalue("pg")
        overrides["database_url"] = postgres.create_database(f"aigw_{uuid.uuid4().hex[:12]}")
    return overrides


@pytest.mark.parametrize(
    ("store", "database"),
    [("folder", "sqlite"), ("s3", "sqlite"), ("folder", "postgresql"), ("s3", "postgresql")],
)
def test_ingest_flow_on_every_backend(
    store: str,
    database: str,
    request: pytest.FixtureRequest,
    make_settings: Callable[..., Settings],
    start_gateway: Callable[[Settings], Gateway],
    tmp_path: Path,
) -> None:
    settings = make_settings(**_backend_settings(request, store, database))
    gateway = start_gateway(settings)
    assert gateway.parts.db.engine.dialect.name == database
    assert gateway.parts.store.describe().startswith(store)

    study_uid = make_uid("backend-study", store, database)
    files = write_ct_series(tmp_path / "a", 4, study_uid=study_uid, seed="a")
    files += write_ct_series(tmp_path / "b", 3, study_uid=study_uid, seed="b")
    result = storescu(settings.dicom_port, files)
    assert result.returncode == 0, result.stderr

    with gateway.parts.db.session() as session:
        rows = session.execute(
            select(InstanceRow, SeriesRow.series_uid, StudyRow, SourceRow.name)
            .join(SeriesRow, InstanceRow.series_id == SeriesRow.id)
            .join(StudyRow, SeriesRow.study_id == StudyRow.id)
            .join(SourceRow, StudyRow.source_id == SourceRow.id)
        ).all()
    assert len(rows) == len(files)
    by_sop = {
        instance.sop_instance_uid: (instance, series_uid, study, source)
        for instance, series_uid, study, source in rows
    }
    for path in files:
        sent = pydicom.dcmread(path)
        instance, series_uid, study, source = by_sop[sent.SOPInstanceUID]
        assert study.study_uid == study_uid and series_uid == sent.SeriesInstanceUID
        assert source == "irk-cami" and study.region_code == "38"
        assert study.state == "receiving"
        assert instance.object_key == (
            f"studies/{study_uid}/{sent.SeriesInstanceUID}/{sent.SOPInstanceUID}.dcm"
        )
        data = gateway.parts.store.get(instance.object_key)
        assert hashlib.sha256(data).hexdigest() == instance.sha256
        chunks = list(gateway.parts.store.read_chunks(instance.object_key, chunk=4096))
        assert b"".join(chunks) == data and max(len(c) for c in chunks) <= 4096
        assert instance.size_bytes == len(data)
        # storescu sends the file's own encoding, so the dataset arrives byte for byte
        assert dataset_bytes(data) == dataset_bytes(path.read_bytes())
        stored = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
        assert stored.file_meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID
        assert instance.rows == 8 and instance.instance_number == sent.InstanceNumber
        assert instance.transfer_syntax_uid == sent.file_meta.TransferSyntaxUID

    expected_keys = {instance.object_key for instance, *_ in rows}
    assert set(gateway.parts.store.keys("studies/")) == expected_keys
    if store == "s3":
        # ask the S3 server itself, not the gateway's client
        client = Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            secure=False,
        )
        listed = {
            o.object_name
            for o in client.list_objects(settings.s3_bucket, prefix="studies/", recursive=True)
        }
        assert listed == expected_keys
        key = next(iter(expected_keys))
        response = client.get_object(settings.s3_bucket, key)
        try:
            assert hashlib.sha256(response.read()).hexdigest() == next(
                i.sha256 for i, *_ in rows if i.object_key == key
            )
        finally:
            response.close()
            response.release_conn()
    else:
        on_disk = {
            p.relative_to(settings.resolved_store_dir).as_posix()
            for p in settings.resolved_store_dir.rglob("*.dcm")
        }
        assert on_disk == expected_keys


def _schema_diff(db: Database) -> list[Any]:
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def test_postgresql_migrations_match_the_models(pg: Postgres) -> None:
    db = Database(pg.create_database(f"aigw_schema_{uuid.uuid4().hex[:8]}"))
    try:
        db.migrate()
        assert _schema_diff(db) == []
        db.migrate()  # idempotent: already at head
        assert _schema_diff(db) == []
        with db.engine.connect() as connection:
            version = connection.exec_driver_sql("SELECT version_num FROM alembic_version")
            assert len(version.all()) == 1
    finally:
        db.dispose()


def test_postgresql_schema_diff_is_detected(pg: Postgres) -> None:
    """The comparison above can fail: a column dropped behind Alembic's back shows up."""
    db = Database(pg.create_database(f"aigw_drift_{uuid.uuid4().hex[:8]}"))
    try:
        db.migrate()
        with db.engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE instances DROP COLUMN rows")
        diff = _schema_diff(db)
        assert any(op[0] == "add_column" and op[3].name == "rows" for op in diff), diff
    finally:
        db.dispose()


# --- the harness's servers keep what they acknowledged across a restart ------------------------


def _put(server: S3Server, bucket: str, key: str, data: bytes) -> None:
    server.client().put_object(bucket, key, io.BytesIO(data), len(data))


def _get(server: S3Server, bucket: str, key: str) -> bytes:
    response = server.client().get_object(bucket, key)
    try:
        return bytes(response.read())
    finally:
        response.close()
        response.release_conn()


def test_s3_objects_survive_a_stop_and_a_kill_of_the_server(tmp_path: Path) -> None:
    with s3_server(tmp_path / "s3") as server:
        endpoint, bucket = server.endpoint, "aigw-restart"
        server.client().make_bucket(bucket)
        first, second = b"\x01" * 3_000_000, b"\x02" * 1000  # several chunks, and one
        _put(server, bucket, "studies/first.dcm", first)

        server.stop()
        probe = server.client(retries=False)
        with pytest.raises(HTTPError, match="Connection refused"):
            probe.bucket_exists(bucket)
        server.start()
        assert server.endpoint == endpoint
        assert _get(server, bucket, "studies/first.dcm") == first
        _put(server, bucket, "studies/second.dcm", second)

        server.kill()  # acknowledged a moment ago, then the process dies
        server.start()
        assert _get(server, bucket, "studies/first.dcm") == first
        assert _get(server, bucket, "studies/second.dcm") == second
        assert server.object_count(bucket, "studies/") == 2


def test_postgres_keeps_committed_rows_across_an_immediate_stop(pg: Postgres) -> None:
    url = pg.create_database(f"aigw_restart_{uuid.uuid4().hex[:8]}")
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("CREATE TABLE kept (n integer)")
        connection.execute("INSERT INTO kept VALUES (1), (2)")
    open_transaction = psycopg.connect(dsn)
    open_transaction.execute("INSERT INTO kept VALUES (3)")  # never committed

    pg.stop()  # -m immediate: no checkpoint, the next start replays the WAL
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    pg.start()
    open_transaction.close()  # its server died under it: nothing to commit or send
    with psycopg.connect(dsn) as connection:
        rows = connection.execute("SELECT n FROM kept ORDER BY n").fetchall()
    assert rows == [(1,), (2,)]
