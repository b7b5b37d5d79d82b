"""Objects read ahead for an answer that sends them in order (a WADO-RS retrieve).

From a local folder each object is streamed as its turn comes: nothing is gained by reading
ahead. From S3 every object costs a round trip before its first byte, so a 96-slice CT
series streamed one object after another waited for 96 of them. Here, where the store reads
side by side (``parallel_reads`` > 1), the next objects are fetched together — as many as it
reads at once, while that many of the largest of them fit :data:`READ_AHEAD_BYTES` by the
sizes the index recorded — and handed out one by one; an object of unknown size, or larger
than the budget, is streamed a chunk at a time as before. Each is read only up to one byte
past the largest recorded size, so an object longer than the index says is streamed too,
and an answer holds at most the budget (and the object being sent).

Each object is opened only when its turn comes (as :func:`multipart_body` expects): where a
batch cannot be fetched whole, its objects are opened one by one, so an answer that a
missing object cuts short still ends just before that object, as it did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

from gateway.index.object_store import READ_CHUNK, ObjectStore

# What one answer may hold of objects fetched ahead: 8 CT slices of 512 KiB, or 4 chest
# radiographs of 8 MB; a mammogram of tens of MiB is streamed instead.
READ_AHEAD_BYTES = 32 * 1024 * 1024


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
    ) -> None:
        self.store = store
        self.objects = objects
        self.budget = budget
        self.chunk = chunk
        self._fetched: dict[int, bytes] = {}  # index → bytes, dropped as handed out
        self._decided_until = 0  # objects before it were fetched with their batch, or not

    def __iter__(self) -> Iterator[Callable[[], Iterable[bytes]]]:
        return (partial(self.open, index) for index in range(len(self.objects)))

    def open(self, index: int) -> Iterable[bytes]:
        """Object ``index``'s bytes; :class:`StorageError` when it cannot be read."""
        if index >= self._decided_until:
            self._fetch_from(index)
        data = self._fetched.pop(index, None)
        if data is None:
            return self.store.read_chunks(self.objects[index].key, self.chunk)
        return (data,)

    def _fetch_from(self, start: int) -> None:
        end, largest = self._batch(start)
        if end - start < 2:
            return  # one object: streamed, as without reading ahead
        keys = [wanted.key for wanted in self.objects[start:end]]
        self._decided_until = end  # what is not fetched now is streamed in its turn
        try:
            # One byte past the largest recorded size: an object longer than the index says
            # (a result written again under its key) comes back cut, and is streamed.
            heads = self.store.get_heads(keys, largest + 1)
        except Exception:
            # Which one failed, and why, is for its own open to say: opening them one by
            # one ends the answer just before that object, not at the batch's first.
            return
        for index, head in zip(range(start, end), heads, strict=True):
            if len(head) <= largest:  # the whole object
                self._fetched[index] = head

    def _batch(self, start: int) -> tuple[int, int]:
        """The batch starting at ``start`` (its end, its largest recorded size): objects of
        known size while as many of the largest of them fit the budget."""
        most = self.store.parallel_reads
        end, largest = start, 0
        if most < 2:
            return end, largest
        for wanted in self.objects[start : start + most]:
            if wanted.size is None:
                break
            grown = max(largest, wanted.size)
            if grown * (end - start + 1) > self.budget:
                break
            end, largest = end + 1, grown
        return end, largest
