"""The timed runs of one device: bare ``session.run`` back to back, decode ▸ preprocess
alone in the worker's process pool, and ``run_job`` over a phase's jobs, sequentially or
from a thread pool; their figures, the ratios and the stage overlap."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import select

from benchmarks.errors import BenchmarkError
from benchmarks.inference.gateway_parts import Bench
from benchmarks.measure import Phase, percentile, sig, timed, tree_cpu_seconds
from gateway.index.tables import JobRow
from gateway.inference.pipeline import InferenceContext, run_job
from gateway.inference.prepare import prepare_blobs
from models.manifest import DeviceManifest

STAGES = ("load", "decode", "preprocess", "infer", "postprocess")

Run = TypeVar("Run", "BareRun", "PipelineRun")


@dataclass
class BareRun:
    batch: int
    batches: int
    latencies_s: list[float]
    phase: Phase

    @property
    def images(self) -> int:
        return self.batch * self.batches

    @property
    def images_per_s(self) -> float:
        return self.images / self.phase.wall_s

    def as_dict(self) -> dict[str, Any]:
        latencies = sorted(self.latencies_s)
        return {
            "batch": self.batch,
            "batches": self.batches,
            "images_per_s": sig(self.images_per_s),
            "batch_ms_median": sig(1000 * statistics.median(latencies)),
            "batch_ms_p90": sig(1000 * latencies[int(0.9 * (len(latencies) - 1))]),
            "ms_per_image": sig(1000 * self.phase.wall_s / (self.batch * self.batches)),
            "cpu_ms_per_image": sig(1000 * self.phase.cpu_s / (self.batch * self.batches)),
            "wall_s": sig(self.phase.wall_s),
            "other_load_cores": sig(self.phase.other_load),
        }


def run_bare(
    session: Any,
    manifest: DeviceManifest,
    tensors: Sequence[np.ndarray],
    batch: int,
    min_images: int,
    min_seconds: float,
    runners: int = 1,
) -> BareRun:
    """``session.run`` on a ready batch, back to back, until both minimums are reached,
    from ``runners`` threads at once as the device's batcher runs it (on the CPU, runs side
    by side with one onnxruntime thread each: bare gets every core the pipeline gets)."""
    stacked = np.ascontiguousarray(
        np.stack([tensors[i % len(tensors)] for i in range(batch)]), dtype=np.float32
    )
    names = [output.name for output in session.get_outputs()]
    feed = {manifest.input.name: stacked}
    session.run(names, feed)  # the first run of a new shape allocates
    latencies: list[float] = []
    start = time.perf_counter()

    def loop() -> None:
        while (
            len(latencies) < 3
            or len(latencies) * batch < min_images
            or time.perf_counter() - start < min_seconds
        ):
            began = time.perf_counter()
            session.run(names, feed)
            latencies.append(time.perf_counter() - began)  # list.append: one at a time

    with timed() as phase:
        start = time.perf_counter()
        if runners == 1:
            loop()
        else:
            with ThreadPoolExecutor(runners, thread_name_prefix="bench-bare") as pool:
                list(pool.map(lambda _: loop(), range(runners)))
    return BareRun(batch, len(latencies), latencies, phase[0])


def _own_tree_cpu_s() -> float:
    """CPU seconds of this process and its children: the decode pool's, through its fork
    server."""
    return tree_cpu_seconds([os.getpid()])


def _other_load(phase: Phase, tree_cpu_s: float) -> float:
    """Cores the rest of the machine kept busy: :func:`timed` counts the decode children
    as the rest of the machine, which would make every pipeline phase look disturbed."""
    return max(0.0, phase.other_load - (tree_cpu_s - phase.cpu_s) / phase.wall_s)


@dataclass
class PrepareRun:
    """Load ▸ decode ▸ preprocess alone: every job's instances through the worker's process
    pool (one child per core), from twice as many threads as the pool has children."""

    processes: int
    jobs: int
    images: int
    phase: Phase
    tree_cpu_s: float  # this process and the pool's children

    @property
    def images_per_s(self) -> float:
        return self.images / self.phase.wall_s

    @property
    def cpu_s_per_image(self) -> float:
        return self.tree_cpu_s / self.images

    def as_dict(self) -> dict[str, Any]:
        return {
            "processes": self.processes,
            "jobs": self.jobs,
            "images": self.images,
            "images_per_s": sig(self.images_per_s),
            "cpu_ms_per_image_with_children": sig(1000 * self.cpu_s_per_image),
            "wall_s": sig(self.phase.wall_s),
            "other_load_cores": sig(_other_load(self.phase, self.tree_cpu_s)),
        }


def run_prepare(
    context: InferenceContext,
    manifest: DeviceManifest,
    jobs: Sequence[list[str]],
    images: int,
    min_seconds: float = 0.0,
) -> PrepareRun:
    """The pool's unit of work — load ▸ checks ▸ decode ▸ preprocess — for every job, as
    the pipeline runs it, with nothing before or after it; all the jobs again until
    ``min_seconds`` have passed (a phase shorter than a few clock ticks reads 0 s of CPU)."""
    decoder = context.decoder
    processes = decoder.processes if decoder is not None else 1

    def one(keys: list[str]) -> None:
        if decoder is not None and decoder.settings is not None:
            decoder.load_and_prepare(keys, manifest.input, context.budget)
        else:
            blobs = [context.store.get(key) for key in keys]
            prepare_blobs(blobs, manifest.input, context.budget)

    tree = _own_tree_cpu_s()
    # Twice the children: each child's next job is already queued when it hands one back
    # (one per child left each idle for every round trip: 1.1 of 2 cores busy).
    passes = 0
    with timed() as phase, ThreadPoolExecutor(2 * processes) as pool:
        started = time.perf_counter()
        while passes == 0 or time.perf_counter() - started < min_seconds:
            list(pool.map(one, jobs))
            passes += 1
    return PrepareRun(
        processes, passes * len(jobs), passes * images, phase[0], _own_tree_cpu_s() - tree
    )


@dataclass
class PipelineRun:
    threads: int
    jobs: int
    images: int
    job_latencies_s: list[float]
    timings_ms: list[dict[str, float]]
    phase: Phase
    batches: list[int]  # inputs per onnxruntime run the device's batcher formed
    tree_cpu_s: float  # this process and the pool's children
    ends_s: list[float] = field(default_factory=list)  # each job's end, from the phase's start

    @property
    def mean_batch(self) -> float:
        return statistics.fmean(self.batches) if self.batches else 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.phase.wall_s

    @property
    def steady_images_per_s(self) -> float | None:
        """Images/s between the ``threads``-th job's end and the ``threads``-th from last:
        the phase without its ramp-up (threads filling) and ramp-down (threads running
        out); None where too few jobs ran for that."""
        ends, ramp = sorted(self.ends_s), self.threads
        if len(ends) < 2 * ramp + 3 or ends[-ramp - 1] <= ends[ramp - 1]:
            return None
        jobs = len(ends) - 2 * ramp
        return jobs * (self.images / self.jobs) / (ends[-ramp - 1] - ends[ramp - 1])

    def stages_ms(self) -> dict[str, float]:
        """Mean per job of each stage, and ``bookkeeping``: the rest of the job's time."""
        means = {
            stage: statistics.fmean(t.get(stage, 0.0) for t in self.timings_ms) for stage in STAGES
        }
        total = statistics.fmean(1000 * s for s in self.job_latencies_s)
        means["bookkeeping"] = max(total - sum(means.values()), 0.01)
        return {name: sig(value) for name, value in means.items()}

    def as_dict(self) -> dict[str, Any]:
        stages = self.stages_ms()
        total = sum(stages.values())
        steady = self.steady_images_per_s
        return {
            "threads": self.threads,
            "jobs": self.jobs,
            "images": self.images,
            "images_per_s": sig(self.images_per_s),
            "steady_images_per_s": sig(steady) if steady is not None else None,
            "studies_per_s": sig(self.jobs / self.phase.wall_s),
            "job_ms_median": sig(1000 * statistics.median(self.job_latencies_s)),
            "job_ms_p95": sig(1000 * percentile(self.job_latencies_s, 0.95)),
            "ms_per_image": sig(1000 * self.phase.wall_s / self.images),
            "cpu_ms_per_image": sig(1000 * self.phase.cpu_s / self.images),
            "cpu_ms_per_image_with_children": sig(1000 * self.tree_cpu_s / self.images),
            "stages_ms_per_job": stages,
            "stage_share": {name: sig(value / total) for name, value in stages.items()},
            "batches": len(self.batches),
            "mean_batch": sig(self.mean_batch),
            "wall_s": sig(self.phase.wall_s),
            "other_load_cores": sig(_other_load(self.phase, self.tree_cpu_s)),
        }


