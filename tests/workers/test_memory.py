"""gateway.memory: with the workers' malloc thresholds a freed radiograph-sized buffer is
reused by the next job instead of being faulted in afresh."""

from __future__ import annotations

import json
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
