"""A WADO-RS retrieve from an S3 store (SeaweedFS), through the real API under uvicorn with
dicomweb-client: a series stored by STOW-RS and one of the gateway's results come back byte
for byte, the objects read ahead in batches by the sizes the index recorded (originals and
results alike), and the metadata of the study is each object's own."""

from __future__ import annotations

import gc
import hashlib
import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from gateway.devices.registry import DeviceRegistry
from gateway.index import read_ahead
from gateway.index.database import Database
from gateway.settings import Settings
from tests.control_plane_data import Running, flag_image, prepare_index, serve_api
from tests.dicomweb.test_dicomweb import _add_result, _client, _multipart_parts, _store_raw, _token
from tests.index.test_read_ahead import WatchedS3
from tests.services import S3Server, s3_server, write_ct_series

SLICES = 10


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture
def server(s3: S3Server, tmp_path: Path) -> Iterator[Running]:
    db = Database(f"sqlite:///{tmp_path / 'dicomweb.db'}")
    prepare_index(db)
    store = WatchedS3(s3)
    try:
        with serve_api(db, store, Settings(data_dir=tmp_path), DeviceRegistry(db, store)) as api:
            yield api
    finally:
        db.dispose()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_study_comes_back_whole_read_ahead_from_s3(server: Running, tmp_path: Path) -> None:
    series = [path.read_bytes() for path in write_ct_series(tmp_path / "ct", SLICES, size=64)]
    _store_raw(_client(server, _token(server, "service", None, "irk-cami")), series)
    study_uid = str(pydicom.dcmread(io.BytesIO(series[0])).StudyInstanceUID)
    flag = flag_image(study_uid, "s3")
    _add_result(server, study_uid, flag)
    store = server.store
    assert isinstance(store, WatchedS3)
    store.batches.clear()
    store.headers.clear()

    reader = _client(server, _token(server, "viewer", "38", None))
    parts = _multipart_parts(reader, f"{server.url}/dicom-web/studies/{study_uid}")

    assert sorted(_sha(part) for part in parts) == sorted(_sha(d) for d in [*series, flag])
    # The result's series and SOP class from its header; then every object in batches of
    # the store's parallel reads, the sizes known, the result too: 11 are 4 + 4 + 3.
    assert store.headers == [[f"results/{pydicom.dcmread(io.BytesIO(flag)).SOPInstanceUID}.dcm"]]
    assert [len(batch) for batch in store.batches] == [4, 4, 3]
    assert store.headers[0][0] in store.batches[-1]
    assert store.streamed == []

    metadata = reader.retrieve_study_metadata(study_uid)
    expected = {str(pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID) for d in [*series, flag]}
    assert {m["00080018"]["Value"][0] for m in metadata} == expected


def test_a_viewer_gone_mid_answer_gives_back_what_its_answer_held(
    server: Running, tmp_path: Path
) -> None:
    """The process's read-ahead budget is whole again once an answer whose client closed
    the connection after its first bytes has been dropped by the server."""
    # 40 slices of 512 KiB: more than loopback's socket buffers, so the server is still
    # sending when the client goes.
    series = [path.read_bytes() for path in write_ct_series(tmp_path / "ct", 40, size=512)]
    _store_raw(_client(server, _token(server, "service", None, "irk-cami")), series)
    study_uid = str(pydicom.dcmread(io.BytesIO(series[0])).StudyInstanceUID)
    budget = read_ahead._PROCESS
    store = server.store
    assert isinstance(store, WatchedS3)
    store.batches.clear()
    token = _token(server, "viewer", "38", None)
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'

    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "GET",
            f"{server.url}/dicom-web/studies/{study_uid}",
            headers={"Authorization": f"Bearer {token}", "Accept": accept},
        ) as response,
    ):
        assert response.status_code == 200
        first = next(response.iter_raw(4096))
        assert first.startswith(b"--")
        assert budget.left() < budget.total  # a batch is held for this answer
        # The connection is closed here, the answer's other parts never read.

    deadline = time.monotonic() + 30
    while budget.left() != budget.total and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    assert budget.left() == budget.total
    assert 0 < sum(len(batch) for batch in store.batches) < len(series)  # cut short
