"""The SCP's association loop is pynetdicom's own with one change (it waits for its next
message, or its doorbell, instead of sleeping 1 ms per look): pinned to the pynetdicom
source it copies. A C-STORE-RSP goes out from the association's thread while the DUL thread
waits for data. Neither thread's wait outlasts what it waits for: an association is
accepted and released without a wait running out."""

from __future__ import annotations

import hashlib
import inspect
import queue
import threading
import time
from typing import Any

import pytest
from pynetdicom import evt
from pynetdicom.association import Association
from sqlalchemy import select

from gateway.index.tables import InstanceRow
from gateway.ingest import pdu_limits, reactor
from gateway.ingest.connections import EdgeListener
from gateway.ingest.reactor import Doorbell, WakingQueue, wait_for_item
from tests.ingest.edge_peers import storage_association
from tests.services import ct_instance, make_uid
from workers.serve import Gateway

# sha256 of pynetdicom 3.0.4's Association._run_reactor. When pynetdicom changes it, compare
# the new loop with EdgeAssociation._run_reactor, carry the change over, and pin the new hash.
PYNETDICOM_RUN_REACTOR = "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee"


def test_edge_association_copies_the_installed_pynetdicom_loop() -> None:
    source = inspect.getsource(Association._run_reactor)
    assert hashlib.sha256(source.encode()).hexdigest() == PYNETDICOM_RUN_REACTOR


def test_a_waiting_loop_wakes_when_its_message_arrives_and_takes_nothing() -> None:
    messages: queue.Queue[str] = queue.Queue()
    woke = threading.Event()

    def loop() -> None:
        wait_for_item(messages, timeout=60.0)
        woke.set()

    thread = threading.Thread(target=loop)
    thread.start()
    messages.put("C-STORE-RQ")
    assert woke.wait(timeout=30), "the put did not wake the waiting loop"
    thread.join(timeout=30)
    assert messages.get_nowait() == "C-STORE-RQ"  # still there for the loop to serve


def test_a_queued_primitive_wakes_the_dul() -> None:
    wakes: list[int] = []
    primitives = WakingQueue(lambda: wakes.append(1))
    primitives.put("P-DATA")
    assert wakes == [1] and primitives.queue[0] == "P-DATA"


def test_a_doorbell_wakes_a_waiting_loop_and_a_ring_before_the_wait_is_kept() -> None:
    messages: queue.Queue[str] = queue.Queue()
    doorbell = Doorbell(messages)
    doorbell.ring()  # between two waits: the next one returns at once, and clears it
    woke = threading.Event()

    def loop() -> None:
        wait_for_item(messages, timeout=60.0, doorbell=doorbell)  # the kept ring
        wait_for_item(messages, timeout=60.0, doorbell=doorbell)  # until the next ring
        woke.set()

    thread = threading.Thread(target=loop)
    thread.start()
    assert not woke.wait(timeout=0.2), "the second wait returned with no ring"
    doorbell.ring()
    assert woke.wait(timeout=30), "the ring did not wake the waiting loop"
    thread.join(timeout=30)
    assert messages.empty() and not doorbell.rung


