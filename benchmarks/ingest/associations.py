"""What one association costs a receiver: ``python -m benchmarks.ingest.associations``.

A PACS that pushes each radiograph (or each study) on an association of its own pays, per
study, the A-ASSOCIATE round trip, the first C-STORE of a new study and the release, which
the throughput phases of :mod:`benchmarks.ingest` spread over 75 instances an association.
Here Orthanc and ``aigw serve`` (folder + SQLite, two SCP processes) run side by side, idle
between turns, and every round sends to each in turn, the order rotated each round (a slow
spell of a shared machine then hits both alike):

- **one association** from a pynetdicom SCU in this process: ``associate`` and the C-STORE
  of one 512² CT slice of a new study, each timed on its own (its release is not: pynetdicom's
  requestor polls its own threads' end in 10 ms sleeps, whoever the receiver);
- **one sender**: a DCMTK storescu process, one association with one slice of a new study,
  timed from its start to its exit (release included);
- **a batch**: ``--senders`` such storescu processes at once, from the start of the first to
  the end of the last.

Figures are the medians over the rounds after the first (a warm-up); ``vs_orthanc`` is
Orthanc's time ÷ aigw's (above 1: aigw is faster). Every instance sent must be held by its
receiver at the end, or no figure is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import socket
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.transport import AssociationSocket

from benchmarks.environment import RESULTS, machine_name, work_folder, write_results
from benchmarks.errors import BenchmarkError
from benchmarks.ingest.cli import check_tools
from benchmarks.ingest.corpus import CT_SIZE
from benchmarks.ingest.phases import CALLING_AE, send, stop_all
from benchmarks.ingest.receivers import MAX_PDU, Receiver, build_receiver
from benchmarks.ingest.report import environment
from tests.services import CT_IMAGE_STORAGE, ct_instance, make_uid
from tests.services.series import body_slices, write_ct_series

RECEIVERS = ("orthanc", "aigw-folder-2p")
STEPS = ("associate_ms", "first_store_ms", "one_sender_ms", "batch_ms")


@dataclass
class Timings:
    """Each step's milliseconds, one entry per counted round."""

    steps: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STEPS})
    sent: int = 0

    def medians(self) -> dict[str, float]:
        return {step: round(statistics.median(values), 2) for step, values in self.steps.items()}


def one_association(scu: AE, receiver: Receiver, label: str) -> dict[str, float]:
    """Associate, store one slice of a new study, release; milliseconds of the first two."""
    study = make_uid(label)
    instance = ct_instance(study, make_uid(study, "s"), make_uid(study, 1), 1, size=CT_SIZE)
    started = time.perf_counter()
    assoc = scu.associate("127.0.0.1", receiver.port, ae_title=receiver.ae_title)
    associated = time.perf_counter()
    if not assoc.is_established:
        raise BenchmarkError(f"{receiver.name} did not accept the association")
    try:
        status = assoc.send_c_store(instance)
        stored = time.perf_counter()
    finally:
        assoc.release()
    if int(getattr(status, "Status", -1)) != 0:
        raise BenchmarkError(f"{receiver.name} answered the C-STORE with {status}")
    return {
        "associate_ms": (associated - started) * 1000,
        "first_store_ms": (stored - associated) * 1000,
    }


