"""30 chest DX studies end to end against the bare decode + infer loop (issue 13, item 4).

``aigw serve`` (the embedded default: folder store, SQLite, the in-process worker with its
inference and results pools; quiet period 1 s) receives N one-image DX chest studies
(2048², ~8 MB each) from one ``storescu`` association; the figure is the wall time from the
first C-STORE until every chest X-ray job has ended, and until every study's results are
stored. The bare loop reads, decodes, resizes and runs the same reference ONNX on the same
files in one thread of this process. Ratio = bare ÷ end to end (the goal: ≥ 0.1).

Both are measured warm: the bare loop runs its first file once before the clock starts (torch's
import, the session's first run), and the gateway gets one study of its own under other UIDs,
whose results are stored before the clock starts (the decode processes' imports of torch and
MONAI, the results stage's first objects) — as a gateway that has been running meets its
studies. The warm-up's start-up figures are reported beside the measured ones.

    .venv/bin/python -m benchmarks.end_to_end.chest_dx [--studies 30] [--size 2048]
        [--out DIR] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.end_to_end.run import serve_process
from benchmarks.end_to_end.senders import CALLED_AE, CALLING_AE, MAX_PDU
from benchmarks.environment import DEVICES_DIR, RESULTS, machine_name, work_folder, write_results
from benchmarks.errors import BenchmarkError
from benchmarks.inference.studies import clone
from gateway.demo.synthetic import chest_xray_study
from tests.services import GatewayProcess, storescu_command
from tests.services.dcmtk import dcmtk_env

DEVICE = "aigw-ref-cxr"
QUIET_PERIOD_S = 1.0


@dataclass(frozen=True)
class Ends:
    """When the last job ended and when the last study's results were stored (epoch s)."""

    jobs_ended: float | None
    results_stored: float | None
    jobs: int
    failed: int


def prepare(folder: Path, studies: int, size: int, seed: int) -> tuple[Path, list[Path]]:
    """One generated radiograph with a lesion and one without, cloned under new UIDs: the
    warm-up study's file and one file per measured study."""
    bases = [
        chest_xray_study(seed + n, "fluorography", "DX", with_lesion=n == 0, size=(size, size))
        for n in range(2)
    ]
    warm_up = folder / "warm-up.dcm"
    warm_up.write_bytes(clone(bases[0], 0)[0])
    files = []
    for number in range(studies):
        path = folder / f"{number:03d}.dcm"
        path.write_bytes(clone(bases[number % 2], number + 1)[0])
        files.append(path)
    return warm_up, files


def ends(database: Path, started: float) -> Ends:
    """The jobs created since ``started`` (epoch s) and their results, read with Core
    statements on a short connection."""
    from sqlalchemy import create_engine, func, select

    from gateway.index.tables import JobRow, ResultRow

    since = dt.datetime.fromtimestamp(started, dt.UTC)
    engine = create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            jobs = connection.execute(
                select(JobRow.state, JobRow.finished_at).where(JobRow.created_at >= since)
            ).all()
            theirs = ResultRow.job_id.in_(select(JobRow.id).where(JobRow.created_at >= since))
            stored = connection.execute(
                select(func.max(ResultRow.created_at)).where(theirs)
            ).scalar()
            with_results = connection.execute(
                select(func.count(func.distinct(ResultRow.job_id))).where(theirs)
            ).scalar()
    finally:
        engine.dispose()
    done = [
        finished
        for state, finished in jobs
        if state in ("inferred", "failed") and finished is not None
    ]
    all_done = bool(jobs) and len(done) == len(jobs)
    inferred = sum(1 for state, _ in jobs if state == "inferred")
    return Ends(
        jobs_ended=max(_epoch(t) for t in done) - started if all_done and done else None,
        results_stored=(
            _epoch(stored) - started if stored is not None and with_results == inferred else None
        ),
        jobs=len(jobs),
        failed=sum(1 for state, _ in jobs if state == "failed"),
    )


