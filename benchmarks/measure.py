"""How the benchmarks count: significant digits, nearest-rank percentiles, the CPU time of
this process, of its children and of a process tree, and a timed phase that also records
how busy the rest of the machine was meanwhile."""

from __future__ import annotations

import contextlib
import math
import os
import resource
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.environment import machine_busy_seconds

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def sig(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits (small figures keep their precision)."""
    return float(f"{value:.{digits}g}")


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: an observed value, never an interpolation between two."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_seconds() -> float:
    """CPU of the children this process has waited for (the senders)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _proc_stats() -> dict[int, tuple[int, float, float]]:
    """pid → (parent pid, user CPU seconds, system CPU seconds) for every process we can
    read."""
    stats: dict[int, tuple[int, float, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        # after the command: state ppid ... utime (14th field overall) stime (15th)
        stats[int(entry.name)] = (
            int(fields[1]),
            int(fields[11]) / _CLOCK_TICKS,
            int(fields[12]) / _CLOCK_TICKS,
        )
    return stats


def tree_cpu_split(roots: Sequence[int]) -> tuple[float, float]:
    """User and system CPU seconds used so far by the processes ``roots`` and all their
    descendants."""
    stats = _proc_stats()
    children: dict[int, list[int]] = {}
    for pid, (parent, _user, _system) in stats.items():
        children.setdefault(parent, []).append(pid)
    user = system = 0.0
    pending, seen = list(roots), set()
    while pending:
        pid = pending.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        user += stats[pid][1]
        system += stats[pid][2]
        pending.extend(children.get(pid, []))
    return user, system


def tree_cpu_seconds(roots: Sequence[int]) -> float:
    """CPU seconds used so far by the processes ``roots`` and all their descendants."""
    return sum(tree_cpu_split(roots))


@dataclass
class Phase:
    """Wall clock and CPU of one timed phase."""

    wall_s: float
    cpu_s: float  # this process, all threads
    other_load: float  # cores the rest of the machine kept busy meanwhile


@contextlib.contextmanager
def timed() -> Iterator[list[Phase]]:
    """The phase's figures are in the yielded list once the block has ended."""
    out: list[Phase] = []
    busy, cpu, start = machine_busy_seconds(), process_cpu_seconds(), time.perf_counter()
    yield out
    wall = time.perf_counter() - start
    used = process_cpu_seconds() - cpu
    other = max(0.0, (machine_busy_seconds() - busy - used) / wall)
    out.append(Phase(wall, used, other))
