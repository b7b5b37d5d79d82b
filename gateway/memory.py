"""glibc's malloc told to keep a radiograph's buffers for the next job.

A chest X-ray's results pass ~60 MB through buffers of 5–20 MB each (the windowed image, the
flag image, its RGB copy). glibc serves allocations above its mmap threshold with a fresh
``mmap`` and returns them with ``munmap`` when freed, and trims the heap top above its trim
threshold, so every job touched those pages anew: ~15,000 page faults, about 40 ms of a
flag image's ~55 ms (benchmarks/results_cpu.py reports faults per object). With the mmap
threshold at glibc's maximum (32 MiB on 64-bit) and trimming only past 256 MiB, freed buffers
stay in the heap and the next job reuses them. The price: each of glibc's arenas (one per
thread that allocates, up to 8 per core) may keep up to its own peak, so a worker's resident
size stays near the peak of what its threads held at once, rather than falling between jobs.

Set once in the process that builds results, before the work starts (``aigw serve``,
``demo``, ``worker``), and in each decode child (``gateway.inference.decode_pool``): a job's
instances arrive there as 7–10 MB bytes objects and, read in place, are its largest buffers,
which with glibc's defaults were faulted in afresh each job (a mammography job: ~13,000 page
faults, ~7 ms of system time per image). The other processes started with ``spawn`` or
``forkserver`` (the SCP processes) keep glibc's defaults. A no-op where the C library is not
glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any

log = logging.getLogger(__name__)

# <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD = 32 * 1024 * 1024  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: glibc refuses more
TRIM_THRESHOLD = 256 * 1024 * 1024


def keep_large_buffers() -> bool:
    """True when glibc took both settings; False (and the defaults stay) elsewhere."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not applied:
        log.warning("malloc thresholds not applied: large buffers return to the kernel")
    return applied


def few_arenas(count: int = 2) -> bool:
    """At most ``count`` malloc arenas in this process (True when glibc took it).

    For a child under a memory ceiling (``RLIMIT_AS``) whose work runs on one thread, where
    other threads only wait on the network (an S3 store's GETs side by side): glibc gives
    each thread that allocates an arena of its own, up to 8 per core, and reserves 64 MiB of
    address space for each (128 MiB while it makes one), all counted by the ceiling, which
    eight such threads would have cut by ~0.5 GiB. With two, the work keeps the main arena
    and the waiting threads share the other.
    """
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(M_ARENA_MAX, count))


def _mallopt() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt
