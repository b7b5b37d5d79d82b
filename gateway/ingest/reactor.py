"""pynetdicom's two loops per association, woken by what they wait for instead of polling.

pynetdicom 3.0 runs two threads per association, and both poll: the association thread
sleeps 1 ms before each look at its queue of decoded DIMSE messages, and the DUL thread
sleeps 1 ms whenever a pass over the socket and its queues found nothing to do. On one
association that is idle waiting on every C-STORE — the first PDU read up to 1 ms late, the
decoded message served up to 1 ms late, the response sent up to 1 ms late — a sixth of an
instance's time at ~120 CT slices/s, and each idle association costs CPU a thousand times a
second.

Here the association thread waits on its DIMSE queue's own condition, rung also
(:class:`Doorbell`) when the DUL hands it anything else — a release or abort request, the
A-ASSOCIATE-RQ — so that a release is answered at once, not at the next look; and the DUL
thread waits in ``poll()`` on the socket and a wake pipe that is written whenever a
primitive is queued for sending (:class:`WakingQueue`, :meth:`GuardedSocket.ready
<gateway.ingest.pdu_limits.GuardedSocket.ready>`), never while an event it has queued
itself is still to be acted on. Both still wake every :data:`IDLE_WAKE_S` for what
pynetdicom only notices by looking (the network timeout, the ARTIM timer), which is five
times less often than before when idle.
Everything else is pynetdicom's own: :meth:`EdgeAssociation._run_reactor` is its acceptor
loop with the sleep replaced, and a test pins the pynetdicom source it was copied from.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association

IDLE_WAKE_S = 0.005

LOGGER = logging.getLogger("pynetdicom.assoc")  # pynetdicom's own logger, as in its loop


class WakingQueue(queue.Queue[Any]):
    """The DUL's queue of primitives to send: each ``put`` wakes the DUL thread."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class Doorbell:
    """Wakes a thread waiting in :func:`wait_for_item` on ``items`` for something that does
    not arrive on ``items``; a ring between two waits is kept for the next one."""

    def __init__(self, items: queue.Queue[Any]) -> None:
        self._items = items
        self.rung = False  # read and written under the queue's mutex

    def ring(self) -> None:
        with self._items.not_empty:
            self.rung = True
            self._items.not_empty.notify_all()


def wait_for_item(
    items: queue.Queue[Any], timeout: float, doorbell: Doorbell | None = None
) -> None:
    """Return as soon as ``items`` holds something or ``doorbell`` has rung (since the last
    return), or after ``timeout``; takes nothing."""
    with items.not_empty:  # holds the queue's mutex: look at the deque itself, not qsize()
        if not items.queue and not (doorbell is not None and doorbell.rung):
            items.not_empty.wait(timeout)
        if doorbell is not None:
            doorbell.rung = False


class EdgeAssociation(Association):
    """pynetdicom's acceptor ``Association`` whose loop waits for its messages."""

    # Rung by the DUL's queue to this association (a release or abort request); set with
    # that queue when the association is built (EdgeListener.associate).
    doorbell: Doorbell | None = None
    # The association's audit row being written (gateway.ingest.scp), set when accepted.
    audited: Future[None] | None = None

    def settle(self) -> None:
        """Wait until the association's audit row is written (or its failure logged): before
        a C-STORE is served and before the release is answered."""
        if self.audited is not None:
            self.audited.result()
            self.audited = None  # every later C-STORE: nothing to wait for, no lock taken

    def _run_reactor(self) -> None:
        # pynetdicom 3.0.4's Association._run_reactor, the leading time.sleep(0.001) replaced
        # by a wait for the next decoded message or the doorbell (tests/ingest/test_reactor.py
        # pins it).
        self._is_paused = False
        messages = self.dimse.msg_queue
        while not self._kill:
            wait_for_item(messages, IDLE_WAKE_S, self.doorbell)

            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))

            if self.is_established and self.acse.is_release_requested():
                self.settle()  # not in pynetdicom's loop: see settle
                self.acse.send_release(is_response=True)
                LOGGER.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                LOGGER.info(log_msg)
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()

                self.kill()
                return
