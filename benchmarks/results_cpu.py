"""Results-stage CPU per object: what building a job's SR, flag image (SC), GSPS, SEG and
SEMD costs, one by one, for a chest X-ray and a CT chest.

Issue 13's target: the results of a chest X-ray in ≤ 100 ms of CPU, so that the results
stage is not the bottleneck. The inputs are synthetic studies with a known lesion
(``gateway.demo``): a DX radiograph at a real detector size (2500×2048) and an axial CT
chest (512², ``--ct-slices``), each with the device's answer built from the phantom's
ground truth (``tests/report_fixtures.py``, as the builder tests use). The builders run in
this process as :func:`gateway.results.artifacts.build_artifacts` runs them, after a warm-up
round; each round reads its sources afresh from part-10 bytes, as the worker does from the
object store, so nothing decoded by one round helps the next. Storing is timed as far as
it is ours: the SHA-256 of every object's bytes that ``store_artifacts`` records ("store
digest"; a radiograph's flag image is ~13 MB of it), not the object store's ``put``. The
SEMD's schematron check is, when the official files are present (``--semd-reference``),
as ``semd_reference_dir`` does — in production only where that setting is given (unset by
default), so each case also reports its total without it (``built_cpu_ms_median``: the
objects and their digests).

Figures: process CPU milliseconds per object (median and minimum over ``--rounds``), each
object's share of the total, and the minor page faults it took (median): memory touched for
the first time costs a fault per 4 KiB page, and a radiograph's flag image (tens of MB of
buffers) can spend more CPU in faults than in drawing. How many depends on what the
allocator kept from the last job, so compare rounds of one run, not runs. Nothing here
asserts on time.

    .venv/bin/python -m benchmarks.results_cpu [--rounds 5] [--ct-slices 100] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydicom import Dataset, dcmread

from benchmarks.environment import RESULTS, ROOT, machine_description, machine_name, write_results
from gateway.memory import keep_large_buffers
from gateway.results import flags, gsps, seg, sr
from gateway.results.encoding import part10
from gateway.results.input import ReportInput
from gateway.results.semd import document as semd
from gateway.results.semd.config import SemdConfig, load_semd_config
from gateway.results.semd.validation import validate_semd
from gateway.settings import Settings
from tests import report_fixtures

T = TypeVar("T")
SEMD_REFERENCE = ROOT.parent / "shared" / "reference" / "semd"
SEMD_FILE = ROOT / "gateway" / "configs" / "semd.yaml"
FAULTS = "faults: "  # a round's page faults per object, beside its CPU ms
OBJECTS = (
    "SR",
    "SC",
    "GSPS",
    "SEG",
    "SEMD key image",
    "SEMD document",
    "store digest",
    "SEMD validation",
)


def _reread(report: ReportInput) -> ReportInput:
    """The report with its sources read back from part-10 bytes: fresh datasets, nothing
    decoded yet."""
    sources: list[Dataset] = [dcmread(io.BytesIO(part10(ds))) for ds in report.sources]
    return dataclasses.replace(report, sources=sources)


def one_round(
    report: ReportInput, config: SemdConfig, reference: Path | None, max_px: int
) -> dict[str, float]:
    """CPU ms per object for one job's results, built as ``build_artifacts`` builds them."""
    spent: dict[str, float] = {}

    def timed(name: str, work: Callable[[], T]) -> T:
        start, faults = time.process_time(), _faults()
        out = work()
        spent[name] = spent.get(name, 0.0) + (time.process_time() - start) * 1000.0
        spent[FAULTS + name] = spent.get(FAULTS + name, 0.0) + _faults() - faults
        return out

    stored = [timed("SR", lambda: part10(sr.build_sr(report)))]
    drawn = timed("SC", lambda: flags.build_flags(report))
    stored += timed("SC", lambda: [part10(flag.dataset) for flag in drawn])
    presentation = timed("GSPS", lambda: gsps.build_gsps(report))
    if presentation is not None:
        stored.append(timed("GSPS", lambda: part10(presentation)))
    if any(f.mask is not None for f in report.findings):
        segmentation = timed("SEG", lambda: seg.build_seg(report))
        if segmentation is not None:
            stored.append(timed("SEG", lambda: part10(segmentation)))
    image = timed(
        "SEMD key image",
        lambda: flags.key_image_jpeg(drawn[0], max_px) if drawn else None,
    )
    document = timed("SEMD document", lambda: semd.build_semd(report, config, image))
    stored.append(document.xml)
    # What store_artifacts computes of each object before the put.
    timed("store digest", lambda: [hashlib.sha256(data).hexdigest() for data in stored])
    if reference is not None:
        problems = timed("SEMD validation", lambda: validate_semd(document.xml, reference))
        if problems:
            raise SystemExit(f"the SEMD is invalid: {problems[0]}")
    return spent


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(report: ReportInput, args: argparse.Namespace, config: SemdConfig) -> dict[str, Any]:
    reference = args.semd_reference if args.semd_reference.is_dir() else None
    rounds = [
        one_round(_reread(report), config, reference, args.key_image_max_px)
        for _ in range(args.rounds + 1)
    ][1:]  # the first warms the process: imports, fonts, compiled schematron
    totals = [sum(v for k, v in r.items() if not k.startswith(FAULTS)) for r in rounds]
    total = statistics.median(totals)
    built = [t - r.get("SEMD validation", 0.0) for t, r in zip(totals, rounds, strict=True)]
    per_object = {}
    for name in OBJECTS:
        values = [r[name] for r in rounds if name in r]
        if values:
            median = statistics.median(values)
            per_object[name] = {
                "cpu_ms_median": round(median, 1),
                "cpu_ms_min": round(min(values), 1),
                "share_of_total": round(median / total, 3),
                "page_faults_median": round(statistics.median(r[FAULTS + name] for r in rounds)),
            }
    first = report.sources[0]
    return {
        "source": {
            "modality": str(first.Modality),
            "instances": len(report.sources),
            "rows": int(first.Rows),
            "columns": int(first.Columns),
        },
        "semd_validated": reference is not None,
        "per_object": per_object,
        "total_cpu_ms_median": round(total, 1),
        "total_cpu_ms_min": round(min(totals), 1),
        "built_cpu_ms_median": round(statistics.median(built), 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    # As `aigw serve` and `aigw worker` set it (gateway/memory.py), unless asked not to.
    malloc_tuned = False if args.malloc_defaults else keep_large_buffers()
    config = load_semd_config(SEMD_FILE)
    cases = {
        "chest_xray_2500x2048": report_fixtures.chest_xray_input(size=(2500, 2048)),
        f"ct_chest_{args.ct_slices}x512": report_fixtures.ct_chest_input(
            n_slices=args.ct_slices, size=(512, 512)
        ),
    }
    return {
        "benchmark": "results_cpu",
        "rounds": args.rounds,
        "semd_key_image_max_px": args.key_image_max_px,
        "malloc_tuned": malloc_tuned,
        "cases": {name: measure(report, args, config) for name, report in cases.items()},
        "machine": machine_description(["pydicom", "highdicom", "pillow", "lxml"]),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.results_cpu", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after a warm-up")
    parser.add_argument("--ct-slices", type=int, default=100)
    parser.add_argument(
        "--key-image-max-px",
        type=int,
        default=Settings.model_fields["semd_key_image_max_px"].default,
    )
    parser.add_argument("--semd-reference", type=Path, default=SEMD_REFERENCE)
    parser.add_argument(
        "--malloc-defaults",
        action="store_true",
        help="keep glibc's malloc thresholds (the workers raise them: gateway/memory.py)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    path = write_results(args.out, machine_name(), "results-cpu", report)
    for name, case in report["cases"].items():
        parts = ", ".join(f"{k} {v['cpu_ms_median']}" for k, v in case["per_object"].items())
        print(
            f"{name}: {case['total_cpu_ms_median']} ms CPU, {case['built_cpu_ms_median']}"
            f" without the SEMD's validation ({parts})"
        )
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
