"""pynetdicom's requestor association with its one race closed: a response is never lost.

pynetdicom 3.0 runs a loop on every association that takes each decoded DIMSE message and
serves it as a request; a ``send_c_*()`` call pauses that loop while it waits for its own
response. The pause is a handshake on a flag that the loop raises just before each wait on
its checkpoint and lowers just after: a send that clears the checkpoint in the instant
between the loop's wait returning and the flag going down sees the loop "paused" and sends,
and the loop then takes the response off the queue itself, logs "Received unexpected C-ECHO
service message" and drops it. The send waits out the whole DIMSE timeout and reports no
status (pydicom/pynetdicom#875 shows it for C-FIND; a fast peer makes it likelier). For
result delivery that is a C-STORE the peer did store, reported as failed, sent again later.

:class:`Requestor` puts such a response back at the head of the queue, where the waiting
send takes it: a message that is not a request, taken while a send holds the loop paused,
can only be that send's. Anything else is pynetdicom's own. :func:`associate` is
``AE.associate`` returning one; tests/delivery/test_requestor.py reproduces the race
and pins it against the stock class.
"""

from __future__ import annotations

from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association


class Requestor(Association):
    """A requestor ``Association`` whose loop hands back a response it took by mistake."""

    def _serve_request(self, msg: Any, context_id: int) -> None:
        if not msg.is_valid_request and not self._reactor_checkpoint.is_set():
            _put_back(self, context_id, msg)
            return
        super()._serve_request(msg, context_id)


def _put_back(assoc: Association, context_id: int, msg: Any) -> None:
    """``(context_id, msg)`` first in the association's DIMSE queue, the waiter woken."""
    messages = assoc.dimse.msg_queue
    with messages.not_empty:  # the queue's own mutex: its deque and its waiters together
        messages.queue.appendleft((context_id, msg))
        messages.unfinished_tasks += 1
        messages.not_empty.notify()


def adopt(assoc: Association) -> Association:
    """Make a requestor association pynetdicom built a :class:`Requestor`. Safe while its
    loop runs: the loop looks the method up on each message, and no send has yet begun."""
    assoc.__class__ = Requestor
    return assoc


def associate(ae: AE, host: str, port: int, **kwargs: Any) -> Association:
    """``ae.associate(host, port, **kwargs)``, the association a :class:`Requestor`."""
    return adopt(ae.associate(host, port, **kwargs))
