"""One round of one receiver: start it on empty storage, send the warm-up, then the CT and
the DX files from K concurrent storescu processes, each phase timed and its CPU split
between receiver, helpers, senders and the rest of the machine; then check that it holds
every instance, and stop it — and wait until nothing it started is still running, so that
its leftovers never run in the next receiver's phases."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.environment import machine_busy_seconds
from benchmarks.errors import BenchmarkError
from benchmarks.ingest.corpus import Corpus, FileSet
from benchmarks.ingest.receivers import MAX_PDU, AigwReceiver, Receiver
from benchmarks.measure import (
    children_cpu_seconds,
    command_line,
    descendants,
    process_table,
    running,
    tree_cpu_seconds,
    tree_cpu_split,
)
from tests.services import storescu_command
from tests.services.dcmtk import dcmtk_env

CALLING_AE = "BENCH_SCU"
# How long a stopped receiver's processes may take to end before they are killed (and the
# run says so): aigw's fork server once finalized torch for ~1 s after the gateway exited,
# 0.8 s of CPU taken from the next receiver's CT phase on 2 cores.
LEFTOVER_TIMEOUT_S = 20.0


@dataclass
class PhaseResult:
    """One kind of file sent to one receiver by K concurrent storescu processes."""

    kind: str
    instances: int
    bytes: int
    seconds: float
    senders: int
    receiver_cpu_s: float
    receiver_system_cpu_s: float  # of receiver_cpu_s: in the kernel (I/O, copies, locks)
    helper_cpu_s: float
    sender_cpu_s: float
    other_cpu_s: float  # everything else busy meanwhile: kernel threads, other processes

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds

    @property
    def receiver_cores_busy(self) -> float:
        """Cores the receiver kept busy (CPU ÷ wall): with its CPU per instance, what its
        instances/s is made of — a receiver can be as cheap per instance as another and
        still slower, when it waits (locks, fsyncs, Python's GIL) where the other computes."""
        return self.receiver_cpu_s / self.seconds

    @property
    def sender_cores_busy(self) -> float:
        return self.sender_cpu_s / self.seconds

    @property
    def other_load(self) -> float:
        """Cores kept busy by anything but this phase's receiver, helpers and senders."""
        return self.other_cpu_s / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            **{
                key: round(value, 3) if isinstance(value, float) else value
                for key, value in asdict(self).items()
            },
            "instances_per_s": round(self.instances_per_s, 2),
            "mb_per_s": round(self.mb_per_s, 2),
            "receiver_cpu_ms_per_instance": round(1000 * self.receiver_cpu_s / self.instances, 3),
            "receiver_user_cpu_ms_per_instance": round(
                1000 * (self.receiver_cpu_s - self.receiver_system_cpu_s) / self.instances, 3
            ),
            "receiver_system_cpu_ms_per_instance": round(
                1000 * self.receiver_system_cpu_s / self.instances, 3
            ),
            "receiver_cores_busy": round(self.receiver_cores_busy, 2),
            "sender_cores_busy": round(self.sender_cores_busy, 2),
            "other_load_cores": round(self.other_load, 2),
        }


@dataclass
class ReceiverResult:
    """Every round of one receiver; the figures reported are the median round's."""

    name: str
    description: dict[str, Any]
    rounds: list[dict[str, PhaseResult]] = field(default_factory=list)
    verified_instances: list[int] = field(default_factory=list)

    def median(self, kind: str) -> PhaseResult:
        samples = sorted((phases[kind] for phases in self.rounds), key=lambda p: p.seconds)
        return samples[(len(samples) - 1) // 2]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "verified_instances": self.verified_instances,
        }
        for kind in ("CT", "DX"):
            out[kind.lower()] = {
                **self.median(kind).as_dict(),
                "rounds_instances_per_s": [
                    round(phases[kind].instances_per_s, 2) for phases in self.rounds
                ],
            }
        return out


def _shares(paths: Sequence[Path], senders: int) -> list[list[Path]]:
    return [share for share in (list(paths[i::senders]) for i in range(senders)) if share]


