"""Object store: where received instances and results are kept, byte for byte.

Two backends behind one interface (:class:`ObjectStore`): a local folder, here (temp file,
fsync, rename — a reader never sees half an object), and S3/MinIO through the ``minio`` SDK
(:mod:`gateway.index.s3_store`). Keys are built by the gateway from validated UIDs only; the
store refuses any key that could leave its root.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from gateway.errors import StorageError
from gateway.index.durable_files import copy_synced, fsync_dir, stage_durably, temp_name
from gateway.index.free_space import FreeSpace
from gateway.settings import Settings
from gateway.uids import is_valid_uid

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$")
_TEMP_SUFFIX = ".partial"
READ_CHUNK = 1 << 20  # what a streamed read holds at a time


def instance_key(study_uid: str, series_uid: str, sop_uid: str, version: int = 1) -> str:
    """``studies/<StudyUID>/<SeriesUID>/<SOPUID>.dcm``; later versions get ``.v<N>`` before it."""
    for uid in (study_uid, series_uid, sop_uid):
        if not is_valid_uid(uid):
            raise ValueError(f"not a valid DICOM UID: {uid!r}")
    suffix = ".dcm" if version == 1 else f".v{version}.dcm"
    return f"studies/{study_uid}/{series_uid}/{sop_uid}{suffix}"


def _temp_beside(final: Path) -> Path:
    """A name for ``final``'s bytes until they are renamed to it: hidden, ``.partial``."""
    return final.with_name(f".{final.name}.{temp_name(_TEMP_SUFFIX)}")


def check_key(key: str) -> str:
    if ".." in key.split("/") or not _SAFE_KEY.fullmatch(key) or key.endswith(_TEMP_SUFFIX):
        raise ValueError(f"unsafe object key: {key!r}")
    return key


@dataclass
class StagedObject:
    """Bytes made durable before the index transaction, still waiting for their key."""

    data: bytes
    temp: Path | None = None  # folder store: the fsynced temp file, until published
    source: Path | None = None  # staged from this file (``data`` is empty); read again on retry
    size: int = -1

    def __post_init__(self) -> None:
        if self.size < 0:
            self.size = len(self.data)


