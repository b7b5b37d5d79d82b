"""Objects read ahead for an answer that sends them in order (a WADO-RS retrieve).

From a local folder each object is streamed as its turn comes: nothing is gained by reading
ahead. From S3 every object costs a round trip before its first byte, so a 96-slice CT
series streamed one object after another waited for 96 of them. Here, where the store reads
side by side (``parallel_reads`` > 1), the next objects are fetched together — as many as it
reads at once, while that many of the largest of them fit the answer's budget
(:data:`READ_AHEAD_BYTES`) by the sizes the index recorded — and handed out one by one; an
object of unknown size, or larger than the budget, is streamed a chunk at a time as before.
Each is read only up to one byte past the largest recorded size, so an object longer than
the index says is streamed too.

What the answers of a process hold together is bounded as well (:data:`PROCESS_BYTES`, a
:class:`ByteBudget`): a batch is fetched only with bytes taken from it, given back as its
objects are handed out or the answer is dropped (a viewer that went away); an answer that
finds none left streams, as it would have, rather than wait.

Each object is opened only when its turn comes (as :func:`multipart_body` expects): where a
batch cannot be fetched whole, its objects are opened one by one, so an answer that a
missing object cuts short still ends just before that object, as it did.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

from gateway.index.object_store import READ_CHUNK, ObjectStore

# What one answer may hold of objects fetched ahead: 8 CT slices of 512 KiB, or 4 chest
# radiographs of 8 MB; a mammogram of tens of MiB is streamed instead.
READ_AHEAD_BYTES = 32 * 1024 * 1024
# What all of a process's answers may hold together (the API serves up to 40 at once).
PROCESS_BYTES = 256 * 1024 * 1024


class ByteBudget:
    """Bytes that the answers of a process may hold together, taken and given back."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._left = total
        self._lock = threading.Lock()

    def left(self) -> int:
        with self._lock:
            return self._left

    def take(self, count: int) -> bool:
        """Whether ``count`` bytes were taken (all of them, or none)."""
        with self._lock:
            if count > self._left:
                return False
            self._left -= count
            return True

    def give(self, count: int) -> None:
        with self._lock:
            self._left = min(self.total, self._left + count)


_PROCESS = ByteBudget(PROCESS_BYTES)


def _give_back(shared: ByteBudget, fetched: dict[int, tuple[bytes, int]]) -> None:
    """What an answer dropped before its end still held (a finalizer: no reference to it)."""
    shared.give(sum(taken for _data, taken in fetched.values()))
    fetched.clear()


@dataclass(frozen=True)
class Wanted:
    """One object of the answer: its key, and its size as the index recorded it (None:
    not recorded)."""

    key: str
    size: int | None


class ReadAhead:
    """The answer's objects in order, each a callable that opens it (for
    :func:`gateway.dicomweb.multipart.multipart_body`)."""

    def __init__(
        self,
        store: ObjectStore,
        objects: Sequence[Wanted],
        budget: int = READ_AHEAD_BYTES,
        chunk: int = READ_CHUNK,
        shared: ByteBudget = _PROCESS,
    ) -> None:
        self.store = store
        self.objects = objects
        self.budget = budget
        self.chunk = chunk
        self.shared = shared
        # index → (bytes, what was taken from the shared budget for them), dropped as
        # handed out; given back if the answer is dropped first.
        self._fetched: dict[int, tuple[bytes, int]] = {}
        self._decided_until = 0  # objects before it were fetched with their batch, or not
        weakref.finalize(self, _give_back, shared, self._fetched)

    def __iter__(self) -> Iterator[Callable[[], Iterable[bytes]]]:
        return (partial(self.open, index) for index in range(len(self.objects)))

    def open(self, index: int) -> Iterable[bytes]:
        """Object ``index``'s bytes; :class:`StorageError` when it cannot be read."""
        if index >= self._decided_until:
            self._fetch_from(index)
        found = self._fetched.pop(index, None)
        if found is None:
            return self.store.read_chunks(self.objects[index].key, self.chunk)
        data, taken = found
        self.shared.give(taken)
        return (data,)

    def _fetch_from(self, start: int) -> None:
        end, largest = self._batch(start, min(self.budget, self.shared.left()))
        each = largest + 1  # what one object of the batch may hold (read no further)
        if end - start < 2 or not self.shared.take(each * (end - start)):
            return  # one object, or no bytes left to hold more: streamed in its turn
        keys = [wanted.key for wanted in self.objects[start:end]]
        self._decided_until = end  # what is not fetched now is streamed in its turn
        try:
            # One byte past the largest recorded size: an object longer than the index says
            # (a result written again under its key) comes back cut, and is streamed.
            heads = self.store.get_heads(keys, each)
        except Exception:
            # Which one failed, and why, is for its own open to say: opening them one by
            # one ends the answer just before that object, not at the batch's first.
            self.shared.give(each * (end - start))
            return
        for index, head in zip(range(start, end), heads, strict=True):
            if len(head) <= largest:  # the whole object
                self._fetched[index] = (head, each)
            else:
                self.shared.give(each)

    def _batch(self, start: int, budget: int) -> tuple[int, int]:
        """The batch starting at ``start`` (its end, its largest recorded size): objects of
        known size while as many of the largest of them fit ``budget``."""
        most = self.store.parallel_reads
        end, largest = start, 0
        if most < 2:
            return end, largest
        for wanted in self.objects[start : start + most]:
            if wanted.size is None:
                break
            grown = max(largest, wanted.size)
            if (grown + 1) * (end - start + 1) > budget:
                break
            end, largest = end + 1, grown
        return end, largest