def send(receiver: Receiver, files: Sequence[Path], senders: int) -> float:
    """Send ``files`` split over ``senders`` concurrent storescu processes; wall seconds from
    the start of the first to the end of the last."""
    shares = _shares(files, senders)
    commands = [
        storescu_command(receiver.port, share, calling_ae=CALLING_AE,
                         called_ae=receiver.ae_title, max_pdu=MAX_PDU)
        for share in shares
    ]  # fmt: skip
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile()) for _ in shares]
        started = time.perf_counter()
        running = [
            subprocess.Popen(command, env=dcmtk_env(), stdout=log, stderr=subprocess.STDOUT)
            for command, log in zip(commands, logs, strict=True)
        ]
        codes = [process.wait() for process in running]
        seconds = time.perf_counter() - started
        for code, log in zip(codes, logs, strict=True):
            log.seek(0)
            output = log.read().decode(errors="replace")
            if code != 0 or "E: " in output:
                raise BenchmarkError(f"storescu → {receiver.name} exited {code}: {output[-2000:]}")
    return seconds


def measure(receiver: Receiver, files: FileSet, senders: int) -> PhaseResult:
    os.sync()  # the previous phase's dirty pages are not this phase's work
    receiver_before = tree_cpu_split(receiver.pids())
    helper_before = tree_cpu_seconds(receiver.helper_pids())
    senders_before = children_cpu_seconds()
    busy_before = machine_busy_seconds()
    seconds = send(receiver, files.paths, senders)
    busy = machine_busy_seconds() - busy_before
    receiver_after = tree_cpu_split(receiver.pids())
    receiver_user = receiver_after[0] - receiver_before[0]
    receiver_system = receiver_after[1] - receiver_before[1]
    helper_cpu = tree_cpu_seconds(receiver.helper_pids()) - helper_before
    sender_cpu = children_cpu_seconds() - senders_before
    return PhaseResult(
        kind=files.kind,
        instances=files.count,
        bytes=files.total_bytes,
        seconds=seconds,
        senders=senders,
        receiver_cpu_s=receiver_user + receiver_system,
        receiver_system_cpu_s=receiver_system,
        helper_cpu_s=helper_cpu,
        sender_cpu_s=sender_cpu,
        other_cpu_s=max(0.0, busy - receiver_user - receiver_system - helper_cpu - sender_cpu),
    )


def verify(receiver: Receiver, expected: int) -> int:
    stored = receiver.stored_instances()
    if stored != expected:
        detail = ""
        if isinstance(receiver, AigwReceiver):
            detail = (
                f" (indexed {receiver.indexed_instances()}, objects "
                f"{receiver.object_count()}, refusals logged {receiver.refusals()})"
            )
        raise BenchmarkError(
            f"{receiver.name} holds {stored} instances, {expected} were sent{detail}: "
            "instances were lost, no figure is reported"
        )
    return stored


def run_round(
    receiver: Receiver, corpus: Corpus, senders: int
) -> tuple[dict[str, PhaseResult], int]:
    """Start the receiver on empty storage, send the warm-up, CT and DX files, check that
    it holds every instance, stop it."""
    phases: dict[str, PhaseResult] = {}
    try:
        receiver.start()
        send(receiver, corpus.warmup.paths, 1)
        for files in (corpus.ct, corpus.dx):
            phases[files.kind] = phase = measure(receiver, files, senders)
            print(
                f"  {receiver.name:<15} {files.kind}: {phase.instances} in {phase.seconds:6.2f} s"
                f" = {phase.instances_per_s:6.1f} inst/s {phase.mb_per_s:6.1f} MB/s   CPU s:"
                f" receiver {phase.receiver_cpu_s:.1f}, helpers {phase.helper_cpu_s:.1f},"
                f" senders {phase.sender_cpu_s:.1f}; other load {phase.other_load:.2f} cores",
                flush=True,
            )
        verified = verify(receiver, corpus.instance_count)
    finally:
        stop_all(receiver)
    return phases, verified


def stop_all(receiver: Receiver) -> None:
    """Stop ``receiver``, then wait for every process it had started to end; those still
    running after :data:`LEFTOVER_TIMEOUT_S` are killed, and the run says so."""
    # Its own processes only: the helpers (a PostgreSQL shared by the run) outlive it.
    table = process_table()
    family = {pid: table[pid].started for pid in descendants(receiver.pids(), table)}
    receiver.stop()
    deadline = time.monotonic() + LEFTOVER_TIMEOUT_S
    left = [pid for pid, started in family.items() if running(pid, started)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [pid for pid in left if running(pid, family[pid])]
    for pid in left:
        print(
            f"WARNING: {receiver.name} left pid {pid} running {LEFTOVER_TIMEOUT_S:.0f} s after "
            f"it stopped ({command_line(pid)[:120]}); killed",
            file=sys.stderr,
            flush=True,
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
