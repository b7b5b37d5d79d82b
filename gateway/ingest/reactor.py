"""pynetdicom's two loops per association, woken by what they wait for instead of polling.

pynetdicom 3.0 runs two threads per association, and both poll: the association thread
sleeps 1 ms before each look at its queue of decoded DIMSE messages, and the DUL thread
sleeps 1 ms whenever a pass over the socket and its queues found nothing to do. On one
association that is idle waiting on every C-STORE — the first PDU read up to 1 ms late, the
decoded message served up to 1 ms late, the response sent up to 1 ms late — a sixth of an
instance's time at ~120 CT slices/s, and each idle association costs CPU a thousand times a
second.

Here the association thread waits on its DIMSE queue's own condition, and the DUL thread
waits in ``select()`` on the socket and a wake pipe that is written whenever a primitive is
queued for sending (:class:`WakingQueue`, :meth:`GuardedSocket.ready
<gateway.ingest.pdu_limits.GuardedSocket.ready>`). Both still wake every
:data:`IDLE_WAKE_S` for what pynetdicom only notices by looking (a release or abort request,
the network timeout, the ARTIM timer), which is five times less often than before when idle.
A C-STORE request is served in the DUL thread that decoded it (:meth:`EdgeAssociation.serve_now`)
when nothing is queued before it, instead of being queued for the association thread: that
hand-off woke the association thread for every instance (6 % of an SCP process's GIL time
with 4 associations, in the lock release alone), and the response then goes out from the
thread that reads the socket. Anything else, and a C-STORE that pynetdicom would refuse by
aborting (an abort from the DUL thread would wait on that thread forever), is queued.

Everything else is pynetdicom's own: :meth:`EdgeAssociation._run_reactor` is its acceptor
loop with the sleep replaced, and a test pins the pynetdicom source it was copied from.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, cast

from pydicom.uid import UID
from pynetdicom import _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

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


def wait_for_item(items: queue.Queue[Any], timeout: float) -> None:
    """Return as soon as ``items`` holds something, or after ``timeout``; takes nothing."""
    with items.not_empty:  # holds the queue's mutex: look at the deque itself, not qsize()
        if not items.queue:
            items.not_empty.wait(timeout)


class EdgeAssociation(Association):
    """pynetdicom's acceptor ``Association`` whose loop waits for its messages, and whose
    C-STORE requests are served by the thread that decoded them where that keeps their
    order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Held while a request is taken off the queue and served: by the loop, or by
        # serve_now, so that one association serves one request at a time, in order.
        self._serving = threading.Lock()

    def serve_now(self, primitive: Any, context_id: int) -> bool:
        """Serve ``primitive`` in the calling thread (the DUL's), as the loop would: a valid
        C-STORE request under an accepted context whose SOP class pynetdicom's Storage
        service serves, with no request queued or being served before it and no send of
        the acceptor's own under way. False, having done nothing: queue it."""
        if not isinstance(primitive, C_STORE) or not primitive.is_valid_request:
            return False
        if self._sent_release or context_id not in self._accepted_cx:
            return False
        if not self._storage_serves(cast(UID, primitive.AffectedSOPClassUID)):
            return False  # _serve_request would abort
        if self.dimse.msg_queue.queue or not self._reactor_checkpoint.is_set():
            return False
        if not self._serving.acquire(blocking=False):
            return False
        try:
            self._serve_request(primitive, context_id)
        finally:
            self._serving.release()
        return True

    def _storage_serves(self, sop_class: UID) -> bool:
        # _serve_request's choice of service class, in its order.
        if _config.UNRESTRICTED_STORAGE_SERVICE:
            return True
        extended = self.acceptor.accepted_common_extended.get(sop_class)
        service_class = extended[0] if extended else sop_class
        return issubclass(uid_to_service_class(service_class), StorageServiceClass)

    def _run_reactor(self) -> None:
        # pynetdicom 3.0.4's Association._run_reactor, the leading time.sleep(0.001) replaced
        # by a wait for the next decoded message (tests/ingest/test_reactor.py pins it), and
        # the taking and serving of a message under the lock serve_now takes.
        self._is_paused = False
        messages = self.dimse.msg_queue
        while not self._kill:
            wait_for_item(messages, IDLE_WAKE_S)

            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            with self._serving:
                context_id, msg = self.dimse.get_msg(block=False)
                if msg:
                    self._serve_request(msg, cast(int, context_id))

            if self.is_established and self.acse.is_release_requested():
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
