"""Load ▸ decode ▸ preprocess in child processes under a memory ceiling: the CPU half of
the pipeline, off the GIL, and the second line behind the pixel checks.

A pool of ``decode_processes`` children (the cores, by default) runs each job's load (from
the child's own object store), checks, decode and preprocess (:mod:`gateway.inference.prepare`)
and hands back the model's inputs, so jobs on the worker's threads decode in parallel while
the batcher runs the model. The pixel checks
stop every header bomb we know of before a decoder runs; the pool bounds what one we do not
know can take: each child's address space may grow by ``decode_memory_limit_mb`` beyond
what it holds after its imports (``RLIMIT_AS``): an allocation past it raises
MemoryError in the child (numpy) or fails inside the codec (openjpeg, libjpeg, charls), and
a child that dies anyway (killed, a crashed codec) breaks only the pool, which is replaced.
Either way the job fails with the reason and the worker goes on; nothing is retried, so the
queue's exactly-once handling is untouched (the pipeline, not the pool, records the state).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from gateway.child_pool import ChildDied, ChildPool, child_store, limit_memory, picklable
from gateway.errors import StorageError
from gateway.index.object_store import FolderStore, ObjectStore
from gateway.inference.decode import (
    Decoded,
    DecodeError,
    Stored,
    decode_datasets,
    read_dataset,
)
from gateway.inference.gpu_decode import select_backend
from gateway.inference.pixel_checks import PixelBudget
from gateway.inference.prepare import PreparedJob, prepare_blobs
from gateway.memory import few_arenas, keep_large_buffers
from gateway.settings import Settings
from models.manifest import InputSpec

Result = TypeVar("Result")


def decode_blobs(blobs: list[bytes], dims: int) -> Decoded:
    """The stored instances of one job decoded: 2D images, or one volume (``dims`` 3)."""
    return decode_datasets([read_dataset(blob, in_place=True) for blob in blobs], dims)


_child: dict[str, object] = {}  # in a child: its settings


def _start_child(limit_bytes: int, settings: Settings | None = None) -> None:
    """Pool initializer: one thread for torch (a child per core already), its import done
    now, then the ceiling on what this child's address space may grow by.
    ``settings``: the child reads the job's instances from the object store itself."""
    from models.preprocess import _torch

    _torch().set_num_threads(1)
    keep_large_buffers()  # the job's stored bytes: reused, not faulted in afresh each job
    few_arenas()  # the work is this thread's; an S3 store's GET threads share one arena
    if settings is not None:
        _child["settings"] = settings
        select_backend(settings.gpu.decode_backend, settings.gpu.cuda_device_id)
    limit_memory(limit_bytes)


def _decode_in_child(blobs: list[bytes], dims: int) -> Decoded:
    try:
        return decode_blobs(blobs, dims)
    except MemoryError as exc:
        raise DecodeError(f"decoding needs more than the memory limit: {exc!r}"[:300]) from None


def _prepare_in_child(blobs: Sequence[Stored], spec: InputSpec, budget: PixelBudget) -> PreparedJob:
    try:
        return prepare_blobs(blobs, spec, budget)
    except MemoryError as exc:
        raise DecodeError(f"decoding needs more than the memory limit: {exc!r}"[:300]) from None


def _child_store() -> ObjectStore:
    settings = _child["settings"]
    assert isinstance(settings, Settings)
    return child_store(settings)


def _load(store: ObjectStore, keys: list[str]) -> Sequence[Stored]:
    """A folder store's objects mapped, not read: native Pixel Data is then decoded from the
    page cache in place (a 10 MB radiograph: no copy, ~1 ms less); other stores' read (S3:
    side by side)."""
    if isinstance(store, FolderStore):
        return [store.map(key) for key in keys]
    return store.get_many(keys)


def _load_and_prepare_in_child(
    keys: list[str], spec: InputSpec, budget: PixelBudget
) -> PreparedJob:
    """Load ▸ checks ▸ decode ▸ preprocess: the stored bytes never cross a pipe (a 2500×2048
    radiograph is 10 MB to pickle, ~10 ms of the worker's time)."""
    began = time.perf_counter()
    try:
        store = _child_store()
        blobs = _load(store, keys)
    except MemoryError as exc:
        raise DecodeError(f"loading needs more than the memory limit: {exc!r}"[:300]) from None
    load_ms = round((time.perf_counter() - began) * 1000, 2)
    prepared = _prepare_in_child(blobs, spec, budget)
    return dataclasses.replace(prepared, stage_ms={**prepared.stage_ms, "load": load_ms})


class DecodePool:
    """A pool of ``processes`` decoding children, each limited to ``memory_limit_mb``;
    started on first use, replaced when a child dies. Thread-safe (the worker's threads
    share it)."""

    def __init__(
        self, memory_limit_mb: int, processes: int, settings: Settings | None = None
    ) -> None:
        self.memory_limit_mb = memory_limit_mb
        self.processes = processes
        # Given: the children load from the object store.
        self.settings = picklable(settings) if settings is not None else None
        self._children = ChildPool(
            "decoding",
            processes,
            _start_child,
            (memory_limit_mb * 1024 * 1024, self.settings),
        )

    def decode(self, blobs: list[bytes], dims: int) -> Decoded:
        """One job's pixels (the results stage's and the tests' use)."""
        return self._call(_decode_in_child, blobs, dims)

    def prepare(self, blobs: list[bytes], spec: InputSpec, budget: PixelBudget) -> PreparedJob:
        """One job checked, decoded and preprocessed in a child: its model inputs, not its
        pixels (the worker's threads parse nothing)."""
        return self._call(_prepare_in_child, blobs, spec, budget)

    def load_and_prepare(
        self, keys: list[str], spec: InputSpec, budget: PixelBudget
    ) -> PreparedJob:
        """One job read from the object store, checked, decoded and preprocessed in a
        child (the pool must have been given the settings)."""
        if self.settings is None:
            raise RuntimeError("this decode pool was not given the object store's settings")
        return self._call(_load_and_prepare_in_child, keys, spec, budget)

    def _call(self, work: Callable[..., Result], *args: object) -> Result:
        try:
            return self._children.run(work, *args)
        except ChildDied as exc:
            raise DecodeError(f"{exc} (memory limit {self.memory_limit_mb} MB)") from exc
        except (DecodeError, StorageError):  # the job's fault; the store's, to retry
            raise
        except Exception as exc:  # MemoryError sending a result back, among others
            raise DecodeError(
                f"decoding failed under the memory limit of {self.memory_limit_mb} MB: "
                f"{exc.__class__.__name__}: {str(exc)[:200]}"
            ) from exc

    def warm(self) -> None:
        """Start the children now, not in the first job: a job that takes longer than the
        broker's visibility timeout is delivered to a second worker as well."""
        self._children.warm()

    def close(self) -> None:
        self._children.close()
