"""Which SCP process takes the next connection on the port they share.

With ``scp_processes`` > 1 every process waits on the same listening socket (the main process
binds it; the others get it when they start). A connection wakes them all, and the first to
call ``accept`` has it. Left at that, or with a socket per process under ``SO_REUSEPORT``
(whose kernel hash placed four connections 2:2 only 3 times in 8, measured), one process
could hold three or four associations while another idles, and the busy one is bounded by
its own GIL. So each process publishes its load (connections pending plus associations
running) in shared memory, and a process more loaded than the least loaded other one waits
``grace_s`` before it accepts: the lighter one takes the connection meanwhile, and if it
does not (busy, stopping, dead), the heavier one accepts after the wait. Nothing is ever
refused or left unaccepted by the balance.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from typing import Any

NOT_ACCEPTING = -1  # a process that has not started accepting yet (or has stopped)


class AcceptBalance:
    """The loads of the SCP processes, one slot each, in shared memory (the object reaches
    the processes started with the ``spawn`` context as an argument of ``Process``)."""

    def __init__(self, processes: int) -> None:
        self._loads: Any = multiprocessing.get_context("spawn").Array(
            "q", [NOT_ACCEPTING] * processes
        )

    def seat(self, index: int, grace_s: float) -> Seat:
        return Seat(self, index, grace_s)

    def loads(self) -> list[int]:
        return list(self._loads)

    def publish(self, index: int, load: int) -> None:
        self._loads[index] = load


@dataclass(frozen=True)
class Seat:
    """One process's place in the balance."""

    balance: AcceptBalance
    index: int
    grace_s: float

    def publish(self, load: int) -> None:
        self.balance.publish(self.index, load)

    def leave(self) -> None:
        self.balance.publish(self.index, NOT_ACCEPTING)

    def should_wait(self, load: int) -> bool:
        """Whether another accepting process carries less than ``load``."""
        others = [
            value
            for index, value in enumerate(self.balance.loads())
            if index != self.index and value != NOT_ACCEPTING
        ]
        return bool(others) and load > min(others)
