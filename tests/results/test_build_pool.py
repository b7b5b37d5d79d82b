"""The results' objects built in a child process: the same objects as in the worker's own
thread, stored by the child (only key, digest and size come back); inputs that cannot be
read and a child that dies each give a reason, and the pool builds the next job."""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import Dataset

from gateway.child_pool import ChildDied
from gateway.delivery.destinations import ResultKind
from gateway.errors import StorageError
from gateway.index.object_store import ObjectStore, create_store
from gateway.inference.findings import Finding
from gateway.results.artifacts import BuildOptions, BuildRequest, InputsUnreadable, build_job
from gateway.results.build_pool import BuildPool
from gateway.settings import Settings, load_settings
from tests.report_fixtures import chest_xray_input

OPTIONS = BuildOptions(semd_config=None)


def _part10(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # From a YAML file: load_settings' own subclass, which does not pickle.
    config = tmp_path / "gateway.yaml"
    config.write_text(f"data_dir: {tmp_path / 'var'}\nmin_free_bytes: 0\n")
    return load_settings(config)


@pytest.fixture
def pool(settings: Settings) -> Iterator[BuildPool]:
    building = BuildPool(1, 1024, settings, OPTIONS)
    yield building
    building.close()


def _request(store: ObjectStore, job_id: int) -> BuildRequest:
    """A positive chest radiograph's job, its source in the store under the job's key."""
    report = chest_xray_input(size=(256, 256))
    source = report.sources[0]
    key = f"studies/{source.StudyInstanceUID}/{job_id}.dcm"
    store.put(key, _part10(source))
    return BuildRequest(
        job_id=job_id,
        study_uid=str(source.StudyInstanceUID),
        device=report.device,
        study_type=report.study_type,
        service_code=report.service_code,
        source_keys=[key],
        # As recorded: the findings without their masks (none here).
        findings=[Finding(**dict(f.model_dump(exclude={"mask"}))) for f in report.findings],
        organisation=report.organisation,
        started_at=report.started_at,
        completed_at=report.completed_at,
    )


def test_a_child_builds_and_stores_the_objects_the_thread_would(
    settings: Settings, pool: BuildPool, tmp_path: Path
) -> None:
    store = create_store(settings)
    request = _request(store, 7)
    built = pool.build(request)
    kinds = {artifact.kind: artifact for artifact in built}
    assert set(kinds) == {ResultKind.SR, ResultKind.SC, ResultKind.GSPS, ResultKind.SEMD}
    assert kinds[ResultKind.SEMD].object_key is None
    assert kinds[ResultKind.SEMD].reason == "SEMD not configured (no semd_file)"
    stored = [artifact for artifact in built if artifact.object_key is not None]
    assert len(stored) == 3
    for artifact in stored:
        assert artifact.data is None  # the bytes stayed in the child
        assert artifact.object_key is not None
        assert artifact.object_key.startswith(f"results/{request.study_uid}/job-7/")
        data = store.get(artifact.object_key)
        assert artifact.size == len(data)
        assert artifact.sha256 == hashlib.sha256(data).hexdigest()
    # The same objects, byte for byte, as the worker's own thread builds into another store.
    other = create_store(
        Settings.model_construct(**{**dict(settings), "data_dir": tmp_path / "other"})
    )
    for key in request.source_keys:
        other.put(key, store.get(key))
    here = {artifact.kind: artifact for artifact in build_job(request, other, OPTIONS)}
    for artifact in stored:
        assert here[artifact.kind].sha256 == artifact.sha256


def test_unreadable_inputs_are_reported_from_the_child(settings: Settings, pool: BuildPool) -> None:
    store = create_store(settings)
    request = _request(store, 8)
    store.put(request.source_keys[0], b"not DICOM at all")
    with pytest.raises(InputsUnreadable, match="inputs unreadable: "):
        pool.build(request)
    assert pool.build(_request(store, 9))  # the child goes on


def test_a_child_that_dies_is_reported_and_the_pool_replaced(
    settings: Settings, pool: BuildPool
) -> None:
    store = create_store(settings)
    pool.build(_request(store, 10))  # the child is running now
    for pid in list(pool._children._current()._processes):  # CPython's record of them
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(ChildDied, match="the results process died"):
        pool.build(_request(store, 11))
    built = pool.build(_request(store, 12))
    assert any(artifact.object_key for artifact in built)


def test_a_store_that_cannot_be_made_fails_the_job_and_the_next_try_builds(
    tmp_path: Path,
) -> None:
    """The child makes its object store in its first job, not as it starts: a folder that
    cannot be created yet is a StorageError for that job (retried by the task), and the same
    pool builds once it can."""
    blocked = tmp_path / "mount"
    blocked.write_text("not a folder yet")  # the store's parent is a file: no store
    settings = Settings.model_construct(
        **{**dict(Settings(data_dir=tmp_path / "var")), "store_dir": blocked / "objects"}
    )
    pool = BuildPool(1, 1024, settings, OPTIONS)
    try:
        request = _request(create_store(Settings(data_dir=tmp_path / "elsewhere")), 20)
        with pytest.raises(StorageError, match="cannot create object store folder"):
            pool.build(request)
        blocked.unlink()
        store = create_store(settings)
        built = pool.build(_request(store, 21))
        assert sum(1 for artifact in built if artifact.object_key) == 3
    finally:
        pool.close()
