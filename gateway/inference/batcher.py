"""Dynamic batching across jobs: one onnxruntime session per device per process, fed by
every job the process runs at once (Triton's dynamic batcher is the model).

A job's prepared inputs (N × C × …, N images or one volume) are a *request* in its device's
queue. One thread per device takes requests in order of priority (urgent studies first),
then arrival, until the batch holds ``max_batch`` inputs or the oldest waiting request has
waited ``max_wait_s``, runs them as one batch, and hands each job back its own rows of every
output. Unlike Triton's batcher, this one knows what is on the way: a job announces itself
when it starts decoding (:meth:`Batcher.arrival`), and a batch waits only while some job of
its device is still decoding — a lone job never waits for company that is not coming.

Why a thread per device rather than a lock: onnxruntime runs one batch with all the cores it
has; the threads that submit are free to wait while their neighbours' jobs
decode in the process pool. On the CPU a device may have ``runners`` such threads, each
running its own batch at once with fewer onnxruntime threads per run
(``inference_intra_op_threads``; unset, one runner on every core), for throughput where many
cores would be spread thin over one small model.

Only inputs of one shape share a batch (a 3D device's volumes rarely do); a request of
another shape waits for the next. When a batch fails, each of its requests is run alone,
so a job whose input the model refuses fails by itself and its batch-mates go on. The queue
holds at most ``max_queued`` inputs per device: a job that would pass that waits to enter
(memory is bounded by the queue, not by how fast jobs arrive).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
_KEPT_BATCH_SIZES = 65536
RunBatch = Callable[[np.ndarray], Outputs]


@dataclass(order=True)
class _Request:
    rank: tuple[int, int]  # (-priority, arrival): the heap's order
    inputs: np.ndarray = field(compare=False)
    future: Future[Outputs] = field(compare=False)
    arrived: float = field(compare=False)
    run: RunBatch = field(compare=False)  # the device's session (one per device key)

    @property
    def size(self) -> int:
        return len(self.inputs)


@dataclass(frozen=True)
class BatchLimits:
    """``max_batch`` inputs per run, ``max_wait_s`` for a batch to fill, ``max_queued``
    inputs waiting per device, ``runners`` batches of a device run at once."""

    max_batch: int = 16
    max_wait_s: float = 0.005
    max_queued: int = 64
    runners: int = 1


class DeviceBatcher:
    """The queue and the batching thread of one device's session."""

    def __init__(self, name: str, limits: BatchLimits) -> None:
        self.name, self.limits = name, limits
        self._heap: list[_Request] = []
        self._queued = 0
        self._coming = 0  # jobs announced and not yet submitted
        self._arrivals = itertools.count()
        self._changed = threading.Condition()
        self._closed = False
        self.batches: list[int] = []  # inputs per batch run, for tests and the benchmark
        self._threads = [
            threading.Thread(target=self._loop, name=f"batcher-{name}-{n}", daemon=True)
            for n in range(max(1, limits.runners))
        ]
        for thread in self._threads:
            thread.start()

    def expect(self) -> None:
        """A job of this device started decoding: batches may wait for it."""
        with self._changed:
            self._coming += 1

    def cancel(self) -> None:
        """An announced job will not come (it failed before inference)."""
        with self._changed:
            self._coming -= 1
            self._changed.notify_all()

    def submit(
        self, inputs: np.ndarray, run: RunBatch, priority: int = 0, expected: bool = False
    ) -> Future[Outputs]:
        """Queue one job's inputs; the future holds that job's outputs, in input order.
        ``expected``: the job announced itself with :meth:`expect`. Blocks while the queue
        is full (unless it is empty: a job larger than the bound still runs, alone)."""
        future: Future[Outputs] = Future()
        with self._changed:
            if expected:
                self._coming -= 1
            while self._queued and self._queued + len(inputs) > self.limits.max_queued:
                if self._closed:
                    break
                self._changed.wait()
            if self._closed:
                raise RuntimeError(f"the batcher of {self.name} is closed")
            rank = (-priority, next(self._arrivals))
            request = _Request(rank, inputs, future, time.monotonic(), run)
            heapq.heappush(self._heap, request)
            self._queued += len(inputs)
            self._changed.notify_all()
        return future

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._execute(batch)

    def _next_batch(self) -> list[_Request] | None:
        """Wait until a batch is due — full, its oldest request has waited long enough, or
        no other job of the device is on the way — then take it off the queue."""
        with self._changed:
            while True:
                if not self._heap:
                    if self._closed:
                        return None
                    self._changed.wait()
                    continue
                oldest = min(request.arrived for request in self._heap)
                left = oldest + self.limits.max_wait_s - time.monotonic()
                full = self._queued >= self.limits.max_batch
                if full or left <= 0 or self._closed or self._coming <= 0:
                    batch = self._take()
                    self._changed.notify_all()  # room in the queue for waiting submitters
                    return batch
                self._changed.wait(timeout=left)

    def _take(self) -> list[_Request]:
        """The most urgent requests, in arrival order within a priority, of the first one's
        input shape, up to ``max_batch`` inputs (at least one request)."""
        taken: list[_Request] = []
        passed: list[_Request] = []
        total = 0
        while self._heap:
            request = heapq.heappop(self._heap)
            fits = total + request.size <= self.limits.max_batch
            same_shape = not taken or request.inputs.shape[1:] == taken[0].inputs.shape[1:]
            if taken and not (fits and same_shape):
                passed.append(request)
                if not fits:
                    break  # the next in order waits for the next batch: no overtaking by size
                continue
            taken.append(request)
            total += request.size
        for request in passed:
            heapq.heappush(self._heap, request)
        self._queued -= total
        return taken

    def _execute(self, batch: list[_Request]) -> None:
        with self._changed:  # runners append side by side
            self.batches.append(sum(request.size for request in batch))
            if len(self.batches) > _KEPT_BATCH_SIZES:  # a worker runs for months: the recent
                del self.batches[: _KEPT_BATCH_SIZES // 2]
        if len(batch) == 1:
            self._run_alone(batch[0])
            return
        try:
            outputs = batch[0].run(np.concatenate([request.inputs for request in batch]))
            parts = _scatter(outputs, [request.size for request in batch])
        except Exception as exc:
            log.warning(
                "a batch failed; its jobs run one by one",
                extra={"device": self.name, "jobs": len(batch), "error": str(exc)[:200]},
            )
            for request in batch:
                self._run_alone(request)
            return
        for request, part in zip(batch, parts, strict=True):
            request.future.set_result(part)

    def _run_alone(self, request: _Request) -> None:
        try:
            outputs = request.run(request.inputs)
        except Exception as exc:
            request.future.set_exception(exc)
        else:
            request.future.set_result(outputs)


def _scatter(outputs: Outputs, sizes: list[int]) -> list[Outputs]:
    """Each request's rows of every output (outputs are batch-first, as the runtime's)."""
    total = sum(sizes)
    for name, value in outputs.items():
        if len(value) != total:
            raise ValueError(f"output {name} has {len(value)} rows for {total} inputs")
    bounds = np.cumsum([0, *sizes])
    return [
        {name: value[start:end] for name, value in outputs.items()}
        for start, end in itertools.pairwise(bounds.tolist())
    ]


class Arrival:
    """One job on its way to its device's batcher: announced on entry, submitted once, and
    withdrawn on exit if it never was (its decode failed)."""

    def __init__(self, batcher: DeviceBatcher) -> None:
        self.batcher = batcher
        self.submitted = False

    def infer(self, inputs: np.ndarray, run: RunBatch, priority: int = 0) -> Outputs:
        self.submitted = True
        return self.batcher.submit(inputs, run, priority, expected=True).result()


class Batcher:
    """One :class:`DeviceBatcher` per device (its key names the version) in this process,
    started on the device's first job."""

    def __init__(self, limits: BatchLimits) -> None:
        self.limits = limits
        self._devices: dict[str, DeviceBatcher] = {}
        self._lock = threading.Lock()

    def device(self, key: str) -> DeviceBatcher:
        with self._lock:
            batcher = self._devices.get(key)
            if batcher is None:
                batcher = self._devices[key] = DeviceBatcher(key, self.limits)
            return batcher

    @contextmanager
    def arrival(self, key: str) -> Iterator[Arrival]:
        """Announce a job to its device's batcher for as long as the block runs (its
        decode); :meth:`Arrival.infer` inside the block runs it in a batch."""
        batcher = self.device(key)
        batcher.expect()
        arrival = Arrival(batcher)
        try:
            yield arrival
        finally:
            if not arrival.submitted:
                batcher.cancel()

    def batch_sizes(self, key: str) -> list[int]:
        """Inputs per batch the device has run so far in this process (the benchmark's)."""
        with self._lock:
            batcher = self._devices.get(key)
        return list(batcher.batches) if batcher is not None else []

    def close(self) -> None:
        with self._lock:
            devices, self._devices = list(self._devices.values()), {}
        for batcher in devices:
            batcher.close()
