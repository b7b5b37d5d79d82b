"""The free space under a folder store's root, asked for every received instance against
the store's floor (``min_free_bytes``): :class:`FreeSpace`."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

FREE_SPACE_TTL_S = 0.25  # how old a reading may be while far above the floor


class FreeSpace:
    """The free space under a folder, read at most every :data:`FREE_SPACE_TTL_S` while
    well above the floor: a ``statfs`` per instance was ~2 % of an SCP thread's time. What
    this process staged since the reading is taken off it (not what other processes wrote
    in those 0.25 s), and an answer below the floor is always a fresh reading, so a refusal
    never comes from a stale one; a reading that fails answers no room and is not kept."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._spent = 0  # bytes this process staged, ever
        # (free bytes, when read, _spent then): replaced whole, so that a thread never
        # pairs one reading's time with another's figure while statfs runs in another.
        self._reading = (0, -FREE_SPACE_TTL_S, 0)

    def spent(self, size: int) -> None:
        self._spent += size  # a lost update between threads only ages the estimate

    def at_least(self, floor: int) -> bool:
        free, read_at, spent_then = self._reading
        fresh = time.monotonic() - read_at < FREE_SPACE_TTL_S
        if fresh and free - (self._spent - spent_then) >= floor:
            return True
        spent_now = self._spent
        free = shutil.disk_usage(self._root).free  # OSError: the caller answers no room
        self._reading = (free, time.monotonic(), spent_now)
        return free >= floor
