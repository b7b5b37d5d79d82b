"""An answer's objects read ahead (``gateway.index.read_ahead``), on a real S3 server and a
folder store: the bytes come back in order and unchanged, fetched together from S3 within the
byte budget and the store's parallel reads, streamed where a size is unknown or over the
budget or the store is a folder, and a missing object still ends the answer just before it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from gateway.dicomweb.multipart import multipart_body
from gateway.errors import StorageError
from gateway.index.object_store import READ_CHUNK, FolderStore, ObjectStore
from gateway.index.read_ahead import ByteBudget, ReadAhead, Wanted
from gateway.index.s3_store import S3Store
from gateway.index.stored_headers import HEAD_BYTES
from tests.services import S3_CREDENTIALS, S3Server, s3_server

PARALLEL = 4
KIB = 1024


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


class WatchedS3(S3Store):
    """The store, with what each read asked for: the batches fetched together (and the
    largest recorded size each was read to), the heads read for their attributes, and the
    objects streamed."""

    def __init__(self, server: S3Server) -> None:
        super().__init__(
            server.endpoint,
            S3_CREDENTIALS["s3_access_key"],
            S3_CREDENTIALS["s3_secret_key"],
            f"aigw-{uuid.uuid4().hex[:12]}",
            parallel=PARALLEL,
        )
        self.batches: list[list[str]] = []
        self.largest: list[int] = []
        self.headers: list[list[str]] = []
        self.streamed: list[str] = []

    def get_heads(self, keys: Sequence[str], size: int) -> list[bytes]:
        if size == HEAD_BYTES:
            self.headers.append(list(keys))
        else:
            self.batches.append(list(keys))
            self.largest.append(size - 1)
        return super().get_heads(keys, size)

    def read_chunks(self, key: str, chunk: int = READ_CHUNK) -> Iterator[bytes]:
        self.streamed.append(key)
        return super().read_chunks(key, chunk)


def _stored(store: ObjectStore, sizes: list[int], series: str) -> tuple[list[str], list[bytes]]:
    keys = [f"studies/{series}/{index:03d}.dcm" for index in range(len(sizes))]
    payloads = [bytes([index]) + os.urandom(size - 1) for index, size in enumerate(sizes)]
    for key, data in zip(keys, payloads, strict=True):
        store.put(key, data)
    return keys, payloads


def _answer(reads: ReadAhead) -> list[bytes]:
    """Each object's bytes as the answer sends them, opened in turn; nothing is left held."""
    sent = [b"".join(open_part()) for open_part in reads]
    assert reads._fetched == {}
    return sent


def test_a_series_is_fetched_a_batch_at_a_time_and_sent_unchanged(s3: S3Server) -> None:
    store = WatchedS3(s3)
    keys, payloads = _stored(store, [64 * KIB] * 10, "1")
    reads = ReadAhead(
        store, [Wanted(key, len(data)) for key, data in zip(keys, payloads, strict=True)]
    )

    assert _answer(reads) == payloads
    assert store.batches == [keys[0:4], keys[4:8], keys[8:10]]  # parallel_reads at a time
    assert store.streamed == []


def test_a_batch_holds_no_more_than_the_budget(s3: S3Server) -> None:
    store = WatchedS3(s3)
    sizes = [100 * KIB, 100 * KIB, 100 * KIB, 50 * KIB, 50 * KIB, 300 * KIB, 10 * KIB]
    keys, payloads = _stored(store, sizes, "2")
    wanted = [Wanted(key, size) for key, size in zip(keys, sizes, strict=True)]
    reads = ReadAhead(store, wanted, budget=250 * KIB)

    assert _answer(reads) == payloads
    # As many of the batch's largest as fit 250 KiB: 2 × 100; 2 × 100 (100, 50); then
    # 50 and 300 (2 × 300 would pass it): 50 alone, streamed, as without reading ahead;
    # 300 alone is over the budget: streamed; the last, 10, alone: streamed.
    assert store.batches == [keys[0:2], keys[2:4]]
    assert store.streamed == keys[4:7]
    for batch, largest in zip(store.batches, store.largest, strict=True):
        assert largest == max(sizes[keys.index(key)] for key in batch)
        assert len(batch) * (largest + 1) <= 250 * KIB + len(batch)  # what it may hold


def test_an_object_of_unknown_size_is_streamed_and_ends_a_batch(s3: S3Server) -> None:
    store = WatchedS3(s3)
    keys, payloads = _stored(store, [32 * KIB] * 6, "3")
    wanted = [Wanted(key, None if index == 2 else 32 * KIB) for index, key in enumerate(keys)]

    assert _answer(ReadAhead(store, wanted)) == payloads
    assert store.batches == [keys[0:2], keys[3:6]]
    assert store.streamed == [keys[2]]


def test_a_large_object_streams_a_chunk_at_a_time(s3: S3Server) -> None:
    store = WatchedS3(s3)
    keys, payloads = _stored(store, [300 * KIB, 300 * KIB], "4")
    reads = ReadAhead(store, [Wanted(k, 300 * KIB) for k in keys], budget=200 * KIB, chunk=KIB * 64)
    chunks = [list(open_part()) for open_part in reads]
    assert [b"".join(parts) for parts in chunks] == payloads
    assert all(len(parts) == 5 for parts in chunks)  # 300 KiB in 64 KiB chunks
    assert store.batches == []


