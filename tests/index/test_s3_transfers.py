"""An S3 store's requests side by side, on a real S3 server (SeaweedFS over HTTP): an ingest
group's PUTs and a job's GETs run together, come back in order, and a failure returns only
once no request of the call is still under way."""

from __future__ import annotations

import multiprocessing
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import StorageError
from gateway.index.object_store import StagedObject
from gateway.index.s3_store import S3Store
from gateway.settings import Settings
from tests.services import S3_CREDENTIALS, S3Server, s3_server

PARALLEL = 4
FAILS = "gone.dcm"  # a key whose request fails at once, never held


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


class _Observed(S3Store):
    """The store, with its requests counted while they run; ``gate``, when set, holds each
    request until that many are running at once (a store that makes them one after another
    breaks it)."""

    def __init__(self, server: S3Server, parallel: int = PARALLEL) -> None:
        super().__init__(
            server.endpoint,
            S3_CREDENTIALS["s3_access_key"],
            S3_CREDENTIALS["s3_secret_key"],
            f"aigw-{uuid.uuid4().hex[:12]}",
            parallel=parallel,
        )
        self.running = 0
        self.most_running = 0
        self.gate: threading.Barrier | None = None
        self.hold: threading.Event | None = None
        self._count = threading.Lock()

    def _enter(self, key: str) -> None:
        with self._count:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        if self.gate is not None:
            self.gate.wait(timeout=30)
        if self.hold is not None and not key.endswith(FAILS):
            self.hold.wait(timeout=30)

    def _leave(self) -> None:
        with self._count:
            self.running -= 1

    def publish(self, staged: StagedObject, key: str) -> None:
        self._enter(key)
        try:
            super().publish(staged, key)
        finally:
            self._leave()

    def get(self, key: str) -> bytes:
        self._enter(key)
        try:
            return super().get(key)
        finally:
            self._leave()


def _payloads(count: int, size: int = 64 * 1024) -> list[bytes]:
    return [bytes([index]) * 7 + os.urandom(size) for index in range(count)]


def _group(payloads: list[bytes], keys: list[str]) -> list[tuple[StagedObject, str]]:
    return [(StagedObject(data), key) for data, key in zip(payloads, keys, strict=True)]


def test_a_groups_puts_and_a_jobs_gets_run_side_by_side_and_keep_their_order(
    s3: S3Server, tmp_path: Path
) -> None:
    store = _Observed(s3)
    payloads = _payloads(8)
    spooled = tmp_path / "spooled.dcm"
    spooled.write_bytes(payloads[0])
    group = [(StagedObject(b"", source=spooled, size=len(payloads[0])), "studies/1/0.dcm")]
    group += [(StagedObject(data), f"studies/1/{i}.dcm") for i, data in enumerate(payloads) if i]
    keys = [key for _staged, key in group]

    store.gate = threading.Barrier(PARALLEL)  # one request at a time would break it
    store.publish_group(group)
    assert store.get_many(keys) == payloads
    store.gate = None

    assert store.most_running == PARALLEL
    assert store.running == 0
    assert sorted(store.keys("studies/1/")) == sorted(keys)


def test_a_jobs_results_are_put_side_by_side(s3: S3Server) -> None:
    store = _Observed(s3)
    payloads = _payloads(PARALLEL)
    keys = [f"results/1/job-1/{name}" for name in ("sr", "sc", "gsps", "semd.xml")]
    store.gate = threading.Barrier(PARALLEL)  # one PUT at a time would break it
    store.put_many(list(zip(keys, payloads, strict=True)))
    store.gate = None
    assert store.most_running == PARALLEL
    assert store.running == 0
    assert store.get_many(keys) == payloads


def test_results_with_a_bad_key_put_nothing(s3: S3Server) -> None:
    store = _Observed(s3)
    items = [("results/2/job-1/sr.dcm", b"sr"), ("results/../escape", b"x")]
    with pytest.raises(ValueError, match="unsafe object key"):
        store.put_many(items)
    assert store.most_running == 0
    assert list(store.keys("results/2/")) == []


