"""``python -m benchmarks.inference``: the options, which devices run, the report."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.environment import (
    DEVICES_DIR,
    RESULTS,
    ROOT,
    work_folder,
    write_results,
)
from benchmarks.errors import BenchmarkError
from benchmarks.inference.device import Plan, bench_device
from benchmarks.inference.gateway_parts import SOURCE
from benchmarks.inference.report import (
    BUSY_MACHINE_CORES,
    environment,
    format_table,
    phases,
    results_machine,
    target_checks,
)
from benchmarks.inference.vendor_scale import (
    VENDOR_SCALE_ID,
    VENDOR_SCALE_QUICK_SIZE,
    VENDOR_SCALE_SIZE,
    VENDOR_SCALE_WORKLOAD,
    write_vendor_scale_device,
)
from gateway.settings import load_settings
from models.manifest import DeviceManifest, ManifestError, load_manifest

DESCRIPTION = (
    "Inference benchmark: per AI device, bare onnxruntime throughput against the whole "
    "worker pipeline, on the same model, the same session and the same execution provider."
)


def find_devices(devices_dir: Path, wanted: Sequence[str]) -> list[Path]:
    found: dict[str, Path] = {}
    for path in sorted(devices_dir.glob("*/manifest.yaml")):
        try:
            manifest = load_manifest(path)
        except ManifestError as exc:
            print(f"skipping {path}: {exc}", file=sys.stderr)
            continue
        found[manifest.id] = path
    if wanted:
        missing = [name for name in wanted if name not in found]
        if missing:
            raise BenchmarkError(
                f"no device {', '.join(missing)} under {devices_dir} "
                f"(found: {', '.join(found) or 'none'})"
            )
        return [found[name] for name in wanted]
    if not found:
        raise BenchmarkError(f"no */manifest.yaml under {devices_dir}")
    return list(found.values())


KINDS = ("chest_xray", "mammography", "ct_chest", "ct_head")


def size_option(text: str) -> tuple[str, tuple[int, int]]:
    kind, _, size = text.partition("=")
    rows, _, cols = size.lower().partition("x")
    if (
        kind not in KINDS
        or not (rows.isdigit() and cols.isdigit())
        or min(int(rows), int(cols)) < 16
    ):
        raise argparse.ArgumentTypeError(f"expected KIND=ROWSxCOLS with KIND in {KINDS}: {text}")
    return kind, (int(rows), int(cols))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inference", description=DESCRIPTION)
    parser.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="ID",
        help="device id to benchmark (repeatable; default every device in --devices-dir)",
    )
    parser.add_argument(
        "--devices-dir",
        type=Path,
        default=DEVICES_DIR,
        help="folder of device folders (*/manifest.yaml); default models/zoo",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small images, few studies, one round: under 2 minutes on 2 cores",
    )
    parser.add_argument("--studies", type=int, default=None, help="jobs per phase (per device)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds; the median counts")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="data folders (default a temp folder)"
    )
    parser.add_argument(
        "--size",
        action="append",
        type=size_option,
        default=[],
        metavar="KIND=ROWSxCOLS",
        help="image or slice size of a study kind (chest_xray, mammography, ct_chest, "
        "ct_head), e.g. chest_xray=1024x1024 (repeatable)",
    )
    parser.add_argument(
        "--no-vendor-scale",
        action="store_true",
        help=f"leave out the vendor-scale workload ({VENDOR_SCALE_ID}: DenseNet-121 at "
        f"{VENDOR_SCALE_SIZE}², random weights; --quick: {VENDOR_SCALE_QUICK_SIZE}²)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads of the concurrent phase, each running jobs as a worker thread does "
        "(default worker_concurrency); more jobs in flight let the batcher form larger batches",
    )
    parser.add_argument(
        "--pipeline-seconds",
        type=float,
        default=None,
        help="the concurrent phase runs the studies again, as new jobs, until this long has "
        "passed (default 1.0, --quick 0.3; 0: each study once, as before 2026-12-06 21:00)",
    )
    parser.add_argument("--seed", type=int, default=20240101)
    args = parser.parse_args(argv)
    args.size = dict(args.size)
    args.rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if args.pipeline_seconds is None:
        args.pipeline_seconds = 0.3 if args.quick else 1.0
    if args.pipeline_seconds < 0:
        parser.error("--pipeline-seconds must not be negative")
    if args.rounds < 1 or (args.studies is not None and args.studies < 1):
        parser.error("--studies and --rounds must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def device_plan(args: argparse.Namespace, manifest: DeviceManifest) -> Plan:
    """How many jobs a phase runs: enough for a second or more of pipeline time."""
    if args.studies is not None:
        studies = args.studies
    elif manifest.input.dims == 3:
        studies = 2 if args.quick else 4
    elif "MG" in manifest.accepts.modalities:
        studies = 2 if args.quick else 6
    else:
        studies = 4 if args.quick else 16
    return Plan(
        studies=studies,
        distinct=min(studies, 1 if args.quick else 2),
        rounds=args.rounds,
        bare_min_seconds=0.3 if args.quick else 1.0,
        pipeline_min_seconds=args.pipeline_seconds,
        quick=args.quick,
        seed=args.seed,
        sizes=args.size,
        threads=args.threads,
    )


def selected_devices(args: argparse.Namespace) -> tuple[list[Path], bool]:
    """The registered devices' manifests to run, and whether to run the vendor-scale
    workload: every device and the workload by default; with ``--device``, those named
    (the workload by its id)."""
    wanted = [name for name in args.device if name != VENDOR_SCALE_ID]
    vendor_scale = not args.no_vendor_scale and (not args.device or VENDOR_SCALE_ID in args.device)
    paths = find_devices(args.devices_dir, wanted) if wanted or not args.device else []
    return paths, vendor_scale


def bench_vendor_scale(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The vendor-scale workload, exported into ``work`` and run as the devices are."""
    size = VENDOR_SCALE_QUICK_SIZE if args.quick else VENDOR_SCALE_SIZE
    started = time.perf_counter()
    path = write_vendor_scale_device(work / "device", size, args.seed)
    print(
        f"\n{VENDOR_SCALE_ID}: workload {VENDOR_SCALE_WORKLOAD!r}, DenseNet-121 at {size}², "
        f"exported in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    manifest = load_manifest(path)
    return bench_device(path, work, device_plan(args, manifest), VENDOR_SCALE_WORKLOAD)


def run(args: argparse.Namespace) -> dict[str, Any]:
    paths, vendor_scale = selected_devices(args)
    load_at_start = os.getloadavg()
    started = time.perf_counter()
    devices = []
    with work_folder(args.work_dir, "aigw-bench-infer-") as work, warnings.catch_warnings():
        # Blank borders make MONAI's percentile scaling warn about a zero range: harmless.
        warnings.filterwarnings("ignore", message="Divide by zero", category=Warning)
        for number, path in enumerate(paths):
            manifest = load_manifest(path)
            devices.append(
                bench_device(path, work / f"{number}-{manifest.id}", device_plan(args, manifest))
            )
        if vendor_scale:
            devices.append(bench_vendor_scale(args, work / VENDOR_SCALE_ID))
        settings = load_settings(None, data_dir=work / "settings")
    providers = sorted({p for device in devices for p in device["providers"]})
    report = {
        "benchmark": "inference",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": results_machine(providers),
        "parameters": {
            "quick": args.quick,
            "rounds": args.rounds,
            "seed": args.seed,
            "devices_dir": str(args.devices_dir),
            "size_overrides": {kind: list(size) for kind, size in args.size.items()},
            "source": SOURCE,
            "store": "folder object store + SQLite index (the embedded default)",
            "timing": "wall clock per phase; bare: session.run back to back from one thread; "
            "pipeline: run_job per job, sequentially and from a thread pool of "
            "--threads (default worker_concurrency), decode ▸ preprocess in the process pool "
            "and inference in the device's batcher, as the worker runs them; figures are the "
            "median round's",
            "threads": args.threads,
            "concurrent_phase": f"the studies again and again, each time as new job rows, "
            f"until {args.pipeline_seconds} s have passed (each thread takes no job after "
            "that), so that its threads' ramp-up and ramp-down weigh little; "
            "steady_images_per_s (and stage_overlap.value_steady) leaves out the first and "
            "last `threads` job ends. Before 2026-12-06 21:00 it ran each study once (16 "
            "chest X-ray jobs in ~0.2 s); --pipeline-seconds 0 does that",
            "pipeline_seconds": args.pipeline_seconds,
            "stage_overlap": "concurrent pipeline images/s ÷ the slowest stage alone on the "
            "same cores, in the same round: decode ▸ preprocess of every job through the "
            "process pool from as many threads as it has children, or bare onnxruntime at "
            "the batch the batcher formed; cpu_ms_per_image: each stage alone and the pipeline, "
            "the decode children included; ceiling_on_shared_cores: the slowest stage's CPU "
            "per image ÷ both stages' — where the stages share the cores the slowest one "
            "alone kept busy, the pipeline cannot pass it even with nothing else to do",
            "ratio": "pipeline images/s (the faster of sequential and concurrent) ÷ bare "
            "images/s at the batch the pipeline uses",
            "vendor_scale": {
                "id": VENDOR_SCALE_ID,
                "workload": VENDOR_SCALE_WORKLOAD,
                "run": vendor_scale,
                "why": "the reference devices' models are tiny (5–7 ms per image on CPU), "
                "less than reading and decoding one radiograph; this DenseNet-121 stands for "
                "a registered vendor's chest X-ray model so that the pipeline's overhead is "
                "seen against a realistic model cost",
            },
            "wall_s": round(time.perf_counter() - started, 1),
        },
        "devices": devices,
        "target": target_checks(devices),
        "environment": {
            **environment(settings),
            "load_average_at_start": [round(value, 2) for value in load_at_start],
        },
    }
    busy = [
        f"{device['device']} {phase}"
        for device in devices
        for phase, figures in phases(device)
        if figures["other_load_cores"] > BUSY_MACHINE_CORES
    ]
    report["busy_machine_phases"] = busy
    print("\n" + format_table(devices))
    if vendor_scale:
        print(
            f"\n{VENDOR_SCALE_ID} is a benchmark workload with random weights, not a device: "
            "its findings mean nothing and are not reported, only its timings."
        )
    if busy:
        print(
            f"\nWARNING: other processes kept more than {BUSY_MACHINE_CORES} cores busy during "
            f"{len(busy)} phase(s): the figures are noisy; rerun on a quiet machine"
        )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except BenchmarkError as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
        return 1
    path = write_results(args.out, str(report["machine"]), "inference", report)
    print(f"\nresults: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0