class ObjectStore(Protocol):
    """What the gateway needs of an object store."""

    # GETs it makes side by side; 1 where reading ahead gains nothing (a local folder).
    parallel_reads: int

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` durably under ``key``; when this returns, the object survives a crash."""

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """:meth:`put` for several objects (a job's results; S3: side by side). On failure
        some may be stored: their keys are derived, so a retry writes the same ones."""

    def stage(self, data: bytes) -> StagedObject:
        """Do the slow part of a write (data + fsync) before the key is known."""

    def stage_file(
        self, path: Path, size: int | None = None, sync: Callable[[], None] | None = None
    ) -> StagedObject:
        """:meth:`stage` for bytes in a file (a received instance spooled to disk); the file
        must stay until the object is published or discarded. ``size``: its length, where
        known; ``sync``: fsyncs it through a descriptor still open, where the store would."""

    def publish(self, staged: StagedObject, key: str) -> None:
        """Give a staged object its key; when this returns, it survives a crash under it."""

    def publish_group(self, group: Sequence[tuple[StagedObject, str]]) -> None:
        """:meth:`publish` for several objects at once (a group commit): when this returns,
        every one survives a crash under its key; on failure some may be published, and the
        caller deletes the keys it will not index."""

    def discard(self, staged: StagedObject) -> None:
        """Drop what :meth:`stage` left if it was never published."""

    def get(self, key: str) -> bytes: ...

    def get_many(self, keys: Sequence[str]) -> list[bytes]:
        """The objects of ``keys``, in their order (S3: fetched side by side)."""

    def get_heads(self, keys: Sequence[str], size: int) -> list[bytes]:
        """The first ``size`` bytes of each object (all of a shorter one), in their order."""

    def read_chunks(self, key: str, chunk: int = READ_CHUNK) -> Iterator[bytes]:
        """The object a chunk at a time (an answer streamed out need not hold it whole);
        :class:`StorageError` before the first chunk when it cannot be read."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove ``key``; absent keys are not an error."""

    def keys(self, prefix: str = "") -> Iterator[str]: ...

    def has_room(self) -> bool:
        """False when accepting more data would cross the free-space floor."""

    def spool_folder(self) -> Path | None:
        """A folder on the store's file system for the SCP's received datasets (ending
        ``.partial``, so that recovery removes a crash's leftovers): staging then links such
        a file instead of copying it. None: the system's temporary folder."""

    def check(self) -> None:
        """Raise :class:`StorageError` when the store cannot be written now."""

    def describe(self) -> str: ...


class FolderStore:
    """Objects as files under ``root``; writes are atomic and fsynced."""

    parallel_reads = 1

    def __init__(self, root: Path, min_free_bytes: int = 0) -> None:
        self.root = root.resolve()
        self.min_free_bytes = min_free_bytes
        self._free = FreeSpace(self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create object store folder {self.root}: {exc}") from exc

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        final = self._path(key)
        temp = _temp_beside(final)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            with open(temp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, final)
            fsync_dir(final.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {key}: {exc.strerror or exc}") from exc

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        for key, data in items:
            self.put(key, data)

    def _staging(self) -> Path:
        """The staging folder, made again if it went away; what a crash leaves in it ends
        ``.partial`` and recovery removes it."""
        staging = self.root / "staging"
        staging.mkdir(exist_ok=True)
        return staging

    def _staging_name(self) -> Path:
        return self.root / "staging" / temp_name(_TEMP_SUFFIX)

    def stage(self, data: bytes) -> StagedObject:
        temp = self._staging_name()
        try:
            self._staging()
            with open(temp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            raise StorageError(f"cannot write staged object: {exc.strerror or exc}") from exc
        self._free.spent(len(data))
        return StagedObject(data, temp)

    def stage_file(
        self, path: Path, size: int | None = None, sync: Callable[[], None] | None = None
    ) -> StagedObject:
        temp = self._staging_name()
        try:
            if size is None:
                size = path.stat().st_size
            try:
                stage_durably(path, temp, sync)
            except FileNotFoundError:  # staging removed under us (or the file itself gone)
                self._staging()
                stage_durably(path, temp, sync)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            raise StorageError(f"cannot write staged object: {exc.strerror or exc}") from exc
        self._free.spent(size)
        return StagedObject(b"", temp, source=path, size=size)

    def put_file(self, key: str, path: Path) -> None:
        """:meth:`put` from a file, without holding it in memory."""
        final = self._path(key)
        temp = _temp_beside(final)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            copy_synced(path, temp)
            os.replace(temp, final)
            fsync_dir(final.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {key}: {exc.strerror or exc}") from exc

    def publish(self, staged: StagedObject, key: str) -> None:
        self.publish_group([(staged, key)])

    def publish_group(self, group: Sequence[tuple[StagedObject, str]]) -> None:
        # Renames first, then one fsync per directory: the instances of a series share one.
        directories: dict[Path, None] = {}
        for staged, key in group:
            directories[self._rename_into_place(staged, key)] = None
        for directory in directories:
            try:
                fsync_dir(directory)
            except OSError as exc:
                raise StorageError(f"cannot sync {directory.name}: {exc.strerror or exc}") from exc

    def _rename_into_place(self, staged: StagedObject, key: str) -> Path:
        """The staged file under its key, not yet durable there; returns its directory."""
        if staged.temp is None:  # already published once (a retried transaction)
            self._write_unsynced_entry(staged, key)
            return self._path(key).parent
        final = self._path(key)
        try:
            try:
                os.replace(staged.temp, final)  # same file system: atomic
            except FileNotFoundError:  # the series' first instance: its folder is made
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged.temp, final)
            staged.temp = None
        except OSError as exc:
            raise StorageError(f"cannot write {key}: {exc.strerror or exc}") from exc
        return final.parent

    def _write_unsynced_entry(self, staged: StagedObject, key: str) -> None:
        # The data is fsynced; only the directory entry waits for publish_group's sync.
        final = self._path(key)
        temp = _temp_beside(final)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            if staged.source is not None:
                copy_synced(staged.source, temp)
            else:
                with open(temp, "wb") as handle:
                    handle.write(staged.data)
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(temp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {key}: {exc.strerror or exc}") from exc

    def discard(self, staged: StagedObject) -> None:
        if staged.temp is not None:
            with contextlib.suppress(OSError):
                staged.temp.unlink(missing_ok=True)
            staged.temp = None

    def get_many(self, keys: Sequence[str]) -> list[bytes]:
        return [self.get(key) for key in keys]

    def get_heads(self, keys: Sequence[str], size: int) -> list[bytes]:
        return [self._head(key, size) for key in keys]

    def _head(self, key: str, size: int) -> bytes:
        try:
            with open(self._path(key), "rb") as handle:
                return handle.read(size)
        except OSError as exc:
            raise StorageError(f"cannot read {key}: {exc.strerror or exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read {key}: {exc.strerror or exc}") from exc

    def map(self, key: str) -> mmap.mmap | bytes:
        """The object mapped read-only, not copied (objects are written whole and renamed
        into place, never changed after); an empty object, which cannot be mapped, read."""
        try:
            with self._path(key).open("rb") as handle:
                if os.fstat(handle.fileno()).st_size == 0:
                    return b""
                return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            if exc.errno == errno.ENOMEM:  # past the address-space ceiling (RLIMIT_AS)
                raise MemoryError(f"cannot map {key}: {exc.strerror or exc}") from exc
            raise StorageError(f"cannot read {key}: {exc.strerror or exc}") from exc

    def read_chunks(self, key: str, chunk: int = READ_CHUNK) -> Iterator[bytes]:
        try:
            handle = self._path(key).open("rb")
        except OSError as exc:
            raise StorageError(f"cannot read {key}: {exc.strerror or exc}") from exc
        return _chunks_of(handle, key, chunk)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {key}: {exc.strerror or exc}") from exc

    def keys(self, prefix: str = "") -> Iterator[str]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return
        for directory, _subdirs, files in os.walk(base):
            for name in files:
                if name.endswith(_TEMP_SUFFIX):
                    continue
                yield Path(directory, name).relative_to(self.root).as_posix()

    def remove_partial_writes(self) -> int:
        """Delete temp files left by a crash mid-write; returns how many."""
        removed = 0
        for directory, _subdirs, files in os.walk(self.root):
            for name in files:
                if name.endswith(_TEMP_SUFFIX):
                    Path(directory, name).unlink(missing_ok=True)
                    removed += 1
        return removed

    def spool_folder(self) -> Path | None:
        try:
            return self._staging()
        except OSError:
            return None  # staging itself fails with the reason, per instance

    def has_room(self) -> bool:
        try:
            return self._free.at_least(self.min_free_bytes)
        except OSError:
            return False

    def check(self) -> None:
        probe = f"health/probe-{uuid.uuid4().hex}"
        try:
            self.put(probe, b"")
        finally:
            with contextlib.suppress(OSError):
                (self.root / probe).unlink(missing_ok=True)

    def describe(self) -> str:
        return f"folder {self.root}"


def _chunks_of(handle: BinaryIO, key: str, chunk: int) -> Iterator[bytes]:
    with handle:
        try:
            while block := handle.read(chunk):
                yield block
        except OSError as exc:
            raise StorageError(f"cannot read {key}: {exc.strerror or exc}") from exc


def create_store(settings: Settings) -> ObjectStore:
    if settings.object_store == "s3":
        # Imported here: the S3 backend builds on this module's types.
        from gateway.index.s3_store import S3Store

        return S3Store(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key,
            settings.s3_bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
            pool_size=settings.max_associations + 4,
            parallel=settings.s3_parallel_requests,
        )
    return FolderStore(settings.resolved_store_dir, settings.min_free_bytes)