def test_an_object_up_to_16_mib_is_one_put_and_a_larger_one_goes_in_16_mib_parts(
    s3: S3Server,
) -> None:
    """S3 gives an object uploaded in parts an ETag ending ``-<parts>``: a 12 MiB flag image
    was three 5 MiB parts (minio's default), each object one request now up to 16 MiB."""
    store = _Observed(s3)
    flag, mammogram = os.urandom(12 << 20), os.urandom(40 << 20)
    store.put_many([("results/5/job-1/sc-1.dcm", flag), ("studies/5/mg.dcm", mammogram)])
    store.put("results/5/job-1/semd.xml", b"<ClinicalDocument/>")

    def stat(key: str) -> Any:
        return store.client.stat_object(store.bucket, key)

    assert "-" not in str(stat("results/5/job-1/sc-1.dcm").etag)
    assert str(stat("studies/5/mg.dcm").etag).endswith("-3")  # 16 + 16 + 8 MiB
    assert store.get_many(["results/5/job-1/sc-1.dcm", "studies/5/mg.dcm"]) == [flag, mammogram]
    assert stat("studies/5/mg.dcm").content_type == "application/dicom"
    assert stat("results/5/job-1/semd.xml").content_type == "application/xml"


def test_one_request_at_a_time_when_told(s3: S3Server) -> None:
    store = _Observed(s3, parallel=1)
    payloads = _payloads(4)
    keys = [f"studies/2/{i}.dcm" for i in range(4)]
    store.publish_group(_group(payloads, keys))
    assert store.get_many(keys) == payloads
    assert store.most_running == 1


def test_a_failed_put_returns_once_the_groups_other_puts_have_ended(
    s3: S3Server, tmp_path: Path
) -> None:
    """The caller deletes a failed group's keys: a PUT still under way then would land
    after its delete and leave an object no row holds."""
    store = _Observed(s3)
    missing = StagedObject(b"", source=tmp_path / FAILS, size=10)
    others = [(StagedObject(data), f"studies/3/{i}.dcm") for i, data in enumerate(_payloads(3))]
    store.gate = threading.Barrier(PARALLEL)  # all four under way before the failure
    store.hold = threading.Event()  # the others wait until well after it
    release = threading.Timer(0.5, store.hold.set)
    release.start()
    try:
        with pytest.raises(StorageError, match="cannot read spooled instance"):
            store.publish_group([(missing, f"studies/3/{FAILS}"), *others])
        assert store.hold.is_set()  # raised after the held PUTs were let go …
        assert store.running == 0  # … and had ended
    finally:
        release.cancel()
        store.hold.set()
    assert sorted(store.keys("studies/3/")) == sorted(key for _staged, key in others)


def test_a_failed_get_says_which_object(s3: S3Server) -> None:
    store = _Observed(s3)
    payloads = _payloads(6)
    keys = [f"studies/4/{i}.dcm" for i in range(6)]
    store.publish_group(_group(payloads, keys))
    with pytest.raises(StorageError, match=r"cannot read studies/4/absent\.dcm"):
        store.get_many([*keys[:3], "studies/4/absent.dcm", *keys[3:]])
    assert store.running == 0
    assert store.get_many(keys) == payloads  # the store goes on


def _in_forked_child(store: S3Store, keys: list[str], payloads: list[bytes]) -> None:
    if store.get_many(keys) != payloads:
        os._exit(2)
    store.publish_group(_group(payloads, [f"{key}.child" for key in keys]))


def test_a_process_forked_after_the_threads_started_makes_its_own(s3: S3Server) -> None:
    store = _Observed(s3)
    payloads = _payloads(4)
    keys = [f"studies/5/{i}.dcm" for i in range(4)]
    store.publish_group(_group(payloads, keys))
    assert store.get_many(keys) == payloads  # both pools' threads running in this process

    child = multiprocessing.get_context("fork").Process(
        target=_in_forked_child, args=(store, keys, payloads)
    )
    child.start()
    child.join(timeout=60)
    if child.is_alive():  # the parent's pool copied without its threads: waits for ever
        child.kill()
        child.join()
        pytest.fail("the forked child's requests never ran")
    assert child.exitcode == 0
    assert store.get_many([f"{key}.child" for key in keys]) == payloads


def test_the_setting_bounds_the_requests_side_by_side() -> None:
    assert Settings().s3_parallel_requests == 8
    for wrong in (0, 65):
        with pytest.raises(ValueError, match="s3_parallel_requests"):
            Settings(s3_parallel_requests=wrong)
