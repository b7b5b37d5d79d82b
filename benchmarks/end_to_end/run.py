"""The end-to-end run: prepare the studies, start ``aigw serve``, send for T seconds, wait
for the results, and summarise studies/min and latency per study type."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.end_to_end.mix import MIX, Sizes, prepare_studies
from benchmarks.end_to_end.outcomes import StudyOutcome, wait_for_results
from benchmarks.end_to_end.senders import MAX_PDU, SendLog, send_for
from benchmarks.environment import ROOT
from benchmarks.errors import BenchmarkError
from benchmarks.gpu import GpuMonitor
from benchmarks.measure import percentile
from tests.services import GatewayProcess, free_port, gateway_env


@dataclass(frozen=True)
class EndToEndPlan:
    senders: int
    seconds: float
    studies: int  # prepared; senders stop early when they run out
    quick: bool
    seed: int
    quiet_period_s: float = 2.0
    drain_timeout_s: float = 300.0


def serve_process(data_dir: Path, devices_dir: Path, quiet_period_s: float) -> GatewayProcess:
    """``aigw serve`` on the embedded default (folder store, SQLite, in-process worker)."""
    settings = {
        "routing_file": str(ROOT / "gateway" / "configs" / "routing.yaml"),
        "devices_dir": str(devices_dir),
        "quiet_period_s": str(quiet_period_s),
        "assembly_poll_s": "0.2",
        "max_pdu_bytes": str(MAX_PDU),
        "min_free_bytes": "0",
        "log_level": "WARNING",
    }
    # Start-up registers and validates every device (one inference each) first.
    return GatewayProcess(data_dir, free_port(), gateway_env(**settings), [], start_timeout_s=180.0)


def latency_figures(values_s: Sequence[float]) -> dict[str, Any]:
    return {
        "studies": len(values_s),
        "p50_s": round(percentile(values_s, 0.50), 3),
        "p95_s": round(percentile(values_s, 0.95), 3),
        "p99_s": round(percentile(values_s, 0.99), 3),
    }


def run_end_to_end(plan: EndToEndPlan, devices_dir: Path, work: Path) -> dict[str, Any]:
    """Prepare the studies, start ``aigw serve``, send for ``plan.seconds``, wait for the
    results and summarise: studies/min and latency per study type."""
    if not any(devices_dir.glob("*/manifest.yaml")):
        raise BenchmarkError(f"no devices under {devices_dir} for the end-to-end run")
    sizes = Sizes.for_run(plan.quick)
    started = time.perf_counter()
    studies = prepare_studies(work / "studies", plan.studies, sizes, plan.seed)
    print(
        f"  end to end: {len(studies)} studies prepared in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    serve = serve_process(work / "serve", devices_dir, plan.quiet_period_s)
    try:
        serve.start()
        with GpuMonitor() as gpu:
            send_started = time.time()
            log, send_s = send_for(serve.dicom_port, studies, plan.senders, plan.seconds)
            uids = [study.study_uid for study in log.sent]
            outcomes = wait_for_results(
                f"sqlite:///{serve.data_dir / 'aigw.db'}",
                uids,
                plan.drain_timeout_s,
                serve.alive,
            )
    finally:
        serve.stop()
    if log.errors:
        raise BenchmarkError(f"storescu failed: {'; '.join(log.errors[:3])}")
    if not uids:
        raise BenchmarkError("no study was sent")
    return summarise(plan, sizes, log, outcomes, send_started, send_s, gpu, serve, len(studies))


def summarise(
    plan: EndToEndPlan,
    sizes: Sizes,
    log: SendLog,
    outcomes: dict[str, StudyOutcome],
    send_started: float,
    send_s: float,
    gpu: GpuMonitor,
    serve: GatewayProcess,
    prepared: int,
) -> dict[str, Any]:
    kinds = {study.study_uid: study.kind for study in log.sent}
    missing = [uid for uid in kinds if uid not in outcomes]
    if missing:
        raise BenchmarkError(
            f"{len(missing)} sent studies are not in the index: {serve.log_tail()}"
        )
    done = [o for o in outcomes.values() if o.result_at is not None]
    unfinished = [f"{kinds[o.study_uid]} {o.study_uid}: {o.state}" for o in outcomes.values()
                  if o.result_at is None]  # fmt: skip
    if not done:
        raise BenchmarkError(f"no study got a result: {unfinished[:3]} {serve.log_tail()}")
    ends = {o.end for o in done}
    last_result = max(o.result_at.timestamp() for o in done if o.result_at)
    window_s = last_result - send_started
    per_kind: dict[str, list[float]] = {}
    for outcome in done:
        assert outcome.result_at is not None
        latency = (outcome.result_at - outcome.last_received_at).total_seconds()
        per_kind.setdefault(kinds[outcome.study_uid], []).append(max(latency, 1e-3))
    every = [value for values in per_kind.values() for value in values]
    return {
        "senders": plan.senders,
        "send_seconds_planned": plan.seconds,
        "send_seconds": round(send_s, 2),
        "studies_prepared": prepared,
        "pool_exhausted": len(log.sent) == prepared,
        "studies_sent": len(log.sent),
        "studies_with_result": len(done),
        "unfinished": unfinished,
        "failed": [
            f"{kinds[o.study_uid]} {o.study_uid}: {o.failed_jobs} failed job(s)"
            for o in outcomes.values()
            if o.failed_jobs
        ],
        "window_seconds": round(window_s, 2),
        "studies_per_min": round(60 * len(done) / window_s, 2),
        # Offered well above carried: a queue built up and the latencies are mostly waiting.
        "offered_studies_per_min": round(60 * len(log.sent) / send_s, 2),
        "saturated": len(log.sent) / send_s > 1.1 * len(done) / window_s,
        "latency_end": ends.pop() if len(ends) == 1 else "mixed: " + ", ".join(sorted(ends)),
        "latency_start": "studies.last_received_at (the last instance indexed)",
        "quiet_period_s": plan.quiet_period_s,
        "latency": latency_figures(every),
        "latency_by_type": {kind: latency_figures(values) for kind, values in per_kind.items()},
        "latencies_s": {kind: [round(v, 3) for v in values] for kind, values in per_kind.items()},
        "mix": dict(MIX),
        "sizes": {
            "dx": list(sizes.dx),
            "mg": list(sizes.mg),
            "ct": list(sizes.ct),
            "ct_chest_slices": sizes.ct_chest_slices,
            "ct_head_slices": sizes.ct_head_slices,
        },
        "gateway": "aigw serve, embedded default (folder store, SQLite, in-process worker)",
        "gpu": gpu.summary(),
        "gpu_unavailable": gpu.unavailable,
    }
