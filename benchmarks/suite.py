"""The benchmark suite: how many studies a node carries and how fast results come back.

Per device: bare onnxruntime over batch sizes, fp32 and fp16, on every execution provider
this onnxruntime has of TensorRT, CUDA and CPU (:mod:`benchmarks.bare`); the whole worker
pipeline on the same model (:mod:`benchmarks.inference`). Then ingest
(:mod:`benchmarks.ingest`, reduced) and end to end: concurrent DICOM senders pushing a
fluorography-heavy mix into a real ``aigw serve`` (:mod:`benchmarks.end_to_end`). GPU
utilisation and memory through pynvml where present.

Output under ``<out>/<machine>/``: ``suite-<UTC stamp>.json`` and ``suite-latest.json``
(schema: :mod:`benchmarks.suite_schema`), ``suite-latest.md``, and the plots
``throughput-vs-batch.png`` and ``latency-distribution.png``.

    .venv/bin/python -m benchmarks.suite [--quick] [--out DIR] [--device ID ...]
        [--senders N] [--seconds T] [--skip ingest,end-to-end,pipeline]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import bare, end_to_end, inference, ingest, report
from benchmarks.environment import RESULTS, ROOT, gpu_name, machine_name, work_folder
from benchmarks.errors import BenchmarkError
from benchmarks.gpu import GpuMonitor
from benchmarks.suite_schema import SuiteReport
from gateway.settings import load_settings
from models.manifest import DeviceManifest, load_manifest
from tests.services import ServiceError
from tests.services.processes import find_tool

FULL_BATCHES_2D = (1, 2, 4, 8, 16, 32, 64)
QUICK_BATCHES_2D = (1, 4, 16)
# A CT volume is ~100× a radiograph's input: batches past 8 volumes only measure memory.
FULL_BATCHES_3D = (1, 2, 4, 8)
QUICK_BATCHES_3D = (1, 2)
PRECISIONS: tuple[bare.Precision, ...] = ("fp32", "fp16")
PARTS = ("pipeline", "ingest", "end-to-end")
NOTICE = (
    "The reference devices are trained on synthetic phantoms: their figures measure the "
    "software, not diagnostic performance. Trained on synthetic phantoms. Not for clinical "
    "use. / Обучено на синтетических фантомах. Не для клинического применения."
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.suite", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="reduced sizes: a few minutes")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--devices-dir", type=Path, default=inference.DEVICES_DIR)
    parser.add_argument("--device", action="append", default=[], metavar="ID")
    parser.add_argument("--senders", type=int, default=None, help="end to end (default 2/4)")
    parser.add_argument("--seconds", type=float, default=None, help="end to end (20/120)")
    parser.add_argument("--studies", type=int, default=None, help="end to end: prepared")
    parser.add_argument(
        "--batches", default=None, help="comma-separated 2D batch sizes (default by mode)"
    )
    parser.add_argument(
        "--providers", default=None, help="comma-separated subset of the available providers"
    )
    parser.add_argument("--skip", default="", help=f"comma-separated parts of {PARTS}")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=20240101)
    args = parser.parse_args(argv)
    args.skip = {part for part in args.skip.split(",") if part}
    if args.skip - set(PARTS):
        parser.error(f"--skip takes {', '.join(PARTS)}")
    args.senders = args.senders or (2 if args.quick else 4)
    args.seconds = args.seconds or (20.0 if args.quick else 120.0)
    args.studies = args.studies or (10 if args.quick else 150)
    if args.batches:
        args.batches = tuple(sorted({int(b) for b in args.batches.split(",")}))
    return args


def batches_for(args: argparse.Namespace, manifest: DeviceManifest) -> tuple[int, ...]:
    if manifest.input.dims == 3:
        return QUICK_BATCHES_3D if args.quick else FULL_BATCHES_3D
    return args.batches or (QUICK_BATCHES_2D if args.quick else FULL_BATCHES_2D)


def providers_for(args: argparse.Namespace) -> list[str]:
    found = bare.available_providers()
    if args.providers:
        wanted: list[str] = args.providers.split(",")
        missing = [p for p in wanted if p not in found]
        if missing:
            raise BenchmarkError(f"providers not in this onnxruntime: {', '.join(missing)}")
        return wanted
    return found


def bench_device(
    args: argparse.Namespace, path: Path, providers: list[str], work: Path
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One device's bare sweep and pipeline run; the GPU use during the sweep."""
    manifest = load_manifest(path)
    print(f"\n{manifest.key}", flush=True)
    model = (path.parent / manifest.onnx.file).read_bytes()
    with GpuMonitor() as gpu:
        figures, skipped = bare.sweep(
            manifest,
            model,
            providers,
            PRECISIONS,
            batches_for(args, manifest),
            min_seconds=0.3 if args.quick else 2.0,
            min_runs=3 if args.quick else 10,
        )
    if not figures:
        raise BenchmarkError(f"{manifest.key}: nothing could be measured: {skipped}")
    device: dict[str, Any] = {
        "device": manifest.key,
        "dims": manifest.input.dims,
        "unit": "images" if manifest.input.dims == 2 else "volumes",
        "input_shape": [manifest.input.channels, *manifest.input.size],
        "notice_en": manifest.provenance.notice_en,
        "notice_ru": manifest.provenance.notice_ru,
        "bare": [f.as_dict() for f in figures],
        "skipped": [s.as_dict() for s in skipped],
        "pipeline": None,
    }
    if "pipeline" not in args.skip:
        device["pipeline"] = pipeline_figures(args, path, manifest, work)
    return device, gpu.summary()