def test_a_missing_object_ends_the_answer_just_before_it(s3: S3Server) -> None:
    """Its batch cannot be fetched whole: the objects before it still go out."""
    store = WatchedS3(s3)
    keys, payloads = _stored(store, [16 * KIB] * 6, "5")
    store.delete(keys[2])
    reads = ReadAhead(store, [Wanted(key, 16 * KIB) for key in keys])

    body = multipart_body("b", "application/dicom", reads)
    sent = b""
    with pytest.raises(StorageError, match=rf"cannot read {keys[2]}"):
        for piece in body:
            sent += piece
    assert sent.count(b"--b\r\n") == 2  # the two objects before the missing one, whole
    assert payloads[0] in sent and payloads[1] in sent
    assert store.batches == [keys[0:4]]  # the batch was tried, then opened one by one
    assert store.streamed == keys[0:3]


def test_the_objects_after_a_failed_batch_are_read_ahead_again(s3: S3Server) -> None:
    store = WatchedS3(s3)
    keys, payloads = _stored(store, [16 * KIB] * 9, "6")
    reads = list(ReadAhead(store, [Wanted(key, 16 * KIB) for key in keys]))
    store.delete(keys[1])
    with pytest.raises(StorageError):
        b"".join(reads[1]())  # the batch 1–4 fails; object 1 is opened alone: missing
    # The answer would end there; opened on, the rest of that batch goes one by one and the
    # next batch is fetched together again.
    assert [b"".join(reads[index]()) for index in range(2, 9)] == payloads[2:]
    assert store.batches == [keys[1:5], keys[5:9]]
    assert store.streamed == keys[1:5]


def test_an_object_longer_than_the_index_says_is_streamed_whole(s3: S3Server) -> None:
    """A result written again under its key by a job's second run: its row keeps the first
    size. It is read no further than the batch's largest recorded size, then streamed."""
    store = WatchedS3(s3)
    keys, payloads = _stored(store, [16 * KIB, 40 * KIB, 16 * KIB, 16 * KIB, 16 * KIB], "9")
    wanted = [Wanted(key, 16 * KIB) for key in keys]  # the second one recorded too small

    assert _answer(ReadAhead(store, wanted)) == payloads
    assert store.batches == [keys[0:4]]
    assert store.largest == [16 * KIB]
    assert store.streamed == [keys[1], keys[4]]  # cut, so streamed; the last one alone


def test_the_answers_of_a_process_hold_no_more_than_its_budget_together(s3: S3Server) -> None:
    """Two answers at once under a process budget of one batch: the second streams while
    the first holds its batch, reads ahead again once it has been handed out, and what an
    answer dropped half-way held comes back."""
    store = WatchedS3(s3)
    keys, payloads = _stored(store, [16 * KIB] * 8, "10")
    batch = 4 * (16 * KIB + 1)  # four objects, each read to one byte past its size
    shared = ByteBudget(batch + 100)
    first = list(ReadAhead(store, [Wanted(key, 16 * KIB) for key in keys[:4]], shared=shared))
    second = ReadAhead(store, [Wanted(key, 16 * KIB) for key in keys[4:]], shared=shared)
    second_parts = list(second)

    assert b"".join(first[0]()) == payloads[0]  # the first answer's batch: taken
    assert shared.left() == 100 + (16 * KIB + 1)  # one handed out, three still held
    assert b"".join(second_parts[0]()) == payloads[4]  # too little left: streamed
    assert store.streamed == [keys[4]]
    assert [b"".join(part()) for part in first[1:]] == payloads[1:4]
    assert shared.left() == shared.total  # every object handed out: all given back
    assert [b"".join(part()) for part in second_parts[1:]] == payloads[5:8]
    assert store.batches == [keys[0:4], keys[5:8]]  # the second reads ahead again

    dropped = ReadAhead(store, [Wanted(key, 16 * KIB) for key in keys], shared=shared)
    b"".join(next(iter(dropped))())  # a viewer that went away after the first object
    assert shared.left() < shared.total
    del dropped
    assert shared.left() == shared.total


def test_nothing_is_read_ahead_from_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FolderStore(tmp_path / "objects")
    keys, payloads = _stored(store, [16 * KIB] * 5, "7")

    def never(keys: Sequence[str], size: int) -> list[bytes]:
        raise AssertionError("read ahead from a folder")

    monkeypatch.setattr(store, "get_heads", never)
    assert _answer(ReadAhead(store, [Wanted(key, 16 * KIB) for key in keys])) == payloads


def test_one_request_at_a_time_reads_nothing_ahead(s3: S3Server) -> None:
    store = S3Store(
        s3.endpoint,
        S3_CREDENTIALS["s3_access_key"],
        S3_CREDENTIALS["s3_secret_key"],
        f"aigw-{uuid.uuid4().hex[:12]}",
        parallel=1,
    )
    assert store.parallel_reads == 1
    keys, payloads = _stored(store, [16 * KIB] * 3, "8")
    reads = ReadAhead(store, [Wanted(key, 16 * KIB) for key in keys])
    assert reads._batch(0, reads.budget) == (0, 0)
    assert _answer(reads) == payloads
