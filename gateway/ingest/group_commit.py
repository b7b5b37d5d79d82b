"""Group commit: instances that arrive together share one index transaction and one fsync.

Each C-STORE thread parses, validates and stages its instance (data fsynced) on its own, in
parallel with the others, and then queues it. The first thread that finds no leader leads:
it waits, at most the commit window, while other threads are still preparing an instance
(never when none is, so one association alone waits for nothing), takes the queue (at most
``max_group``), writes it with one call, and hands each member its result; if more queued
meanwhile, the first of them leads next. A member's thread returns only after the write
that holds it, so no C-STORE is answered before its instance is durable.

This module knows nothing of DICOM or the index: it orders threads. The write itself is
:func:`gateway.ingest.indexing.write_group`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

M = TypeVar("M")
R = TypeVar("R")

MAX_GROUP = 64


class GroupFailed(Exception):
    """The group's write raised something unexpected; every member gets this."""


@dataclass(eq=False)
class _Slot(Generic[M, R]):
    member: M
    result: R | None = None
    error: BaseException | None = None
    done: bool = False
    lead: bool = False


class Ticket(Generic[M, R]):
    """A thread preparing one member: the leader may wait for it while it holds a ticket."""

    def __init__(self, group: GroupCommit[M, R]) -> None:
        self._group = group
        self.submitted = False

    def submit(self, member: M) -> R:
        """Queue ``member`` and return its result once the write that holds it has ended."""
        if self.submitted:
            raise RuntimeError("a ticket submits one member")
        self.submitted = True
        return self._group._submit(member)


class GroupCommit(Generic[M, R]):
    """Members from many threads written together by ``write`` (one result per member, in
    order; it should not raise: an exception fails every member of that group)."""

    def __init__(
        self,
        write: Callable[[list[M]], Sequence[R]],
        window_s: float,
        max_group: int = MAX_GROUP,
    ) -> None:
        self._write = write
        self.window_s = max(0.0, window_s)
        self.max_group = max(1, max_group)
        self._cond = threading.Condition()
        self._queue: list[_Slot[M, R]] = []
        self._leading = False
        self._preparing = 0
        self.groups_written = 0  # for tests and the benchmark: members ÷ groups

    @property
    def queued(self) -> int:
        """Members submitted and waiting for a write (not those being written)."""
        with self._cond:
            return len(self._queue)

    @contextmanager
    def arriving(self) -> Iterator[Ticket[M, R]]:
        """Hold a ticket while preparing a member; submit through it (or not: a refusal)."""
        ticket: Ticket[M, R] = Ticket(self)
        with self._cond:
            self._preparing += 1
        try:
            yield ticket
        finally:
            if not ticket.submitted:
                with self._cond:
                    self._preparing -= 1
                    self._cond.notify_all()

    def _submit(self, member: M) -> R:
        slot: _Slot[M, R] = _Slot(member)
        with self._cond:
            self._preparing -= 1
            self._queue.append(slot)
            self._cond.notify_all()
            if self._leading:
                while not slot.done and not slot.lead:
                    self._cond.wait()
            else:
                self._leading = True
        if not slot.done:
            self._lead()
        if slot.error is not None:
            raise GroupFailed(f"group commit failed: {slot.error!r}") from slot.error
        return slot.result  # type: ignore[return-value]  # set with done, error absent

    def _lead(self) -> None:
        group: list[_Slot[M, R]] = []
        try:
            group = self._take()
            results = list(self._write([slot.member for slot in group]))
            if len(results) != len(group):
                raise RuntimeError(f"{len(results)} results for {len(group)} members")
            for slot, result in zip(group, results, strict=True):
                slot.result = result
        except BaseException as exc:
            for slot in group:
                slot.error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            with self._cond:
                for slot in group:
                    slot.done = True
                if self._queue:
                    self._queue[0].lead = True
                else:
                    self._leading = False
                self.groups_written += 1
                self._cond.notify_all()

    def _take(self) -> list[_Slot[M, R]]:
        deadline = time.monotonic() + self.window_s
        with self._cond:
            # Worth waiting only for members already on their way: a lone association's
            # next instance comes after this answer, so waiting for it would only delay both.
            while len(self._queue) < self.max_group and self._preparing > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            group = self._queue[: self.max_group]
            del self._queue[: self.max_group]
            return group
