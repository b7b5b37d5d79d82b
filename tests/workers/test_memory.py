"""gateway.memory: with the workers' malloc thresholds a freed radiograph-sized buffer is
reused by the next job instead of being faulted in afresh."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.memory import keep_large_buffers

# Two "jobs" in a long-lived pool thread, as the results pool runs them, each holding what a
# radiograph's flag image holds (the image as float32 and as stored, the RGB flag, the grey
# one: ~55 MB in 5–20 MB buffers) and freeing it; the second job's minor page faults say
# whether the first job's memory was kept.
PROGRAM = """
import json, resource, sys
from concurrent.futures import ThreadPoolExecutor
import numpy as np
from gateway.memory import keep_large_buffers
applied = keep_large_buffers() if sys.argv[1] == "tuned" else False

def job():
    image = np.ones((2500, 2048), dtype=np.float32)
    stored = np.ones((2500, 2048), dtype=np.uint16)
    flag = np.ones((2000, 1638, 3), dtype=np.uint8)
    del image
    grey = np.ones((2500, 2048), dtype=np.uint8)
    del stored, flag, grey

pool = ThreadPoolExecutor(1)
pool.submit(job).result()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
pool.submit(job).result()
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({"applied": applied, "faults": after - before}))
"""


def _second_job(mode: str) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True
    )
    result: dict[str, int] = json.loads(out.stdout)
    return result


def _huge_pages_always() -> bool:
    try:
        setting = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False
    return "[always]" in setting


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
@pytest.mark.skipif(
    _huge_pages_always(),
    reason="transparent huge pages 'always': freed buffers fault back in a few 2 MiB pages, "
    "too few to tell kept memory from returned by counting faults",
)
def test_freed_large_buffers_are_reused() -> None:
    tuned, default = _second_job("tuned"), _second_job("default")
    assert tuned["applied"]
    # By default glibc hands part of the freed memory back (buffers above its mmap threshold,
    # and the heap top past its trim threshold), so the next job faults it in again.
    assert default["faults"] > 1000
    assert tuned["faults"] * 10 < default["faults"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_settings_are_accepted_again() -> None:
    assert keep_large_buffers()
    assert keep_large_buffers()  # idempotent: the CLI and a benchmark may both call it


# Eight threads allocate at once, as an S3 store's GETs side by side do in a decode child:
# the address space that adds (MiB), with glibc's arenas as they are and with two at most.
ARENAS = """
import json, sys, threading
from gateway.memory import few_arenas, keep_large_buffers
keep_large_buffers()
applied = few_arenas() if sys.argv[1] == "few" else False

def vm_size_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmSize:")) // 1024

holding = threading.Barrier(9)  # eight threads and this one
done = threading.Event()
def get():
    buffers = [bytearray(64 * 1024) for _ in range(8)]  # a response read, in pieces
    holding.wait(30)
    done.wait(30)
    del buffers

before = vm_size_mib()
threads = [threading.Thread(target=get) for _ in range(8)]
for thread in threads:
    thread.start()
holding.wait(30)
added = vm_size_mib() - before
done.set()
for thread in threads:
    thread.join()
print(json.dumps({"applied": applied, "added_mib": added}))
"""


def _eight_threads(mode: str) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", ARENAS, mode], capture_output=True, text=True, check=True
    )
    result: dict[str, int] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
@pytest.mark.skipif(
    "MALLOC_ARENA_MAX" in os.environ or "arena_max" in os.environ.get("GLIBC_TUNABLES", ""),
    reason="the environment already bounds glibc's arenas: no default to compare with",
)
def test_threads_that_wait_share_one_arena_in_a_child_under_a_memory_ceiling() -> None:
    few, default = _eight_threads("few"), _eight_threads("default")
    assert few["applied"]
    # glibc's default: an arena (64 MiB reserved) per thread that allocates, up to 8 per
    # core; what the README says a child's ceiling pays: 8 stacks and one arena.
    assert default["added_mib"] >= 8 * 64
    assert few["added_mib"] <= 8 * _thread_stack_mib() + 64 + 8


def _thread_stack_mib() -> int:
    # glibc's default thread stack: the stack limit, or 32 MiB where that is unlimited
    soft, _hard = resource.getrlimit(resource.RLIMIT_STACK)
    return 32 if soft == resource.RLIM_INFINITY else max(1, soft // 2**20)
