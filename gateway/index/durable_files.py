"""Files that survive a crash: data and directory fsyncs, the data's in the background.

A received instance's fsync is most of the wait on its durable write (about 0.7 ms for a
512² CT slice here, more when the disk is shared). :class:`BackgroundSync` starts it as soon
as the spooled file is linked into staging, so it runs while the C-STORE thread hashes the
instance and the index transaction reads and inserts; the object is renamed under its key
only after it (:meth:`FolderStore.publish_group <gateway.index.object_store.FolderStore>`
waits for the future), and the directory is fsynced before the commit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

_SYNC_THREADS = 4  # fsyncs wait on the disk, not the CPU; a few overlap well


class BackgroundSync:
    """Stages spooled files (hard link, else copy) and makes their data durable in a few
    background threads; started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def stage(self, source: Path, target: Path) -> Future[None]:
        """``target`` linked to ``source`` now (a copy when that fails, made in the
        background); the future ends when its data is durable, or raises ``OSError``."""
        try:
            os.link(source, target)
        except OSError:
            return self._submit(copy_synced, source, target)
        return self._submit(fsync_file, target)

    def _submit(self, work: Callable[..., None], *args: Path) -> Future[None]:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(_SYNC_THREADS, thread_name_prefix="fsync")
            return self._pool.submit(work, *args)


def wait_quietly(future: Future[None]) -> None:
    with contextlib.suppress(OSError):
        future.result()


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_synced(source: Path, target: Path) -> None:
    with open(source, "rb") as reader, open(target, "wb") as writer:
        shutil.copyfileobj(reader, writer, 1024 * 1024)
        writer.flush()
        os.fsync(writer.fileno())


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