def pipeline_figures(
    args: argparse.Namespace, path: Path, manifest: DeviceManifest, work: Path
) -> dict[str, Any]:
    """The inference benchmark's pipeline run, summarised: the faster of one job at a time
    and ``worker_concurrency`` jobs at once, against bare at the pipeline's batch."""
    options = inference.parse_args([*(["--quick"] if args.quick else []), "--rounds", "1"])
    result = inference.bench_device(
        path, work / f"pipeline-{manifest.id}", inference.device_plan(options, manifest)
    )
    runs = result["pipeline"]
    best = max(runs.values(), key=lambda run: float(run["images_per_s"]))
    reference = result["bare"][f"batch_{result['pipeline_batch']}"]
    return {
        "providers": result["providers"],
        "study": result["study"]["description"],
        "images_per_s": best["images_per_s"],
        "studies_per_s": best["studies_per_s"],
        "bare_images_per_s": reference["images_per_s"],
        "ratio": result["ratio"]["pipeline_vs_bare"],
        "job_ms_p50": best["job_ms_median"],
        "job_ms_p95": best["job_ms_p95"],
        "stages_ms_per_job": best["stages_ms_per_job"],
        "target": result["target"],
        "meets_target": result["meets_target"],
        "other_load_cores": best["other_load_cores"],
    }


def ingest_figures(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The ingest benchmark, reduced in quick mode to storescp against the embedded aigw."""
    quick = ["--ct", "30", "--dx", "3", "--senders", "2", "--rounds", "1"]
    quick += ["--receivers", "storescp,aigw-folder-1p"]
    options = ingest.parse_args([*(quick if args.quick else []), "--work-dir", str(work)])
    usable = ingest.check_tools(options.receivers.split(","))
    options.receivers = ",".join(usable)
    result = ingest.run(options)
    return {
        "ct_instances": options.ct,
        "dx_instances": options.dx,
        "senders": options.senders,
        "rounds": options.rounds,
        "receivers": [
            {
                "name": r["name"],
                "ct_instances_per_s": r["ct"]["instances_per_s"],
                "ct_mb_per_s": r["ct"]["mb_per_s"],
                "dx_instances_per_s": r["dx"]["instances_per_s"],
                "dx_mb_per_s": r["dx"]["mb_per_s"],
                "other_load_cores": max(r["ct"]["other_load_cores"], r["dx"]["other_load_cores"]),
            }
            for r in result["receivers"]
        ],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    providers = providers_for(args)
    paths = inference.find_devices(args.devices_dir, args.device)
    skipped_parts: dict[str, str] = {}
    if find_tool("storescu") is None:
        for part in ("ingest", "end-to-end"):
            skipped_parts[part] = "DCMTK storescu is not installed"
            args.skip.add(part)
    devices = []
    gpu_bare = None
    with work_folder(args.work_dir, "aigw-bench-suite-") as work, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Divide by zero", category=Warning)
        for path in paths:
            device, gpu = bench_device(args, path, providers, work)
            devices.append(device)
            gpu_bare = gpu or gpu_bare
        ingest_result = None
        if "ingest" not in args.skip:
            print("\ningest", flush=True)
            ingest_result = ingest_figures(args, work / "ingest")
        e2e = None
        if "end-to-end" not in args.skip:
            print("\nend to end", flush=True)
            plan = end_to_end.EndToEndPlan(
                senders=args.senders,
                seconds=args.seconds,
                studies=args.studies,
                quick=args.quick,
                seed=args.seed,
                drain_timeout_s=max(300.0, 3 * args.seconds),
            )
            e2e = end_to_end.run_end_to_end(plan, args.devices_dir, work / "end-to-end")
        settings = load_settings(None, data_dir=work / "settings")
    machine = machine_name(with_gpu=any(p != "CPUExecutionProvider" for p in providers))
    return {
        "benchmark": "suite",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "quick": args.quick,
        "parameters": {
            "providers": providers,
            "precisions": list(PRECISIONS),
            "fp16": "onnxruntime.transformers.float16.convert_float_to_float16, keep_io_types=True",
            "bare_input": "fixed-seed random tensor of the model's input shape",
            "devices_dir": str(args.devices_dir),
            "skipped_parts": skipped_parts or None,
            "end_to_end_senders": args.senders,
            "end_to_end_seconds": args.seconds,
            "seed": args.seed,
        },
        "notice": NOTICE,
        "devices": devices,
        "ingest": ingest_result,
        "end_to_end": e2e,
        "gpu_bare": gpu_bare,
        "environment": {**inference.environment(settings), "gpu": gpu_name()},
        "wall_s": round(time.perf_counter() - started, 1),
    }


def write(out_dir: Path, result: dict[str, Any]) -> Path:
    """JSON (validated against the schema first), markdown and plots, side by side."""
    folder = out_dir / str(result["machine"])
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path = folder / f"suite-{stamp}.json"
    result["files"] = {
        "json_report": json_path.name,
        "markdown": "suite-latest.md",
        "plots": [report.THROUGHPUT_PLOT, report.LATENCY_PLOT],
    }
    text = SuiteReport.model_validate(result).model_dump_json(indent=2) + "\n"
    json_path.write_text(text)
    (folder / "suite-latest.json").write_text(text)
    report.plot_throughput(result["devices"], folder / report.THROUGHPUT_PLOT)
    report.plot_latency(result["end_to_end"], result["devices"], folder / report.LATENCY_PLOT)
    (folder / "suite-latest.md").write_text(report.markdown(result))
    return json_path


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except (BenchmarkError, ServiceError) as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
        return 1
    path = write(args.out, result)
    print("\n" + "\n".join(report.headline_table(result)))
    print(f"\nresults: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
