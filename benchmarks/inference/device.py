"""One device's figures: its studies generated, ingested and routed, a warm-up, then bare,
sequential, concurrent, decode ▸ preprocess alone and bare-at-the-batcher's-batch phases in
rounds; the median round counts."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.errors import BenchmarkError
from benchmarks.inference.gateway_parts import (
    PlannedStudy,
    build_bench,
    create_jobs,
    ingest_and_route,
    job_keys,
    prepared_tensors,
)
from benchmarks.inference.report import STAGE_OVERLAP_TARGET, TARGET_2D_RATIO
from benchmarks.inference.runs import (
    BareRun,
    PipelineRun,
    PrepareRun,
    compare,
    median_run,
    run_bare,
    run_pipeline,
    run_prepare,
    stage_overlap,
)
from benchmarks.inference.studies import clone, study_spec
from benchmarks.measure import sig
from models.manifest import load_manifest


@dataclass(frozen=True)
class Plan:
    studies: int  # jobs per phase
    distinct: int  # distinctly generated studies (the rest are clones under new UIDs)
    rounds: int
    bare_min_seconds: float
    quick: bool
    seed: int
    sizes: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    threads: int | None = None  # the concurrent phase's threads; None: worker_concurrency
    # The concurrent phase runs jobs (the studies again and again, each time as new job
    # rows) until this long has passed: its threads' ramp-up and ramp-down weigh little.
    pipeline_min_seconds: float = 0.0


def bench_device(
    manifest_path: Path, work: Path, plan: Plan, workload: str | None = None
) -> dict[str, Any]:
    """One device's figures. ``workload`` labels what is not a registered device (the
    vendor-scale workload): its findings are never reported, only its timings."""
    manifest = load_manifest(manifest_path)
    spec = study_spec(manifest, plan.quick, plan.sizes)
    started = time.perf_counter()
    bench = build_bench(work / "var", manifest_path)
    key = bench.device.key
    print(f"\n{key}: {spec.describe()}", flush=True)

    bases = [spec.make(plan.seed + n, positive=n % 2 == 0) for n in range(plan.distinct)]
    generated_s = time.perf_counter() - started
    planned: list[PlannedStudy] = []
    stored_bytes = 0
    pool: list[np.ndarray] = []  # bare inputs: the pipeline's decode and preprocess
    keys: list[list[str]] = []  # each job's instances, for load ▸ decode ▸ preprocess alone
    for number in range(plan.studies):
        instances = clone(bases[number % len(bases)], number)
        stored_bytes += sum(len(data) for data in instances)
        planned.append(ingest_and_route(bench, instances))
        keys.append(job_keys(bench, planned[-1]))
        if number < len(bases):
            pool += prepared_tensors(instances, planned[-1], manifest)
    images_per_job = planned[0].images
    if any(p.images != images_per_job for p in planned):
        raise BenchmarkError(f"{key}: jobs read different numbers of images")
    images = images_per_job if manifest.input.dims == 2 else 1  # model inputs per job
    print(
        f"  {plan.distinct} studies generated in {generated_s:.1f} s, {plan.studies} ingested "
        f"({stored_bytes / 1e6:.0f} MB) and routed: rule {planned[0].job.rule}, "
        f"{images_per_job} instance(s) per job",
        flush=True,
    )

    context = bench.context
    session = context.sessions.session(key, lambda: context.registry.model_bytes(key))
    pipeline_batch = min(images, context.max_batch)
    batches = sorted(
        {1, pipeline_batch} | ({context.max_batch} if manifest.input.dims == 2 else set())
    )
    concurrency = plan.threads or bench.settings.worker_concurrency
    assert context.batcher is not None
    runners = context.batcher.limits.runners  # bare runs as the batcher does
    total_images = images * plan.studies
    tags = iter(range(1_000_000))

    def pipeline(threads: int, jobs_per_s: float = 0.0) -> PipelineRun:
        """``threads``: 1, the studies once; more, at least ``plan.pipeline_min_seconds``
        at the (estimated) ``jobs_per_s``, the studies again as new job rows."""
        passes = 1
        if threads > 1 and plan.pipeline_min_seconds:
            passes = max(1, math.ceil(plan.pipeline_min_seconds * jobs_per_s / len(planned)))
        ids = [i for _ in range(passes) for i in create_jobs(bench, planned, tag=next(tags))]
        min_s = plan.pipeline_min_seconds if threads > 1 else 0.0
        return run_pipeline(bench, ids, total_images * passes, threads, min_seconds=min_s)

    def jobs_per_s_estimate(sequential: PipelineRun) -> float:
        """Generous: the last concurrent phase's rate and half again, or in the first
        round the sequential rate times the threads (rows not run cost only their insert)."""
        if concurrent:
            return 1.5 * concurrent[-1].jobs / concurrent[-1].phase.wall_s
        return concurrency * sequential.jobs / sequential.phase.wall_s

    # Warm-up: the session, torch and MONAI imports, first-run allocations.
    run_pipeline(bench, create_jobs(bench, planned[:1], tag=next(tags)), images, threads=1)

    bare_runs: dict[int, list[BareRun]] = {b: [] for b in batches}
    sequential: list[PipelineRun] = []
    concurrent: list[PipelineRun] = []
    prepares: list[PrepareRun] = []
    overlaps: list[dict[str, Any]] = []
    same_batch: list[BareRun] = []
    for number in range(plan.rounds):
        for batch in batches:
            bare_runs[batch].append(
                run_bare(
                    session, manifest, pool, batch, total_images, plan.bare_min_seconds, runners
                )
            )
        sequential.append(pipeline(1))
        concurrent.append(pipeline(concurrency, jobs_per_s_estimate(sequential[-1])))
        prepares.append(run_prepare(context, manifest, keys, total_images, plan.bare_min_seconds))
        formed = min(max(round(concurrent[-1].mean_batch), 1), context.max_batch)
        same_batch.append(
            run_bare(session, manifest, pool, formed, total_images, plan.bare_min_seconds, runners)
        )
        overlaps.append(stage_overlap(concurrent[-1], prepares[-1], same_batch[-1]))
        line = (
            f"  round {number + 1}/{plan.rounds}: bare "
            + ", ".join(f"b{b} {bare_runs[b][-1].images_per_s:.1f}" for b in batches)
            + f" /s; pipeline ×1 {sequential[-1].images_per_s:.1f}, "
            f"×{concurrency} {concurrent[-1].images_per_s:.1f} /s ({concurrent[-1].jobs} jobs, "
            f"{concurrent[-1].phase.wall_s:.2f} s, steady {_steady(concurrent[-1])}; batches "
            f"of {concurrent[-1].mean_batch:.1f}); decode+preprocess alone "
            f"{prepares[-1].images_per_s:.1f} /s, bare b{formed} "
            f"{same_batch[-1].images_per_s:.1f} /s; overlap {overlaps[-1]['value']}"
        )
        print(line, flush=True)

    bare = {b: median_run(runs) for b, runs in bare_runs.items()}
    reference = bare[pipeline_batch]
    is_2d = manifest.input.dims == 2
    shipped = compare(median_run(sequential), median_run(concurrent), reference, concurrency)
    result = {
        "device": key,
        "workload": workload,
        "dims": manifest.input.dims,
        "input": {
            "name": manifest.input.name,
            "shape": [manifest.input.channels, *manifest.input.size],
        },
        "build": manifest.provenance.build,
        "unit": "images" if is_2d else "volumes",
        "study": {
            "kind": spec.kind,
            "description": spec.describe(),
            "image_size": list(spec.size),
            "slices": spec.slices or None,
            "instances_per_job": images_per_job,
            "model_inputs_per_job": images,
            "transfer_syntax": "explicit VR little endian",
            "studies_per_phase": plan.studies,
            "concurrent_phase_min_s": plan.pipeline_min_seconds,
            "distinct_studies": plan.distinct,
            "mb_stored": round(stored_bytes / 1e6, 1),
        },
        "providers": list(session.get_providers()),
        "pipeline_batch": pipeline_batch,
        "bare": {f"batch_{b}": bare[b].as_dict() for b in batches},
        "pipeline": shipped["pipeline"],
        "ratio": shipped["ratio"],
        "stage_overlap": _median_overlap(overlaps),
        "stage_overlap_rounds": [overlap["value"] for overlap in overlaps],
        "pipeline_vs_bare_same_batch": _same_batch_ratios(concurrent, same_batch),
        "target": TARGET_2D_RATIO if is_2d else None,
        "meets_target": shipped["ratio"]["pipeline_vs_bare"] >= TARGET_2D_RATIO if is_2d else None,
    }
    if workload is not None:
        result["workload_note"] = (
            f"not a device: random weights, input {manifest.input.size[0]}×"
            f"{manifest.input.size[1]}"
            + (" (--quick; the full run uses 512×512)" if plan.quick else "")
            + "; findings mean nothing and are not reported, only timings"
        )
    result["wall_s"] = round(time.perf_counter() - started, 1)
    bench.parts.db.dispose()
    return result


def _steady(run: PipelineRun) -> str:
    steady = run.steady_images_per_s
    return f"{steady:.1f} /s" if steady is not None else "n/a"


def _median_overlap(overlaps: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median stage overlap (each round's figures come from that round:
    a slow spell on a shared machine hits the pipeline and the stages alone alike)."""
    ordered = sorted(overlaps, key=lambda overlap: float(overlap["value"]))
    return {**ordered[(len(ordered) - 1) // 2], "target": STAGE_OVERLAP_TARGET}


def _same_batch_ratios(concurrent: list[PipelineRun], bare: list[BareRun]) -> dict[str, Any]:
    """The concurrent pipeline ÷ bare onnxruntime at the batch the batcher formed in the
    same round, per round and the median."""
    ratios = sorted(
        run.images_per_s / ref.images_per_s for run, ref in zip(concurrent, bare, strict=True)
    )
    return {
        "median": sig(ratios[(len(ratios) - 1) // 2]),
        "batches": [ref.batch for ref in bare],
        "rounds": [
            sig(r.images_per_s / b.images_per_s) for r, b in zip(concurrent, bare, strict=True)
        ],
    }
