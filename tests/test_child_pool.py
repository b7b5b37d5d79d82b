"""A child pool's processes end with the process that started the pool, even when it is
killed with SIGKILL (``kill -9`` of ``aigw serve``): the pool's children once waited for work
forever, each holding the fork server's pipe open, so that they and the fork server stayed,
with torch in memory, until the machine restarted."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from benchmarks.measure import running
from tests.services.processes import ROOT, wait_until

# Runs as its own program: it starts a pool, prints what it started (pid and start time),
# and kills itself as an operator's `kill -9` would.
_KILLED_WITH_A_POOL = """
import os, signal
from gateway.child_pool import ChildPool
from benchmarks.measure import descendants, process_table
pool = ChildPool("probe", 2, os.getpid, ())
pool.warm()
pool.run(os.getpid)
table = process_table()
family = descendants([os.getpid()], table)
print("started", *(f"{pid}:{table[pid].started}" for pid in family), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_pool_s_processes_end_when_the_process_that_started_it_is_killed(
    tmp_path: Path,
) -> None:
    output = tmp_path / "output"
    with output.open("wb") as sink:  # a file, not a pipe: what is left behind holds it open
        done = subprocess.run(
            [sys.executable, "-c", _KILLED_WITH_A_POOL],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            timeout=180,
            check=False,
        )
    printed = output.read_text(errors="replace")
    assert done.returncode == -signal.SIGKILL, printed[-2000:]
    (line,) = [line for line in printed.splitlines() if line.startswith("started ")]
    started = {int(pid): int(at) for pid, at in (item.split(":") for item in line.split()[1:])}
    # The fork server and at least one child (the resource tracker besides, where started).
    assert len(started) >= 2
    wait_until(
        lambda: not any(running(pid, at) for pid, at in started.items()),
        "the pool's processes to end after their parent was killed",
        timeout_s=60,
    )
