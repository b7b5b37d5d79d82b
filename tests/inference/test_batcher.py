"""The per-device batcher: batches form across jobs, a batch that is not full still runs
after its wait (and at once when no other job is on the way), urgent jobs go first, each
job gets its own outputs back, a job the model refuses fails alone, and the queue holds
what its bound allows."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from gateway.inference.batcher import BatchLimits, DeviceBatcher, Outputs
from models.runtime import SessionCache
from tests.onnx_models import classifier_with_heatmap

RESULT_S = 60  # how long a test waits for an answer that should come at once


class Model:
    """A stand-in for a session: records every batch it runs, can be held, and refuses
    any input holding a negative value."""

    def __init__(self) -> None:
        self.batches: list[list[float]] = []
        self.running = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, batch: np.ndarray) -> Outputs:
        self.running.set()
        self.release.wait(RESULT_S)
        marks = [float(item.flat[0]) for item in batch]
        self.batches.append(marks)
        if min(marks) < 0:
            raise ValueError("the model refuses this input")
        return {"score": batch.reshape(len(batch), -1).sum(axis=1), "echo": batch * 2}


def job(mark: float, images: int = 1, size: int = 4) -> np.ndarray:
    return np.full((images, 1, size, size), mark, dtype=np.float32)


@pytest.fixture
def model() -> Model:
    return Model()


@pytest.fixture
def make() -> Iterator[list[DeviceBatcher]]:
    made: list[DeviceBatcher] = []
    yield made
    for batcher in made:
        batcher.close()


class Device:
    """A batcher and the model it runs, submitting as the pipeline does."""

    def __init__(self, model: Model, limits: BatchLimits) -> None:
        self.model = model
        self.batcher = DeviceBatcher("device@1", limits)

    def submit(self, inputs: np.ndarray, priority: int = 0, expected: bool = False) -> Any:
        return self.batcher.submit(inputs, self.model, priority, expected)

    def announce(self, jobs: int) -> None:
        for _ in range(jobs):
            self.batcher.expect()


def start(made: list[DeviceBatcher], model: Model, **limits: float) -> Device:
    device = Device(model, BatchLimits(**limits))  # type: ignore[arg-type]
    made.append(device.batcher)
    return device


def test_jobs_waiting_together_share_one_batch_and_each_gets_its_own_rows(
    model: Model, make: list[DeviceBatcher]
) -> None:
    # The wait is an hour and three jobs are on the way: only a full batch can start it.
    batcher = start(make, model, max_batch=4, max_wait_s=3600)
    batcher.announce(3)
    futures = [
        batcher.submit(job(1), expected=True),
        batcher.submit(job(2, images=2), expected=True),
        batcher.submit(job(3), expected=True),
    ]
    outputs = [future.result(RESULT_S) for future in futures]
    assert model.batches == [[1.0, 2.0, 2.0, 3.0]]
    assert [list(o["score"]) for o in outputs] == [[16.0], [32.0, 32.0], [48.0]]
    assert outputs[1]["echo"].shape == (2, 1, 4, 4) and (outputs[1]["echo"] == 4).all()


def test_a_batch_that_is_not_full_runs_when_its_wait_is_over(
    model: Model, make: list[DeviceBatcher]
) -> None:
    batcher = start(make, model, max_batch=16, max_wait_s=0.02)
    batcher.announce(2)  # the second never comes within the wait
    outputs = batcher.submit(job(5), expected=True).result(RESULT_S)
    assert list(outputs["score"]) == [80.0] and model.batches == [[5.0]]


def test_a_lone_job_does_not_wait_for_company_that_is_not_coming(
    model: Model, make: list[DeviceBatcher]
) -> None:
    batcher = start(make, model, max_batch=16, max_wait_s=3600)
    outputs = batcher.submit(job(6)).result(RESULT_S)  # nothing announced: runs at once
    assert list(outputs["score"]) == [96.0]


def test_a_job_announced_and_withdrawn_lets_the_batch_go(
    model: Model, make: list[DeviceBatcher]
) -> None:
    batcher = start(make, model, max_batch=16, max_wait_s=3600)
    batcher.announce(2)
    waiting = batcher.submit(job(7), expected=True)  # waits for the other announced job
    batcher.batcher.cancel()  # whose decode failed
    assert list(waiting.result(RESULT_S)["score"]) == [112.0]


def test_urgent_jobs_go_first_and_equal_priorities_keep_their_order(
    model: Model, make: list[DeviceBatcher]
) -> None:
    batcher = start(make, model, max_batch=2, max_wait_s=0)
    model.release.clear()
    first = batcher.submit(job(0))
    assert model.running.wait(RESULT_S)  # the batcher is busy with the first job
    routine = [batcher.submit(job(mark), priority=3) for mark in (1, 2)]
    urgent = [batcher.submit(job(mark), priority=9) for mark in (7, 8)]
    model.release.set()
    for future in [first, *routine, *urgent]:
        future.result(RESULT_S)
    assert model.batches == [[0.0], [7.0, 8.0], [1.0, 2.0]]


def test_a_job_the_model_refuses_fails_alone_and_its_batch_mates_get_their_outputs(
    model: Model, make: list[DeviceBatcher]
) -> None:
    batcher = start(make, model, max_batch=3, max_wait_s=3600)
    batcher.announce(3)
    good, bad, other = (batcher.submit(job(mark), expected=True) for mark in (1, -1, 2))
    with pytest.raises(ValueError, match="refuses"):
        bad.result(RESULT_S)
    assert list(good.result(RESULT_S)["score"]) == [16.0]
    assert list(other.result(RESULT_S)["score"]) == [32.0]
    assert model.batches[0] == [1.0, -1.0, 2.0]  # tried together first, then one by one
    assert sorted(model.batches[1:]) == [[-1.0], [1.0], [2.0]]


def test_inputs_of_different_shapes_never_share_a_batch(
    model: Model, make: list[DeviceBatcher]
) -> None:
    batcher = start(make, model, max_batch=4, max_wait_s=0)
    model.release.clear()
    first = batcher.submit(job(0))
    assert model.running.wait(RESULT_S)
    small, large, small_again = (
        batcher.submit(job(1)),
        batcher.submit(job(2, size=8)),
        batcher.submit(job(3)),
    )
    model.release.set()
    for future in (first, small, large, small_again):
        future.result(RESULT_S)
    assert model.batches == [[0.0], [1.0, 3.0], [2.0]]


def test_a_full_queue_holds_the_next_job_back_until_a_batch_leaves(
    model: Model, make: list[DeviceBatcher]
) -> None:
    batcher = start(make, model, max_batch=2, max_wait_s=0, max_queued=2)
    model.release.clear()
    first = batcher.submit(job(0))
    assert model.running.wait(RESULT_S)
    queued = [batcher.submit(job(1)), batcher.submit(job(2))]  # the queue is full now
    entered = threading.Event()
    later: list[object] = []

    def submit_one_more() -> None:
        later.append(batcher.submit(job(3)))
        entered.set()

    thread = threading.Thread(target=submit_one_more)
    thread.start()
    assert not entered.is_set()  # it cannot enter before anything left the queue
    model.release.set()
    thread.join(RESULT_S)
    assert entered.is_set()
    for future in [first, *queued]:
        future.result(RESULT_S)


def test_a_real_session_batched_across_jobs_gives_each_job_what_it_gets_alone(
    make: list[DeviceBatcher],
) -> None:
    sessions = SessionCache(["CPUExecutionProvider"])
    session = sessions.session("cxr@1", lambda: classifier_with_heatmap(32))

    def run(batch: np.ndarray) -> Outputs:
        return sessions.run(session, "image", batch, 16)

    batcher = DeviceBatcher("cxr@1", BatchLimits(max_batch=8, max_wait_s=3600))
    make.append(batcher)
    rng = np.random.default_rng(13)
    jobs = [rng.random((n, 1, 32, 32), dtype=np.float32) for n in (1, 4, 2, 1)]
    for _ in jobs:
        batcher.expect()
    futures = [batcher.submit(j, run, expected=True) for j in jobs]
    batched = [future.result(RESULT_S) for future in futures]
    assert batcher.batches == [8]
    for inputs, outputs in zip(jobs, batched, strict=True):
        alone = run(inputs)
        for name in ("probability", "heatmap"):
            np.testing.assert_allclose(outputs[name], alone[name], rtol=1e-5, atol=1e-6)


def test_runners_run_batches_of_one_device_side_by_side(make: list[DeviceBatcher]) -> None:
    # Two runners: while the first batch is held in the model, the second job's batch
    # starts beside it (one runner would hold it until the first ended).
    both_running = threading.Barrier(2, timeout=RESULT_S)
    seen: list[float] = []

    def model(batch: np.ndarray) -> Outputs:
        both_running.wait()  # breaks (and the job fails) unless both run at once
        seen.append(float(batch.flat[0]))
        return {"score": batch.reshape(len(batch), -1).sum(axis=1)}

    batcher = DeviceBatcher("device@1", BatchLimits(max_batch=1, max_wait_s=0, runners=2))
    make.append(batcher)
    futures = [batcher.submit(job(mark), model) for mark in (1, 2)]
    assert [list(f.result(RESULT_S)["score"]) for f in futures] == [[16.0], [32.0]]
    assert sorted(seen) == [1.0, 2.0] and batcher.batches == [1, 1]


def test_the_worker_runs_cpu_inference_on_one_thread_per_run_side_by_side() -> None:
    from gateway.settings import Settings
    from workers.worker import cpu_runs

    settings = Settings.model_construct(inference_intra_op_threads=1, decode_processes=4)
    assert cpu_runs(settings, on_gpu=False) == (1, 4)
    assert cpu_runs(settings, on_gpu=True) == (0, 1)  # a GPU: one batch at a time
    spread = Settings.model_construct(inference_intra_op_threads=0, decode_processes=4)
    assert cpu_runs(spread, on_gpu=False) == (0, 1)  # onnxruntime's default: one run