@contextlib.contextmanager
def nodelay_requests() -> Any:
    """pynetdicom's requestor sockets with TCP_NODELAY, as storescu's (``TCP_NODELAY=1``):
    otherwise Nagle holds a short PDU (the A-RELEASE-RQ) behind the receiver's delayed
    acknowledgement, and that wait, the same for every receiver, is what gets timed."""
    create = AssociationSocket._create_socket

    def create_socket(self: AssociationSocket, address: Any) -> socket.socket:
        connection = create(self, address)
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    AssociationSocket._create_socket = create_socket  # type: ignore[method-assign]
    try:
        yield
    finally:
        AssociationSocket._create_socket = create  # type: ignore[method-assign]


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = check_tools(list(RECEIVERS))
    if names != list(RECEIVERS):
        raise BenchmarkError("this benchmark compares aigw with Orthanc: both must run here")
    scu = AE(CALLING_AE)
    scu.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    scu.maximum_pdu_size = MAX_PDU
    timings = {name: Timings() for name in names}
    started = time.perf_counter()
    with (
        work_folder(args.work_dir, "aigw-bench-associations-") as work,
        contextlib.ExitStack() as stack,
    ):
        receivers = [build_receiver(name, work, _no_postgres) for name in names]
        try:
            stack.enter_context(nodelay_requests())
            for receiver in receivers:
                receiver.start()
            for number in range(args.rounds + 1):  # round 0 warms up, uncounted
                turn = receivers[number % 2 :] + receivers[: number % 2]
                for receiver in turn:
                    _round(scu, receiver, timings[receiver.name], work, number, args.senders)
            held = {receiver.name: receiver.stored_instances() for receiver in receivers}
        finally:
            for receiver in receivers:
                stop_all(receiver)
    for name, count in held.items():
        if count != timings[name].sent:
            raise BenchmarkError(f"{name} holds {count} of {timings[name].sent} instances sent")
    medians = {name: t.medians() for name, t in timings.items()}
    orthanc, aigw = medians["orthanc"], medians["aigw-folder-2p"]
    return {
        "benchmark": "associations",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_name(),
        "parameters": {
            "rounds_counted": args.rounds,
            "senders_per_batch": args.senders,
            "instance": f"one {CT_SIZE}x{CT_SIZE} CT slice of a new study per association",
            "scu": "pynetdicom AE, TCP_NODELAY (one association); DCMTK storescu (batch)",
            "max_pdu": MAX_PDU,
            "timing": "wall clock per step; medians over the counted rounds",
            "wall_s": round(time.perf_counter() - started, 1),
        },
        "receivers": {
            name: {"median_ms": medians[name], "rounds_ms": timings[name].steps, "held": held[name]}
            for name in names
        },
        "vs_orthanc": {step: round(orthanc[step] / aigw[step], 2) for step in STEPS},
        "environment": environment(None),
    }


def _round(
    scu: AE, receiver: Receiver, timings: Timings, work: Path, number: int, senders: int
) -> None:
    steps = one_association(scu, receiver, f"assoc-{receiver.name}-{number}")
    files = work / f"files-{receiver.name}-{number}"
    steps["one_sender_ms"] = send(receiver, [_new_study(files / "one")], 1) * 1000
    studies = [_new_study(files / f"batch-{i}") for i in range(senders)]
    steps["batch_ms"] = send(receiver, studies, senders) * 1000
    timings.sent += 2 + senders
    if number == 0:
        return
    for step, value in steps.items():
        timings.steps[step].append(round(value, 2))


def _new_study(folder: Path) -> Path:
    """One CT slice, alone in a study of its own (its folder and the folder above seed its
    UIDs)."""
    (path,) = write_ct_series(
        folder, 1, seed=f"bench-associations-{folder.parent.name}-{folder.name}", size=CT_SIZE,
        pixels=body_slices(CT_SIZE, 1),
    )  # fmt: skip
    return path


def _no_postgres() -> Any:
    raise BenchmarkError("no receiver of this benchmark uses PostgreSQL")


def format_table(report: dict[str, Any]) -> str:
    lines = [
        "| receiver | " + " | ".join(STEPS) + " |",
        "|---|" + "---|" * len(STEPS),
    ]
    for name, figures in report["receivers"].items():
        values = " | ".join(f"{figures['median_ms'][step]:.1f}" for step in STEPS)
        lines.append(f"| {name} | {values} |")
    ratios = " | ".join(f"{report['vs_orthanc'][step]:.2f}" for step in STEPS)
    lines.append(f"| Orthanc ÷ aigw | {ratios} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ingest.associations", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rounds", type=int, default=15, help="counted rounds (default 15)")
    parser.add_argument(
        "--senders", type=int, default=4, help="storescu processes per batch (default 4)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if min(args.rounds, args.senders) < 1:
        parser.error("--rounds and --senders must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except BenchmarkError as exc:
        print(f"associations benchmark: {exc}", file=sys.stderr)
        return 1
    path = write_results(args.out, report["machine"], "associations", report)
    print(format_table(report))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