def _epoch(value: dt.datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()


def run_gateway(
    work: Path, warm_up: Path, files: Sequence[Path], timeout_s: float
) -> dict[str, Any]:
    serve = serve_process(work / "serve", DEVICES_DIR, QUIET_PERIOD_S)
    try:
        serve.start()
        database = serve.data_dir / "aigw.db"
        first = send_and_wait(serve, database, [warm_up], timeout_s)
        main = send_and_wait(serve, database, files, timeout_s)
    finally:
        serve.stop()
    return {
        "send_s": main["send_s"],
        "all_jobs_ended_s": main["jobs_ended_s"],
        "all_results_stored_s": main["results_stored_s"],
        "jobs": main["jobs"],
        "failed_jobs": main["failed"],
        "warm_up_study": {
            "jobs_ended_s": first["jobs_ended_s"],
            "results_stored_s": first["results_stored_s"],
        },
    }


def send_and_wait(
    serve: GatewayProcess, database: Path, files: Sequence[Path], timeout_s: float
) -> dict[str, Any]:
    """Send ``files`` on one association and wait until every job created since has ended
    and its results are stored; the times are from the first C-STORE."""
    command = storescu_command(
        serve.dicom_port, files, calling_ae=CALLING_AE, called_ae=CALLED_AE, max_pdu=MAX_PDU
    )
    started = time.time()
    sent = subprocess.run(command, env=dcmtk_env(), capture_output=True, text=True)
    send_s = time.time() - started
    if sent.returncode != 0:
        raise BenchmarkError(f"storescu failed: {sent.stderr[-300:]}")
    deadline = time.monotonic() + timeout_s
    while True:
        seen = ends(database, started)
        # Every job ended and every inferred one's results stored (results of the ones
        # inferred so far alone would count a job still running as done).
        if seen.jobs >= len(files) and None not in (seen.jobs_ended, seen.results_stored):
            break
        if time.monotonic() > deadline or not serve.alive():
            raise BenchmarkError(f"not finished in {timeout_s} s: {seen} {serve.log_tail()}")
        time.sleep(0.1)
    assert seen.jobs_ended is not None and seen.results_stored is not None
    return {
        "send_s": round(send_s, 2),
        "jobs_ended_s": round(seen.jobs_ended, 2),
        "results_stored_s": round(seen.results_stored, 2),
        "jobs": seen.jobs,
        "failed": seen.failed,
    }


def run_bare(files: Sequence[Path]) -> dict[str, Any]:
    """Read, decode, resize and run the reference ONNX on every file, one after another."""
    import numpy as np

    from gateway.inference.decode import decode_image, read_dataset
    from models.manifest import load_manifest
    from models.preprocess import prepare_2d
    from models.runtime import SessionCache

    manifest = load_manifest(DEVICES_DIR / DEVICE / "manifest.yaml")
    onnx = (DEVICES_DIR / DEVICE / manifest.onnx.file).read_bytes()
    sessions = SessionCache(["CPUExecutionProvider"])
    session = sessions.session(DEVICE, lambda: onnx)

    def one(path: Path) -> None:
        image = decode_image(read_dataset(path.read_bytes()))
        item = prepare_2d(image.pixels, image.photometric, manifest.input)
        sessions.run(session, manifest.input.name, np.asarray(item.tensor)[None], 1)

    one(files[0])  # warm-up: torch's import, the session's first run
    started = time.perf_counter()
    for path in files:
        one(path)
    return {"seconds": round(time.perf_counter() - started, 3), "studies": len(files)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.end_to_end.chest_dx")
    parser.add_argument("--studies", type=int, default=30)
    parser.add_argument("--size", type=int, default=2048, help="rows = columns of each image")
    parser.add_argument("--seed", type=int, default=20240101)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        with work_folder(args.work_dir, "aigw-bench-cxr30-") as work:
            (work / "files").mkdir()
            warm_up, files = prepare(work / "files", args.studies, args.size, args.seed)
            bare = run_bare(files)
            gateway = run_gateway(work, warm_up, files, args.timeout)
    except BenchmarkError as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
        return 1
    report = {
        "benchmark": "chest-dx-end-to-end",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_name(with_gpu=False),
        "parameters": {
            "studies": args.studies,
            "image": f"{args.size}×{args.size} DX, 16-bit, explicit VR little endian",
            "device": DEVICE,
            "quiet_period_s": QUIET_PERIOD_S,
            "association": "one storescu association for every study",
            "gateway": "aigw serve, embedded default (folder store, SQLite, in-process worker)",
            "warm": "bare: its first file once before the clock; gateway: one study of its own "
            "through to its results before the clock",
        },
        "bare_loop": bare,
        "gateway": gateway,
        "ratio_bare_vs_jobs_ended": round(bare["seconds"] / gateway["all_jobs_ended_s"], 3),
        "ratio_bare_vs_results_stored": round(bare["seconds"] / gateway["all_results_stored_s"], 3),
        "goal_ratio": 0.1,
    }
    path = write_results(args.out, report["machine"], "chest-dx-e2e", report)
    print(
        f"bare loop {bare['seconds']} s; gateway: jobs ended {gateway['all_jobs_ended_s']} s, "
        f"results stored {gateway['all_results_stored_s']} s; ratios "
        f"{report['ratio_bare_vs_jobs_ended']} / {report['ratio_bare_vs_results_stored']}\n"
        f"results: {path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
