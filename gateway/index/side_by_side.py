"""Requests made side by side: an S3 store's PUTs of an ingest group, GETs of a job's inputs.

Each S3 request mostly waits on the network, so a group's PUTs or a job's GETs one after
another took the sum of their round trips (a CT chest's inputs: 96 or more). A
:class:`SideBySide` runs one call's items on up to ``workers`` threads of its own and
returns their results in the items' order.

What it promises a caller that deletes what a failed call wrote: **when** :meth:`run`
**returns or raises, none of its items is still running or will run later.** After the
first failure the items not yet started are skipped; the exception is raised once every
item has ended or been skipped.

The threads are daemons (a process exiting does not wait for them: a daemon thread that
called :meth:`run`, as the SCP's and the worker's are, is not held by requests queued
behind a server that stopped answering), started on first use, and made anew in a process
forked after they started (its copy of the queue has none of them). They never end; a
process keeps one store, and so one set of them. An item's call that itself
runs items on the same threads (nested) runs them in turn, rather than waiting for threads
that are busy with its own callers.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

log = logging.getLogger(__name__)
_here = threading.local()  # ``inside``: this thread is one of some SideBySide's


class _Call(Generic[Item, Result]):
    """One :meth:`SideBySide.run`: its items' results, the first failure, what is left."""

    def __init__(self, call: Callable[[Item], Result], items: Sequence[Item]) -> None:
        self.call = call
        self.items = items
        self.results: list[Result | None] = [None] * len(items)
        self.error: BaseException | None = None
        self.left = len(items)  # items neither ended nor skipped
        self.changed = threading.Condition()

    def work(self, index: int) -> None:
        """Item ``index``, in one of the threads: skipped once another has failed."""
        with self.changed:
            skip = self.error is not None
        if not skip:
            try:
                # No local of it left in this frame: the caller holds the only reference
                # once the call has returned.
                self.results[index] = self.call(self.items[index])
            except BaseException as exc:
                with self.changed:
                    if self.error is None:
                        self.error = exc
        with self.changed:
            self.left -= 1
            self.changed.notify_all()

    def outcome(self) -> list[Result]:
        with self.changed:
            while self.left:
                self.changed.wait()
        # Nothing kept once the caller has them: not the items, not the results (an
        # exception's traceback would otherwise hold them through this object).
        results, error = self.results, self.error
        self.items, self.results, self.error = (), [], None
        if error is not None:
            raise error
        return results  # type: ignore[return-value]  # every item ended, none failed


class SideBySide:
    """Up to ``workers`` items of a call at once (``name``: the threads' names)."""

    def __init__(self, workers: int, name: str) -> None:
        self.workers = max(1, workers)
        self.name = name
        self._reset()
        _ALL.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[_Call[Any, Any], int]] = queue.SimpleQueue()
        self._threads = 0

    def run(self, call: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
        """``call`` of each item; the results in the items' order, or the first failure
        raised once no item is running (the items not started skipped)."""
        threads = 0 if getattr(_here, "inside", False) else self._start(len(items))
        if len(items) <= 1 or threads <= 1:
            return [call(item) for item in items]
        work: _Call[Item, Result] = _Call(call, items)
        for index in range(len(items)):
            self._queue.put((work, index))
        return work.outcome()

    def _start(self, wanted: int) -> int:
        """Threads started up to ``min(wanted, workers)``; how many there are. None are
        started for a single item; one that cannot be started leaves those there are."""
        wanted = min(wanted, self.workers)
        with self._lock:
            while wanted > 1 and self._threads < wanted:
                thread = threading.Thread(
                    target=self._serve, name=f"{self.name}-{self._threads}", daemon=True
                )
                try:
                    thread.start()
                except RuntimeError as exc:  # the process's thread limit, its memory ceiling
                    log.warning(
                        "fewer threads for requests side by side",
                        extra={"threads": self._threads, "error": str(exc)},
                    )
                    break
                self._threads += 1
            return self._threads

    def _serve(self) -> None:
        _here.inside = True
        while True:
            work, index = self._queue.get()
            work.work(index)
            # Not held while this thread waits for the next call: the last call's items
            # and results (a job's whole series) would stay alive until then.
            del work


_ALL: weakref.WeakSet[SideBySide] = weakref.WeakSet()


def _after_fork() -> None:
    for side_by_side in list(_ALL):
        side_by_side._reset()


os.register_at_fork(after_in_child=_after_fork)
