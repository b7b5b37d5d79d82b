"""benchmarks.measure: a process tree's CPU, split into user and system time."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from benchmarks.measure import tree_cpu_seconds, tree_cpu_split

# Burns CPU in the interpreter (sums; no clock reads, which can be system calls in a VM),
# then waits: alive, so still in its parent's tree.
CHILD = "for _ in range(40): sum(range(1_000_000))\nimport time\ntime.sleep(30)\n"


def test_a_childs_cpu_counts_in_its_parents_tree_as_user_time() -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD])
    try:
        deadline = time.monotonic() + 20
        while tree_cpu_split([child.pid])[0] < 0.2:
            assert time.monotonic() < deadline, "the child never burned its CPU"
            time.sleep(0.05)
        child_user, child_system = tree_cpu_split([child.pid])
        assert child_user > child_system  # the interpreter's work: user time
        assert tree_cpu_split([os.getpid()])[0] >= child_user  # the child is in the tree
        assert tree_cpu_seconds([child.pid]) >= child_user + child_system
    finally:
        child.kill()
        child.wait()


def test_a_process_that_is_gone_counts_nothing() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert tree_cpu_split([child.pid]) == (0.0, 0.0)
