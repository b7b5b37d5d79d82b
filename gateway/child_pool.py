"""Child processes for the worker's CPU-heavy stages, forked from one fork server.

Decode ▸ preprocess (:mod:`gateway.inference.decode_pool`) and the results' objects
(:mod:`gateway.results.build_pool`) run in children so that they use every core without the
worker's GIL: in ``aigw serve`` that process also receives studies, assembles them and runs
inference. Each stage has its own :class:`ChildPool`; all of them fork from one fork server
(the process's), started once with what the children import already imported.

A child that dies (killed, a crashed codec, a memory ceiling met outside Python) breaks only
its pool, which is replaced: :meth:`ChildPool.run` raises :class:`ChildDied` and the caller
says what that means for its job. A child reads and writes the object store itself
(:func:`child_store`), so the images never cross a pipe. The fork server and the children
end with the process that started them: at its exit (:func:`stop_fork_server`) and when it
is killed (:func:`_end_with_parent`).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import resource
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from gateway.index.object_store import ObjectStore, create_store
from gateway.settings import Settings
from models.preprocess import MONAI_MODULES

log = logging.getLogger(__name__)

Result = TypeVar("Result")

# What every child needs, imported once in the fork server: ~3 s once instead of in every
# child (a fresh interpreter's imports) and again in every child of a replaced pool.
_PRELOAD = ["gateway.inference.decode_pool", "gateway.results.build_pool"]


class ChildDied(Exception):
    """A child of the pool died while it ran the work; the pool has been replaced."""


def forkserver_context() -> multiprocessing.context.BaseContext:
    """Not fork: the worker is multi-threaded (Celery, SCP, HTTP). The fork server is the
    process's, shared by every pool: the preload list is the same whichever starts it.
    MONAI's transforms too (3D preprocessing): imported in each child on its first volume,
    they cost that job ~1.5 s of CPU per child."""
    context = multiprocessing.get_context("forkserver")
    preload = list(_PRELOAD)
    if importlib.util.find_spec("torch") is not None:  # preprocessing's resize
        preload.append("torch")
        if importlib.util.find_spec("monai") is not None:
            preload += MONAI_MODULES
    context.set_forkserver_preload(preload)
    _stop_fork_server_at_exit()
    return context


@functools.cache  # once per process
def _stop_fork_server_at_exit() -> None:
    atexit.register(stop_fork_server)


def stop_fork_server() -> None:
    """End this process's fork server, if it started one, and reap it.

    Left to itself, the fork server notices only after this process has exited that it is
    gone, and then finalizes an interpreter that holds torch and MONAI: ~1 s of CPU, an
    orphan still running after ``aigw serve`` or ``aigw worker`` has stopped (on 2 cores it
    took 0.8 s of the next program's CT ingest). It holds nothing to save — the pools'
    children are ended by their ``close`` — so it is killed. ``multiprocessing`` has no
    public way to stop it; its pid is read from the module's one ``ForkServer`` and a
    change there leaves the old behaviour, not an error.
    """
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    if not isinstance(pid, int):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def picklable(settings: Settings) -> Settings:
    """The settings as the base class, which pickles (``load_settings`` makes a subclass of
    its own for the YAML source, which does not): what a child is started with."""
    return Settings.model_construct(
        **{name: getattr(settings, name) for name in Settings.model_fields}
    )


_stores: dict[str, ObjectStore] = {}  # in a child: its object store, once made


def child_store(settings: Settings) -> ObjectStore:
    """This child's object store, made in its first job rather than as it starts: a store
    that cannot be made (its folder not writable yet) fails that job with
    :class:`~gateway.errors.StorageError`, which the task retries, where failing the
    pool's initializer would break every start of the pool."""
    store = _stores.get("store")
    if store is None:
        store = _stores["store"] = create_store(settings)
    return store


def limit_memory(limit_bytes: int) -> None:
    """The ceiling on what this child's address space may grow by from now on
    (``RLIMIT_AS``); 0: none. It counts from here: torch maps ~1 GB of address space on
    import, which is not the work's."""
    if limit_bytes <= 0:
        return
    grown_to = _address_space_bytes() + limit_bytes
    resource.setrlimit(resource.RLIMIT_AS, (grown_to, grown_to))


def _address_space_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _ready() -> bool:
    return True


def _start_child(initializer: Callable[..., None], initargs: tuple[object, ...]) -> None:
    """A child's start: it ends with the process that started the pool, then its own
    initializer runs."""
    threading.Thread(target=_end_with_parent, name="end-with-parent", daemon=True).start()
    initializer(*initargs)


def _end_with_parent() -> None:
    """Wait for the process that started this child to end, then end at once.

    A child of the fork server does not end on its own when that process is killed (``kill
    -9`` of ``aigw serve``): it waits for work on a queue whose other end it holds itself,
    and holds the fork server's "alive" pipe, so neither ever sees the end of the other —
    each kept torch in memory for good. The parent's end of the child's data pipe closes
    only when the parent is gone (``multiprocessing``'s sentinel for this, which
    ``parent_process().join`` waits on); the children ended, the fork server sees its
    pipe's end and stops too.
    """
    parent = multiprocessing.parent_process()
    if parent is None:  # not a child of multiprocessing: nothing to wait for
        return
    parent.join()
    os._exit(1)


class ChildPool:
    """``processes`` children, each started by ``initializer(*initargs)``; started on first
    use (or :meth:`warm`), replaced when a child dies. Thread-safe."""

    def __init__(
        self,
        name: str,
        processes: int,
        initializer: Callable[..., None],
        initargs: tuple[object, ...],
    ) -> None:
        self.name = name
        self.processes = processes
        self._initializer = initializer
        self._initargs = initargs
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None

    def run(self, work: Callable[..., Result], *args: object) -> Result:
        """``work(*args)`` in a child; its exceptions are raised here as they were there."""
        executor = self._current()
        try:
            return executor.submit(work, *args).result()
        except BrokenProcessPool as exc:
            self._replace(executor)
            raise ChildDied(f"the {self.name} process died: {exc}") from exc

    def warm(self) -> None:
        """Start the children now, not in the first job."""
        executor = self._current()
        for _ in range(self.processes):
            executor.submit(_ready)

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
                    mp_context=forkserver_context(),
                    initializer=_start_child,
                    initargs=(self._initializer, self._initargs),
                )
            return self._executor

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is broken:
                log.warning("a child process died; pool replaced", extra={"pool": self.name})
                broken.shutdown(wait=False, cancel_futures=True)
                self._executor = None
