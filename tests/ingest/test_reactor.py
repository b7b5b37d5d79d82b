"""The SCP's association loop is pynetdicom's own with one change (it waits for its next
message instead of sleeping 1 ms per look): pinned to the pynetdicom source it copies."""

from __future__ import annotations

import hashlib
import inspect
import queue
import threading

from pynetdicom.association import Association

from gateway.ingest.reactor import WakingQueue, wait_for_item

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
