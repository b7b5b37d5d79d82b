"""The timed runs of one device: bare ``session.run`` back to back, and ``run_job`` over a
phase's jobs, sequentially or from a thread pool; their figures and ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import select

from benchmarks.errors import BenchmarkError
from benchmarks.inference.gateway_parts import Bench
from benchmarks.measure import Phase, percentile, sig, timed
from gateway.index.tables import JobRow
from gateway.inference.pipeline import InferenceContext, run_job
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
) -> BareRun:
    """``session.run`` on a ready batch, back to back, until both minimums are reached."""
    stacked = np.ascontiguousarray(
        np.stack([tensors[i % len(tensors)] for i in range(batch)]), dtype=np.float32
    )
    names = [output.name for output in session.get_outputs()]
    feed = {manifest.input.name: stacked}
    session.run(names, feed)  # the first run of a new shape allocates
    latencies: list[float] = []
    with timed() as phase:
        start = time.perf_counter()
        while (
            len(latencies) < 3
            or len(latencies) * batch < min_images
            or time.perf_counter() - start < min_seconds
        ):
            began = time.perf_counter()
            session.run(names, feed)
            latencies.append(time.perf_counter() - began)
    return BareRun(batch, len(latencies), latencies, phase[0])


@dataclass
class PipelineRun:
    threads: int
    jobs: int
    images: int
    job_latencies_s: list[float]
    timings_ms: list[dict[str, float]]
    phase: Phase

    @property
    def images_per_s(self) -> float:
        return self.images / self.phase.wall_s

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
        return {
            "threads": self.threads,
            "jobs": self.jobs,
            "images": self.images,
            "images_per_s": sig(self.images_per_s),
            "studies_per_s": sig(self.jobs / self.phase.wall_s),
            "job_ms_median": sig(1000 * statistics.median(self.job_latencies_s)),
            "job_ms_p95": sig(1000 * percentile(self.job_latencies_s, 0.95)),
            "ms_per_image": sig(1000 * self.phase.wall_s / self.images),
            "cpu_ms_per_image": sig(1000 * self.phase.cpu_s / self.images),
            "stages_ms_per_job": stages,
            "stage_share": {name: sig(value / total) for name, value in stages.items()},
            "wall_s": sig(self.phase.wall_s),
            "other_load_cores": sig(self.phase.other_load),
        }


def run_pipeline(
    bench: Bench,
    job_ids: Sequence[int],
    images: int,
    threads: int,
    context: InferenceContext | None = None,
) -> PipelineRun:
    """``run_job`` for every job, one after another or from a pool of ``threads``."""
    chosen = context or bench.context

    def one(job_id: int) -> tuple[str, float]:
        began = time.perf_counter()
        state = run_job(chosen, job_id)
        return state, time.perf_counter() - began

    with timed() as phase:
        if threads == 1:
            results = [one(job_id) for job_id in job_ids]
        else:
            with ThreadPoolExecutor(threads, thread_name_prefix="bench-worker") as pool:
                results = list(pool.map(one, job_ids))
    with bench.parts.db.session() as session:
        rows = session.scalars(select(JobRow).where(JobRow.id.in_(job_ids))).all()
        failed = [f"job {r.id}: {r.state} {r.reason or ''}" for r in rows if r.state != "inferred"]
        timings = [dict(r.timings_ms) for r in rows]
    if failed:
        raise BenchmarkError(f"{bench.manifest.key}: {'; '.join(failed)}")
    return PipelineRun(
        threads, len(job_ids), images, [latency for _, latency in results], timings, phase[0]
    )


def median_run(runs: Sequence[Run]) -> Run:
    """The round with the median throughput (the lower middle of an even count)."""
    ordered = sorted(runs, key=lambda run: run.images_per_s)
    return ordered[(len(ordered) - 1) // 2]


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