def run_pipeline(
    bench: Bench,
    job_ids: Sequence[int],
    images: int,
    threads: int,
    context: InferenceContext | None = None,
    min_seconds: float = 0.0,
) -> PipelineRun:
    """``run_job`` for every job, one after another or from a pool of ``threads``. With
    ``min_seconds``, each thread takes the next job only while that much time has not yet
    passed (as :func:`run_bare` loops): the jobs left are never run, and the figures count
    the jobs that ran."""
    chosen = context or bench.context
    assert chosen.batcher is not None
    before = len(chosen.batcher.batch_sizes(bench.device.key))
    images_per_job = images / len(job_ids)
    pending = iter(job_ids)
    taking = threading.Lock()
    ran: list[tuple[int, float, float]] = []  # job id, latency, end; list.append: atomic
    start = time.perf_counter()

    def loop() -> None:
        while True:
            with taking:
                if min_seconds and ran and time.perf_counter() - start >= min_seconds:
                    return
                job_id = next(pending, None)
            if job_id is None:
                return
            began = time.perf_counter()
            run_job(chosen, job_id)
            ended = time.perf_counter()
            ran.append((job_id, ended - began, ended - start))

    tree = _own_tree_cpu_s()
    with timed() as phase:
        start = time.perf_counter()
        if threads == 1:
            loop()
        else:
            with ThreadPoolExecutor(threads, thread_name_prefix="bench-worker") as pool:
                list(pool.map(lambda _: loop(), range(threads)))
    tree_cpu_s = _own_tree_cpu_s() - tree
    ids = [job_id for job_id, _latency, _end in ran]
    with bench.parts.db.session() as session:
        rows = session.scalars(select(JobRow).where(JobRow.id.in_(ids))).all()
        failed = [f"job {r.id}: {r.state} {r.reason or ''}" for r in rows if r.state != "inferred"]
        timings = [dict(r.timings_ms) for r in rows]
    if failed:
        raise BenchmarkError(f"{bench.manifest.key}: {'; '.join(failed)}")
    batches = chosen.batcher.batch_sizes(bench.device.key)[before:]
    return PipelineRun(
        threads,
        len(ids),
        round(images_per_job * len(ids)),
        [latency for _id, latency, _end in ran],
        timings,
        phase[0],
        batches,
        tree_cpu_s,
        [end for _id, _latency, end in ran],
    )


