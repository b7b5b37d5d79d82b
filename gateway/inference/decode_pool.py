"""Decoding in child processes under a memory ceiling: the second line behind the checks.

The pixel checks stop every header bomb we know of before a decoder runs; this bounds what
one we do not know can take. Decoding happens in a small pool of spawned processes, each
with ``RLIMIT_AS`` set to ``decode_memory_limit_mb``: an allocation past it raises
MemoryError in the child (numpy) or fails inside the codec (openjpeg, libjpeg, charls), and
a child that dies anyway (killed, a crashed codec) breaks only the pool, which is replaced.
Either way the job fails with the reason and the worker goes on; nothing is retried, so the
queue's exactly-once handling is untouched (the pipeline, not the pool, records the state).
"""

from __future__ import annotations

import logging
import multiprocessing
import resource
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from pydicom import Dataset

from gateway.inference.decode import (
    DecodeError,
    Image2D,
    Volume,
    decode_image,
    decode_volume,
    read_dataset,
)

log = logging.getLogger(__name__)

Decoded = tuple[list[Image2D], Volume | None]


def decode_blobs(blobs: list[bytes], dims: int) -> Decoded:
    """The stored instances of one job decoded: 2D images, or one volume (``dims`` 3)."""
    return decode_datasets([read_dataset(blob) for blob in blobs], dims)


def decode_datasets(datasets: list[Dataset], dims: int) -> Decoded:
    if dims == 3:
        return [], decode_volume(datasets)
    return [decode_image(d) for d in datasets], None


def _limit_memory(limit_bytes: int) -> None:
    """Pool initializer: the ceiling on this child's address space."""
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


def _ready() -> bool:
    return True


def _decode_in_child(blobs: list[bytes], dims: int) -> Decoded:
    try:
        return decode_blobs(blobs, dims)
    except MemoryError as exc:
        raise DecodeError(f"decoding needs more than the memory limit: {exc!r}"[:300]) from None


def _context() -> multiprocessing.context.BaseContext:
    """Not fork: the worker is multi-threaded (Celery, SCP, HTTP). A fork server, started
    once per process with the decoders imported, then forks each child from itself: ~3 s
    once instead of a fresh interpreter's imports for every pool."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["gateway.inference.decode_pool"])
    return context


class DecodePool:
    """A pool of ``processes`` decoding children, each limited to ``memory_limit_mb``;
    started on first use, replaced when a child dies. Thread-safe (the worker's threads
    share it)."""

    def __init__(self, memory_limit_mb: int, processes: int) -> None:
        self.memory_limit_mb = memory_limit_mb
        self.processes = processes
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None

    def decode(self, blobs: list[bytes], dims: int) -> Decoded:
        executor = self._current()
        try:
            return executor.submit(_decode_in_child, blobs, dims).result()
        except BrokenProcessPool as exc:
            self._replace(executor)
            raise DecodeError(
                f"the decoding process died (memory limit {self.memory_limit_mb} MB): {exc}"
            ) from exc
        except DecodeError:
            raise
        except Exception as exc:  # MemoryError sending a result back, among others
            raise DecodeError(
                f"decoding failed under the memory limit of {self.memory_limit_mb} MB: "
                f"{exc.__class__.__name__}: {str(exc)[:200]}"
            ) from exc

    def warm(self) -> None:
        """Start the children now, not in the first job: a job that takes longer than the
        broker's visibility timeout is delivered to a second worker as well."""
        self._current().submit(_ready)

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    max_workers=self.processes,
                    mp_context=_context(),
                    initializer=_limit_memory,
                    initargs=(self.memory_limit_mb * 1024 * 1024,),
                )
            return self._executor

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is broken:
                log.warning(
                    "a decoding process died; pool replaced",
                    extra={"memory_limit_mb": self.memory_limit_mb},
                )
                broken.shutdown(wait=False, cancel_futures=True)
                self._executor = None
