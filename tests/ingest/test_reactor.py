"""The SCP's association loop is pynetdicom's own with one change (it waits for its next
message instead of sleeping 1 ms per look): pinned to the pynetdicom source it copies. A
C-STORE request is served in the DUL thread that decoded it, and its response goes out from
there; what that thread does not serve (see EdgeAssociation.serve_now) the association's
thread serves as pynetdicom does, its response going out while the DUL thread waits."""

from __future__ import annotations

import hashlib
import inspect
import queue
import threading
import time
from io import BytesIO
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.presentation import build_context
from sqlalchemy import select

from gateway.index.tables import InstanceRow
from gateway.ingest import pdu_limits
from gateway.ingest.connections import EdgeListener
from gateway.ingest.reactor import EdgeAssociation, WakingQueue, wait_for_item
from pacs_adapters.requestor import associate
from tests.services import CT_IMAGE_STORAGE, ct_instance, make_uid
from workers.serve import Gateway

# sha256 of pynetdicom 3.0.4's Association._run_reactor. When pynetdicom changes it, compare
# the new loop with EdgeAssociation._run_reactor, carry the change over, and pin the new hash.
PYNETDICOM_RUN_REACTOR = "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee"
# Association._serve_request: EdgeAssociation.serve_now repeats its choice of service class
# and serves only what it would not abort on (an abort from the DUL thread never ends).
PYNETDICOM_SERVE_REQUEST = "2f24c1759cdf6c8c433094f2a8dd8144f76f5547f03daed7b94e0f78bc12f877"


@pytest.mark.parametrize(
    ("copied", "pinned"),
    [
        (Association._run_reactor, PYNETDICOM_RUN_REACTOR),
        (Association._serve_request, PYNETDICOM_SERVE_REQUEST),
    ],
)
def test_edge_association_copies_the_installed_pynetdicom_code(copied: Any, pinned: str) -> None:
    assert hashlib.sha256(inspect.getsource(copied).encode()).hexdigest() == pinned


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


def _queued_primitives(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The classes of the primitives the SCP's associations give their DUL to send."""
    queued: list[str] = []
    put = WakingQueue.put

    def spy(self: WakingQueue, item: Any, block: bool = True, timeout: float | None = None) -> None:
        queued.append(type(item).__name__)
        put(self, item, block, timeout)

    monkeypatch.setattr(WakingQueue, "put", spy)
    return queued


def _store(port: int, count: int) -> list[int]:
    study = make_uid("direct-send")
    ae = AE("IRK_CAMI")
    ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    assoc = associate(ae, "127.0.0.1", port, ae_title="AIGW")
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
        in_dul = threading.current_thread() is self.assoc.dul  # served there: it waits not
        while not in_dul and not self._waiting and time.monotonic() < deadline:
            time.sleep(0.001)
        outcomes.append(send_now(self, *args))
        return outcomes[-1]

    monkeypatch.setattr(pdu_limits.GuardedSocket, "send_now", once_waiting)
    return outcomes


def _serving_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """For each request an SCP association serves: "dul" where its DUL thread served it,
    else "association"."""
    threads: list[str] = []
    serve = EdgeAssociation._serve_request

    def spy(self: EdgeAssociation, *args: Any) -> None:
        in_dul = threading.current_thread() is self.dul
        threads.append("dul" if in_dul else "association")
        serve(self, *args)

    monkeypatch.setattr(EdgeAssociation, "_serve_request", spy)
    return threads


def test_a_c_store_is_served_and_answered_by_the_dul_thread(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No hand-off to the association's thread, and the response is sent at once
    # (GuardedSocket.send_now), not queued for the DUL's state machine.
    threads = _serving_threads(monkeypatch)
    queued = _queued_primitives(monkeypatch)
    sent_at_once = _dul_in_its_wait(monkeypatch)
    assert _store(gateway.parts.settings.dicom_port, 5) == [0] * 5
    assert threads == ["dul"] * 5
    assert sent_at_once == [True] * 5
    assert queued.count("P_DATA") == 0
    assert queued.count("A_ASSOCIATE") == 1 and queued.count("A_RELEASE") == 1
    with gateway.parts.db.session() as session:
        assert len(session.scalars(select(InstanceRow.id)).all()) == 5


def test_a_c_store_response_goes_out_from_the_association_s_thread(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A request the DUL thread leaves to the association's: while it is served there, the
    # DUL thread waits for the next request with nothing to send, and the response is sent
    # at once (GuardedSocket.send_now), not queued for the DUL thread to wake up and send.
    monkeypatch.setattr(EdgeAssociation, "serve_now", lambda self, *args: False)
    threads = _serving_threads(monkeypatch)
    queued = _queued_primitives(monkeypatch)
    sent_at_once = _dul_in_its_wait(monkeypatch)
    assert _store(gateway.parts.settings.dicom_port, 5) == [0] * 5
    assert threads == ["association"] * 5
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


def _acceptor(served: list[tuple[Any, int]]) -> EdgeAssociation:
    """An SCP association (no thread started) with CT storage accepted as context 1; what
    its ``_serve_request`` is given goes to ``served``."""
    assoc = EdgeAssociation(AE("AIGW"), "acceptor")
    context = build_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    context.context_id, context.result = 1, 0x00
    assoc._accepted_cx = {1: context}
    assoc._serve_request = lambda msg, context_id: served.append((msg, context_id))  # type: ignore[method-assign]
    return assoc


def _store_request(sop_class: str = CT_IMAGE_STORAGE) -> C_STORE:
    request = C_STORE()
    request.MessageID, request.Priority = 7, 2
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = sop_class, "1.2.3.4.5"
    request.DataSet = BytesIO(b"\0" * 8)
    return request


def test_a_store_request_is_served_in_the_calling_thread() -> None:
    served: list[tuple[Any, int]] = []
    request = _store_request()
    assert _acceptor(served).serve_now(request, 1)
    assert served == [(request, 1)]


def _echo() -> C_ECHO:
    echo = C_ECHO()
    echo.MessageID, echo.AffectedSOPClassUID = 1, "1.2.840.10008.1.1"
    return echo


@pytest.mark.parametrize(
    ("case", "context_id"),
    [
        ("a C-ECHO", 1),
        ("a context never accepted", 3),  # pynetdicom aborts the association
        ("a SOP class no service serves", 1),  # the same
        ("a release sent", 1),
        ("a request queued before it", 1),
        ("a request being served", 1),
        ("the acceptor sending its own", 1),
    ],
)
def test_what_pynetdicom_would_abort_or_serve_later_is_left_to_the_queue(
    case: str, context_id: int
) -> None:
    served: list[tuple[Any, int]] = []
    assoc = _acceptor(served)
    request: Any = _store_request()
    if case == "a C-ECHO":
        request = _echo()
    elif case == "a SOP class no service serves":
        request = _store_request("1.2.3.999")
    elif case == "a release sent":
        assoc._sent_release = True
    elif case == "a request queued before it":
        assoc.dimse.msg_queue.put((1, _echo()))
    elif case == "a request being served":
        assoc._serving.acquire()
    else:
        assoc._reactor_checkpoint.clear()
    assert not assoc.serve_now(request, context_id)
    assert served == []