def median_run(runs: Sequence[Run]) -> Run:
    """The round with the median throughput (the lower middle of an even count)."""
    ordered = sorted(runs, key=lambda run: run.images_per_s)
    return ordered[(len(ordered) - 1) // 2]


def stage_overlap(
    concurrent: PipelineRun, prepare: PrepareRun, same_batch: BareRun
) -> dict[str, Any]:
    """Pipeline throughput ÷ the slowest stage run alone on the same cores: decode ▸
    preprocess with every core (the process pool), or bare inference at the batch the
    batcher formed. 1 means the stages overlap perfectly and the slowest one sets the pace.

    With the CPU each stage costs per image alone: where the stages share the cores, the
    pipeline needs both stages' CPU for every image, so on the cores the slowest stage
    alone kept busy its overlap cannot pass that stage's CPU ÷ both stages' CPU
    (``ceiling_on_shared_cores``); what the pipeline spends beyond the two stages (starts,
    records, dispatch, postprocess) is ``pipeline_beyond_stages``."""
    bare_name = f"bare_inference_b{same_batch.batch}"
    alone = {"decode_preprocess": prepare.images_per_s, bare_name: same_batch.images_per_s}
    slowest = min(alone, key=lambda name: alone[name])
    decode_cpu = prepare.cpu_s_per_image
    infer_cpu = same_batch.phase.cpu_s / same_batch.images
    pipeline_cpu = concurrent.tree_cpu_s / concurrent.images
    slowest_cpu = decode_cpu if slowest == "decode_preprocess" else infer_cpu
    steady = concurrent.steady_images_per_s
    return {
        "value": sig(concurrent.images_per_s / alone[slowest]),
        "slowest_stage": slowest,
        "stages_alone_images_per_s": {name: sig(value) for name, value in alone.items()},
        "pipeline_images_per_s": sig(concurrent.images_per_s),
        # The same without the phase's ramp-up and ramp-down (PipelineRun.steady_images_per_s)
        "value_steady": sig(steady / alone[slowest]) if steady is not None else None,
        "cpu_ms_per_image": {
            "decode_preprocess": sig(1000 * decode_cpu),
            bare_name: sig(1000 * infer_cpu),
            "pipeline": sig(1000 * pipeline_cpu),
            "pipeline_beyond_stages": sig(max(1000 * (pipeline_cpu - decode_cpu - infer_cpu), 0)),
        },
        "ceiling_on_shared_cores": sig(min(slowest_cpu / (decode_cpu + infer_cpu), 1.0)),
        # Cores each kept busy (CPU ÷ wall): a stage alone that leaves cores idle is not
        # the ceiling it seems, and a pipeline that does is waiting, not computing.
        "cores_busy": {
            "decode_preprocess": sig(prepare.tree_cpu_s / prepare.phase.wall_s),
            bare_name: sig(same_batch.phase.cpu_s / same_batch.phase.wall_s),
            "pipeline": sig(concurrent.tree_cpu_s / concurrent.phase.wall_s),
        },
        "decode_preprocess_alone": prepare.as_dict(),
    }


def compare(
    sequential: PipelineRun, concurrent: PipelineRun, reference: BareRun, concurrency: int
) -> dict[str, Any]:
    """Pipeline figures and their ratios to the bare reference."""
    best = max(sequential, concurrent, key=lambda run: run.images_per_s)
    return {
        "pipeline": {"sequential": sequential.as_dict(), "concurrent": concurrent.as_dict()},
        "ratio": {
            "pipeline_vs_bare": sig(best.images_per_s / reference.images_per_s),
            "sequential_vs_bare": sig(sequential.images_per_s / reference.images_per_s),
            "concurrent_vs_bare": sig(concurrent.images_per_s / reference.images_per_s),
            "cpu_bare_vs_pipeline": sig(
                reference.phase.cpu_s
                / reference.images
                / (concurrent.phase.cpu_s / concurrent.images)
            ),
            "reference": f"bare at batch {reference.batch}; pipeline: the faster of ×1 and "
            f"×{concurrency}",
        },
    }
