"""How the benchmarks count: significant digits, nearest-rank percentiles, the CPU time of
this process, of its children and of a process tree (one reading of ``/proc``: which
processes a tree holds, whether one still runs), and a timed phase that also records how busy
the rest of the machine was meanwhile."""

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


@dataclass(frozen=True)
class ProcessStat:
    """What ``/proc/<pid>/stat`` says of a process (proc(5) fields 3, 4, 14, 15 and 22)."""

    state: str  # "Z": a zombie, ended and waiting to be reaped
    parent: int
    user_s: float
    system_s: float
    started: int  # clock ticks since boot: with the pid, which process this is


def process_table() -> dict[int, ProcessStat]:
    """Every process this one can read, by pid: one pass over ``/proc``."""
    table: dict[int, ProcessStat] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            table[int(entry.name)] = stat
    return table


def descendants(roots: Sequence[int], table: dict[int, ProcessStat] | None = None) -> list[int]:
    """Every process started, directly or not, by ``roots`` (not the roots), as ``table``
    (else ``/proc`` now) shows them: read before they stop, since an orphan is re-parented
    and its line to them lost."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, stat in table.items():
        children.setdefault(stat.parent, []).append(pid)
    found: dict[int, None] = {}  # in the order found
    pending = [child for root in roots for child in children.get(root, [])]
    while pending:
        pid = pending.pop()
        if pid not in found:
            found[pid] = None
            pending.extend(children.get(pid, []))
    return list(found)


def running(pid: int, started: int | None = None) -> bool:
    """``pid`` exists and is not a zombie; with ``started`` (:attr:`ProcessStat.started`),
    only if it is still that process, not a later one that was given its number."""
    stat = _stat(pid)
    return stat is not None and stat.state != "Z" and started in (None, stat.started)


def command_line(pid: int) -> str:
    with contextlib.suppress(OSError):
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    return ""


def _stat(pid: int) -> ProcessStat | None:
    """None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after the command, which may hold spaces
    return ProcessStat(
        state=fields[0],
        parent=int(fields[1]),
        user_s=int(fields[11]) / _CLOCK_TICKS,
        system_s=int(fields[12]) / _CLOCK_TICKS,
        started=int(fields[19]),
    )


def tree_cpu_split(roots: Sequence[int]) -> tuple[float, float]:
    """User and system CPU seconds used so far by the processes ``roots`` and all their
    descendants."""
    table = process_table()
    tree = [pid for pid in roots if pid in table] + descendants(roots, table)
    return sum(table[pid].user_s for pid in tree), sum(table[pid].system_s for pid in tree)


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
