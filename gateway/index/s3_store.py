"""The S3 backend of the object store: MinIO or any S3-compatible server, through the
``minio`` SDK. A task's requests — an ingest group's PUTs, a job's GETs and its results'
PUTs, metadata's ranged GETs — are made side by side (:mod:`gateway.index.side_by_side`),
each mostly waiting on the network."""

from __future__ import annotations

import functools
import io
import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from gateway.errors import StorageError
from gateway.index.object_store import READ_CHUNK, StagedObject, check_key
from gateway.index.side_by_side import SideBySide

# One PUT for an object up to this size; a larger one in parts of it, one at a time. minio's
# default, 5 MiB parts three at a time, made a 12 MiB flag image five requests (and three
# threads) and held as much as this does; side by side is already across objects.
PUT_PART_BYTES = 16 * 1024 * 1024
_CONTENT_TYPES = {".dcm": "application/dicom", ".xml": "application/xml"}


def _content_type(key: str) -> str:
    return _CONTENT_TYPES.get(Path(key).suffix, "application/octet-stream")


class S3Store:
    """Objects in an S3 bucket (MinIO or any S3-compatible server); bucket created if missing."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = False,
        region: str | None = None,
        pool_size: int = 32,
        parallel: int = 8,
    ) -> None:
        self.bucket = bucket
        self.endpoint = endpoint
        self._connect = functools.partial(
            _client, endpoint, access_key, secret_key, secure, region, pool_size
        )
        self.client = self._connect()
        self._bucket_ready = False
        # PUTs and GETs apart: a job's many GETs never delay an ingest group's PUTs. No
        # more side by side than the connection pool keeps (more would open and drop one
        # connection a request).
        parallel = max(1, min(parallel, pool_size))
        self._puts = SideBySide(parallel, "s3-put")
        self._gets = SideBySide(parallel, "s3-get")
        self.parallel_reads = parallel
        _S3_STORES.add(self)

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StorageError(f"S3 bucket {self.bucket}: {exc.code}") from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageError(f"S3 server {self.endpoint} unreachable: {exc}") from exc
        self._bucket_ready = True

    def put(self, key: str, data: bytes) -> None:
        self._put_stream(key, io.BytesIO(data), len(data))

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        self.publish_group([(StagedObject(data), key) for key, data in items])

    def _put_stream(self, key: str, stream: BinaryIO, size: int) -> None:
        check_key(key)
        start = stream.tell()
        for attempt in range(2):
            self._ensure_bucket()
            stream.seek(start)
            try:
                self.client.put_object(
                    self.bucket,
                    key,
                    stream,
                    size,
                    content_type=_content_type(key),
                    part_size=PUT_PART_BYTES,
                    num_parallel_uploads=1,
                )
                return
            except S3Error as exc:
                if exc.code == "NoSuchBucket" and attempt == 0:
                    # The server lost the bucket (a fresh volume, a cleanup): create it again.
                    self._bucket_ready = False
                    continue
                raise StorageError(f"cannot write {key} to S3: {exc}") from exc
            except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                raise StorageError(f"cannot write {key} to S3: {exc}") from exc

    def stage(self, data: bytes) -> StagedObject:
        return StagedObject(data)  # an S3 PUT is atomic: nothing to do ahead of it

    def stage_file(
        self, path: Path, size: int | None = None, sync: Callable[[], None] | None = None
    ) -> StagedObject:
        try:
            return StagedObject(
                b"", source=path, size=path.stat().st_size if size is None else size
            )
        except OSError as exc:
            raise StorageError(f"cannot read spooled instance: {exc.strerror or exc}") from exc

    def publish(self, staged: StagedObject, key: str) -> None:
        if staged.source is None:
            self.put(key, staged.data)
            return
        try:
            with open(staged.source, "rb") as stream:
                self._put_stream(key, stream, staged.size)
        except OSError as exc:
            raise StorageError(f"cannot read spooled instance: {exc.strerror or exc}") from exc

    def publish_group(self, group: Sequence[tuple[StagedObject, str]]) -> None:
        # Each PUT is durable when it returns; they run side by side, and none is still
        # under way when this returns or raises (the caller then deletes the group's keys).
        for _staged, key in group:
            check_key(key)  # all before any PUT: a bad key publishes nothing
        if len(group) > 1:
            self._ensure_bucket()  # once, before the PUTs
        self._puts.run(lambda item: self.publish(*item), group)

    def discard(self, staged: StagedObject) -> None:
        pass

    def get_many(self, keys: Sequence[str]) -> list[bytes]:
        return self._gets.run(self.get, keys)

    def get_heads(self, keys: Sequence[str], size: int) -> list[bytes]:
        return self._gets.run(lambda key: self._read(key, size), keys)

    def get(self, key: str) -> bytes:
        return self._read(key)

    def _read(self, key: str, length: int = 0) -> bytes:
        """The object, or its first ``length`` bytes (all of a shorter one)."""
        check_key(key)
        try:
            response = self.client.get_object(self.bucket, key, offset=0, length=length)
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()
        except S3Error as exc:
            if length and exc.code == "InvalidRange":  # an empty object: no byte 0 to start
                return b""
            raise StorageError(f"cannot read {key} from S3: {exc}") from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageError(f"cannot read {key} from S3: {exc}") from exc

    def read_chunks(self, key: str, chunk: int = READ_CHUNK) -> Iterator[bytes]:
        check_key(key)
        try:
            response = self.client.get_object(self.bucket, key)
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageError(f"cannot read {key} from S3: {exc}") from exc
        return self._streamed(response, key, chunk)

    @staticmethod
    def _streamed(response: Any, key: str, chunk: int) -> Iterator[bytes]:
        try:
            yield from response.stream(chunk)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageError(f"cannot read {key} from S3: {exc}") from exc
        finally:
            response.close()
            response.release_conn()

    def exists(self, key: str) -> bool:
        check_key(key)
        try:
            self.client.stat_object(self.bucket, key)
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NoSuchBucket"):
                return False
            raise StorageError(f"cannot stat {key} in S3: {exc.code}") from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageError(f"cannot stat {key} in S3: {exc}") from exc

    def delete(self, key: str) -> None:
        check_key(key)
        try:
            self.client.remove_object(self.bucket, key)
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageError(f"cannot delete {key} from S3: {exc}") from exc

    def keys(self, prefix: str = "") -> Iterator[str]:
        self._ensure_bucket()
        try:
            for item in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
                if item.object_name:
                    yield item.object_name
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageError(f"cannot list S3 bucket {self.bucket}: {exc}") from exc

    def has_room(self) -> bool:
        return True  # capacity is the S3 server's business; it answers errors when full

    def spool_folder(self) -> Path | None:
        return None  # an object is uploaded from wherever its file is

    def check(self) -> None:
        self._ensure_bucket()
        try:
            self.client.bucket_exists(self.bucket)
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageError(f"S3 server {self.endpoint} unreachable: {exc}") from exc

    def describe(self) -> str:
        return f"s3 {self.endpoint}/{self.bucket}"


def _client(
    endpoint: str,
    access_key: str,
    secret_key: str,
    secure: bool,
    region: str | None,
    pool_size: int,
) -> Minio:
    # Few, quick retries: a C-STORE waits on this, and the sender retries anyway.
    http = urllib3.PoolManager(
        maxsize=pool_size,
        timeout=urllib3.Timeout(connect=3.0, read=30.0),
        retries=urllib3.Retry(total=2, backoff_factor=0.1, status_forcelist=[502, 503, 504]),
    )
    return Minio(
        endpoint,
        access_key=access_key,
        secret_key=secret_key,
        secure=secure,
        region=region,
        http_client=http,
    )


_S3_STORES: weakref.WeakSet[S3Store] = weakref.WeakSet()


def _after_fork() -> None:
    # A forked child's copy of a store must not send on the parent's connections: both
    # would write to the same sockets. It gets a client of its own, with a pool of its own;
    # the old pool is left untouched (clearing it would take locks another thread of the
    # parent may have held at the fork).
    for store in list(_S3_STORES):
        store.client = store._connect()


os.register_at_fork(after_in_child=_after_fork)
