"""The ``memory://`` broker with consumers that sleep until a message can be delivered.

kombu's memory transport has no blocking read: a consumer whose queues are empty sleeps
``polling_interval`` and looks again, so every hop of a study (route, infer, report, deliver)
waited up to that interval before it started, and an idle gateway woke ~100 times a second
per consumer to run kombu code that competes for the GIL with the DICOM associations served
by the same process. Here every change that can make a message deliverable (a put, a restore
or requeue, an ack or reject that frees a prefetch slot, a larger prefetch, a connection
closing) bumps a process-wide generation counter and wakes the waiting consumers; a consumer
notes the generation before it looks, so a put between its failed look and its wait is never
missed. ``polling_interval`` stays as a safety net: a consumer looks again after at most that
long even if nothing woke it.

The queues are the process's (kombu keeps them on the channel class), so the signal is too:
a task sent on the gateway's producer connection wakes the worker's consumer connection.
Wired in by :func:`gateway.jobs.task_queue.create_celery` for ``memory://`` only; Redis keeps
its own blocking reads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from queue import Empty
from time import monotonic
from typing import Any

from kombu.transport import memory

# Celery's broker_transport (kombu resolves "module:Class" as it resolves its own aliases).
TRANSPORT = "gateway.jobs.memory_broker:Transport"


@dataclass
class Wakes:
    """How consumers came by the messages they delivered (tests read it): ``at_once`` on
    their first look, ``signal`` after a change woke them, ``timeout`` after a wait that
    nothing ended but the safety net; ``waits``: how often they slept."""

    at_once: int = 0
    signal: int = 0
    timeout: int = 0
    waits: int = 0


@dataclass
class Deliverable:
    """A generation counter and the condition its waiters sleep on."""

    generation: int = 0
    wakes: Wakes = field(default_factory=Wakes)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def notify(self) -> None:
        with self._changed:
            self.generation += 1
            self._changed.notify_all()

    def wait(self, seen: int, timeout: float | None) -> bool:
        """Sleep until the generation moves past ``seen`` or ``timeout`` passes; True if it
        moved (at once, if it already had)."""
        with self._changed:
            self.wakes.waits += 1
            return self._changed.wait_for(lambda: self.generation != seen, timeout)

    def count(self, how: str) -> None:
        with self._changed:
            setattr(self.wakes, how, getattr(self.wakes, how) + 1)


DELIVERABLE = Deliverable()


class Channel(memory.Channel):
    """kombu's memory channel (the same process-wide queues) that signals every change that
    can let a waiting consumer take a message."""

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        # Restores (basic_recover, a reject with requeue) come through here too.
        super()._put(queue, message, **kwargs)  # type: ignore[no-untyped-call]
        DELIVERABLE.notify()

    def _put_fanout(
        self, exchange: Any, message: Any, routing_key: Any = None, **kwargs: Any
    ) -> None:
        super()._put_fanout(exchange, message, routing_key, **kwargs)  # type: ignore[no-untyped-call]
        DELIVERABLE.notify()

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        # A pool thread acks: a consumer held back by its prefetch limit may take the next.
        super().basic_ack(delivery_tag, multiple=multiple)  # type: ignore[no-untyped-call]
        DELIVERABLE.notify()

    def basic_reject(self, delivery_tag: str, requeue: bool = False) -> None:
        super().basic_reject(delivery_tag, requeue=requeue)  # type: ignore[no-untyped-call]
        DELIVERABLE.notify()

    def basic_qos(self, *args: Any, **kwargs: Any) -> None:
        super().basic_qos(*args, **kwargs)  # type: ignore[no-untyped-call]
        DELIVERABLE.notify()


class Transport(memory.Transport):
    """kombu's memory transport whose ``drain_events`` waits on :data:`DELIVERABLE` instead
    of sleeping ``polling_interval`` between looks."""

    Channel = Channel

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)  # type: ignore[no-untyped-call]
        self.closed = False

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:  # type: ignore[override]
        """Deliver one message; without one within ``timeout`` (None: wait for ever) raise
        ``socket.timeout``, as kombu's virtual transport does. Also raised at once once the
        connection is closed, so a stopping worker's loop sees its state without waiting."""
        started = monotonic()
        how = "at_once"
        while True:
            seen = DELIVERABLE.generation  # before the look: a later put moves it
            try:
                self.cycle.get(self._deliver, timeout=timeout)  # type: ignore[union-attr]
            except Empty:
                pass
            else:
                DELIVERABLE.count(how)
                return
            left = None if timeout is None else timeout - (monotonic() - started)
            if self.closed or (left is not None and left <= 0):
                raise TimeoutError()  # socket.timeout, as kombu raises and Celery expects
            wait = self.polling_interval  # kombu's None: no safety net
            if left is not None:
                wait = left if wait is None else min(wait, left)
            how = "signal" if DELIVERABLE.wait(seen, wait) else "timeout"

    def close_connection(self, connection: Any) -> None:
        self.closed = True
        super().close_connection(connection)  # type: ignore[no-untyped-call]
        DELIVERABLE.notify()
