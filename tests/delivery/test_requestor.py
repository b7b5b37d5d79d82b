"""pynetdicom's requestor loses a response when its pause handshake races the association's
loop (pacs_adapters/requestor.py); ours hands the response back to the send that waits.

The race is made to happen every time: the loop's checkpoint is replaced by one that holds
the loop just past its wait (its "paused" flag still up) until the peer's response is on
the queue, then lets the loop take it, exactly as the rare interleaving does. DCMTK's
storescp is the peer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.association import Association

from pacs_adapters.requestor import Requestor, associate
from tests.services import CT_IMAGE_STORAGE, ct_instance, make_uid
from tests.services.dcmtk import Storescp

VERIFICATION = "1.2.840.10008.1.1"
WAIT_S = 10.0


class HeldCheckpoint(threading.Event):
    """The association loop's checkpoint; once armed, it holds the loop on its way out of
    the next wait, where pynetdicom's handshake reads it as paused, until released."""

    def __init__(self) -> None:
        super().__init__()
        self.set()
        self.armed = False
        self.holding = threading.Event()
        self.released = threading.Event()
        self.waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1  # counted on entry: the loop has come round
        passed = super().wait(timeout)
        if self.armed:
            self.armed = False
            self.holding.set()
            self.released.wait(WAIT_S)
        return passed


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.001)


def _racing(assoc: Association, send: Callable[[], Dataset]) -> Dataset:
    """``send()`` with the association's loop taking the response before the send does."""
    checkpoint = HeldCheckpoint()
    assoc._reactor_checkpoint = checkpoint
    _until(lambda: checkpoint.waits > 0, "came round to the new checkpoint")
    checkpoint.armed = True
    assert checkpoint.holding.wait(WAIT_S), "the loop was never held"
    messages = assoc.dimse.msg_queue
    send_msg = assoc.dimse.send_msg

    def send_then_let_the_loop_take(primitive: Any, context_id: int) -> None:
        del assoc.dimse.send_msg  # this send only
        send_msg(primitive, context_id)
        _until(lambda: messages.qsize() > 0, "answered")
        seen = checkpoint.waits
        checkpoint.released.set()
        _until(lambda: checkpoint.waits > seen, "let the loop come round")

    assoc.dimse.send_msg = send_then_let_the_loop_take  # type: ignore[method-assign]
    return send()


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Storescp]:
    storescp = Storescp(tmp_path / "received")
    storescp.start()
    yield storescp
    storescp.stop()


def _ae() -> AE:
    ae = AE("AIGW")
    ae.dimse_timeout = 2  # what the lost response costs the stock requestor
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(CT_IMAGE_STORAGE)
    return ae


def _instance() -> Dataset:
    ds = ct_instance(make_uid("race"), make_uid("race", 1), make_uid("race", 1, 1), size=16)
    return ds


SENDS: dict[str, Callable[[Association], Dataset]] = {
    "C-ECHO": lambda assoc: assoc.send_c_echo(),
    "C-STORE": lambda assoc: assoc.send_c_store(_instance()),
}


@pytest.mark.parametrize("name", list(SENDS))
def test_the_response_taken_by_the_loop_reaches_the_send(peer: Storescp, name: str) -> None:
    assoc = associate(_ae(), "127.0.0.1", peer.port, ae_title=peer.ae_title)
    assert isinstance(assoc, Requestor) and assoc.is_established
    response = _racing(assoc, lambda: SENDS[name](assoc))
    assert response.get("Status") == 0x0000, response
    assert assoc.is_established  # not aborted for a missing response
    assert assoc.send_c_echo().Status == 0x0000  # and the loop serves on
    assoc.release()
    if name == "C-STORE":
        assert peer.received() == [_instance().SOPInstanceUID]


def test_pynetdicoms_own_requestor_loses_it(peer: Storescp) -> None:
    """Pins the race in the pynetdicom we install: when this fails, pynetdicom closed it and
    pacs_adapters/requestor.py can go."""
    assoc = _ae().associate("127.0.0.1", peer.port, ae_title=peer.ae_title)
    assert type(assoc) is Association and assoc.is_established
    response = _racing(assoc, assoc.send_c_echo)
    assert "Status" not in response
    assert assoc.is_aborted