def test_an_association_is_accepted_and_released_without_a_wait_running_out(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every wait of the DUL and association threads is made to last longer than the
    # requestor's ACSE timeout: the association is accepted, and its release answered, only
    # if each thread is woken by what it waits for — the A-ASSOCIATE-RQ admission had read
    # (queued by the DUL behind pynetdicom's transport indication), the release request
    # (handed by the DUL to the association thread) — and not by the end of a wait (~5 ms
    # each, per association, before).
    monkeypatch.setattr(pdu_limits, "IDLE_WAKE_S", 120.0)
    monkeypatch.setattr(reactor, "IDLE_WAKE_S", 120.0)
    study = make_uid("no-wait")
    assoc = storage_association(gateway.parts.settings.dicom_port, acse_timeout_s=20)
    assert assoc.is_established, "the A-ASSOCIATE-AC did not come within the ACSE timeout"
    try:
        instance = ct_instance(study, make_uid(study, "s"), make_uid(study, 1), 1, size=16)
        assert int(assoc.send_c_store(instance).Status) == 0
    finally:
        assoc.release()
    assert assoc.is_released, "the A-RELEASE-RP did not come within the ACSE timeout"


def _queued_primitives(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The classes of the primitives the SCP's associations give their DUL to send (not
    those the DUL hands its association: that queue rings a doorbell)."""
    queued: list[str] = []
    put = WakingQueue.put

    def spy(self: WakingQueue, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if not isinstance(getattr(self._wake, "__self__", None), Doorbell):
            queued.append(type(item).__name__)
        put(self, item, block, timeout)

    monkeypatch.setattr(WakingQueue, "put", spy)
    return queued


def _store(port: int, count: int) -> list[int]:
    study = make_uid("direct-send")
    assoc = storage_association(port)
    assert assoc.is_established
    try:
        return [
            int(
                assoc.send_c_store(
                    ct_instance(study, make_uid(study, "s"), make_uid(study, i), i, size=16)
                ).Status
            )
            for i in range(1, count + 1)
        ]
    finally:
        assoc.release()


def _dul_in_its_wait(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Each response offered to :meth:`GuardedSocket.send_now` once the DUL thread is in
    its wait for data, and whether it went out at once. On a busy machine that thread can
    be late to its wait, or be between two of its waits (each ends after ``IDLE_WAKE_S``),
    and then the response is rightly queued: the test waits for the first and makes the
    second a second apart (what is left is a wait ending in the microseconds between this
    check and send_now's), so that it asks about the path, not the scheduler."""
    monkeypatch.setattr(pdu_limits, "IDLE_WAKE_S", 1.0)
    send_now = pdu_limits.GuardedSocket.send_now
    outcomes: list[bool] = []

    def once_waiting(self: pdu_limits.GuardedSocket, *args: Any) -> bool:
        deadline = time.monotonic() + 30
        while not self._waiting and time.monotonic() < deadline:
            time.sleep(0.001)
        outcomes.append(send_now(self, *args))
        return outcomes[-1]

    monkeypatch.setattr(pdu_limits.GuardedSocket, "send_now", once_waiting)
    return outcomes


def test_a_c_store_response_goes_out_from_the_association_s_thread(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The DUL thread waits for the next request with nothing to send: the response is sent
    # at once (GuardedSocket.send_now), not queued for the DUL thread to wake up and send.
    queued = _queued_primitives(monkeypatch)
    sent_at_once = _dul_in_its_wait(monkeypatch)
    assert _store(gateway.parts.settings.dicom_port, 5) == [0] * 5
    assert sent_at_once == [True] * 5
    assert queued.count("P_DATA") == 0
    assert queued.count("A_ASSOCIATE") == 1 and queued.count("A_RELEASE") == 1
    with gateway.parts.db.session() as session:
        assert len(session.scalars(select(InstanceRow.id)).all()) == 5


def test_with_a_listener_of_sent_pdus_responses_go_through_the_dul(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []

    def bind_listener(self: EdgeListener, *args: Any, **kwargs: Any) -> Any:
        assoc = stock_associate(self, *args, **kwargs)
        assoc.bind(evt.EVT_PDU_SENT, lambda event: sent.append(type(event.pdu).__name__))
        return assoc

    stock_associate = EdgeListener.associate
    monkeypatch.setattr(EdgeListener, "associate", bind_listener)
    queued = _queued_primitives(monkeypatch)
    assert _store(gateway.parts.settings.dicom_port, 2) == [0, 0]
    assert queued.count("P_DATA") == 2  # through the DUL, which triggers EVT_PDU_SENT
    assert sent.count("P_DATA_TF") == 2
