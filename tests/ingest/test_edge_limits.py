"""The DICOM edge under connections that misbehave, against an in-process gateway: declared
lengths refused before their bodies are read, idle connections closed and not counted as
associations, connections per peer capped, oversized instances refused with a status. Each
refusal is logged once and counted; after each, the gateway still answers."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterator

import httpx
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import select

from gateway.index.tables import InstanceRow
from gateway.ingest.pdu_limits import (
    COMMAND_CAP,
    MAX_UNANSWERED,
    REQUEST_CAP,
    LimitExceeded,
    MessageLimits,
    read_plain,
    wait_readable,
)
from gateway.ingest.refusals import Refusal
from gateway.ingest.scp import DicomServer
from gateway.settings import Settings
from pacs_adapters.requestor import associate
from tests.ingest.edge_peers import (
    A_ABORT,
    association_request,
    command_set,
    echo,
    echo_request,
    is_open,
    p_data,
    pdv,
    raw_connection,
    read_until_closed,
    verification_association,
    wait_until,
)
from tests.services import CT_IMAGE_STORAGE, ct_instance, free_port, make_uid, wait_for_port
from workers.serve import Gateway

StartGateway = Callable[..., Gateway]


def _scp(gateway: Gateway) -> DicomServer:
    assert gateway.scp is not None
    return gateway.scp


def _refused(gateway: Gateway, reason: Refusal) -> int:
    return _scp(gateway).report.counters.refusals()[reason]


def _edge_lines(caplog: pytest.LogCaptureFixture, reason: Refusal) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "gateway.ingest.refusals" and r.__dict__.get("reason") == reason.value
    ]


@pytest.fixture
def edge(
    make_settings: Callable[..., Settings], start_gateway: StartGateway
) -> Callable[..., Gateway]:
    def start(**overrides: object) -> Gateway:
        return start_gateway(make_settings(**overrides))

    return start


# --- the pure accounting -------------------------------------------------------------------


def _store_command(message_id: int) -> bytes:
    return command_set(0x0001, message_id, has_dataset=True, sop_class=CT_IMAGE_STORAGE)


def _body(pdu: bytes) -> bytes:
    return pdu[6:]


def test_declared_lengths_are_checked_against_the_caps() -> None:
    limits = MessageLimits(max_pdu=16384, max_instance=1 << 20)
    limits.check_header(0x04, 16384 + 6)
    with pytest.raises(LimitExceeded) as too_long:
        limits.check_header(0x04, 16384 + 7)
    assert too_long.value.reason == Refusal.PDU_TOO_LARGE
    limits.check_header(0x05, 4)
    with pytest.raises(LimitExceeded):
        limits.check_header(0x01, REQUEST_CAP + 1)  # a second A-ASSOCIATE-RQ, say


def test_an_oversized_store_dataset_is_drained_and_remembered_by_message_id() -> None:
    limits = MessageLimits(max_pdu=65536, max_instance=10_000)
    assert _body(p_data(pdv(1, 0x03, _store_command(7)))) == limits.received(
        _body(p_data(pdv(1, 0x03, _store_command(7))))
    )
    first = _body(p_data(pdv(1, 0x00, b"a" * 6000)))
    assert limits.received(first) == first  # under the limit: untouched
    second = _body(p_data(pdv(1, 0x00, b"b" * 6000), pdv(1, 0x02, b"c" * 10)))
    drained = limits.received(second)
    # both fragments past the limit arrive empty, their control headers intact
    assert drained == _body(p_data(pdv(1, 0x00, b""), pdv(1, 0x02, b"")))
    assert limits.take_oversized(7) == 12_010
    assert limits.take_oversized(7) is None
    # the next message is whole again
    limits.received(_body(p_data(pdv(1, 0x03, _store_command(8)))))
    kept = _body(p_data(pdv(1, 0x02, b"d" * 100)))
    assert limits.received(kept) == kept
    assert limits.take_oversized(8) is None


def test_command_sets_other_datasets_and_unanswered_requests_are_bounded() -> None:
    limits = MessageLimits(max_pdu=1 << 20, max_instance=1 << 30)
    with pytest.raises(LimitExceeded) as command:
        limits.received(_body(p_data(pdv(1, 0x01, b"x" * (COMMAND_CAP + 1)))))
    assert command.value.reason == Refusal.MESSAGE_TOO_LARGE
    limits = MessageLimits(max_pdu=1 << 20, max_instance=1 << 30)
    find = command_set(0x0020, 1, has_dataset=True, sop_class="1.2.840.10008.5.1.4.1.2.2.1")
    limits.received(_body(p_data(pdv(1, 0x03, find))))
    with pytest.raises(LimitExceeded) as dataset:  # kept in memory by pynetdicom: small cap
        limits.received(_body(p_data(pdv(1, 0x00, b"y" * 70_000))))
    assert dataset.value.reason == Refusal.MESSAGE_TOO_LARGE
    limits = MessageLimits(max_pdu=1 << 20, max_instance=1 << 30)
    for message_id in range(1, MAX_UNANSWERED + 1):
        limits.received(_body(echo_request(message_id)))
    limits.sent(echo_request(99))  # a response answers one of them
    limits.received(_body(echo_request(MAX_UNANSWERED + 1)))
    with pytest.raises(LimitExceeded) as unanswered:
        limits.received(_body(echo_request(MAX_UNANSWERED + 2)))
    assert unanswered.value.reason == Refusal.UNANSWERED_REQUESTS


def test_malformed_items_pass_unchanged_for_pynetdicom_to_refuse() -> None:
    limits = MessageLimits(max_pdu=65536, max_instance=10)
    broken = struct.pack(">IBB", 1000, 1, 0) + b"short"
    assert limits.received(broken) == broken


# --- before the association ------------------------------------------------------------------


def test_an_association_request_declaring_4_gib_is_aborted_unread(
    edge: Callable[..., Gateway], caplog: pytest.LogCaptureFixture
) -> None:
    gateway = edge()
    port = gateway.parts.settings.dicom_port
    with raw_connection(port) as connection:
        connection.sendall(bytes.fromhex("0100FFFFFFF0") + b"\0" * 4096)
        assert read_until_closed(connection) == A_ABORT
    assert _refused(gateway, Refusal.REQUEST_TOO_LARGE) == 1
    (line,) = _edge_lines(caplog, Refusal.REQUEST_TOO_LARGE)
    assert line.__dict__["peer"] == "127.0.0.1" and "4294967280" in line.__dict__["detail"]
    assert echo(port) == 0


def test_a_first_pdu_that_is_not_an_association_request_is_aborted(
    edge: Callable[..., Gateway],
) -> None:
    gateway = edge()
    port = gateway.parts.settings.dicom_port
    with raw_connection(port) as connection:
        connection.sendall(echo_request(1))
        assert read_until_closed(connection) == A_ABORT
    with raw_connection(port) as connection:  # an HTTP client on the DICOM port
        connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_until_closed(connection) == A_ABORT
    assert _refused(gateway, Refusal.NOT_A_REQUEST) == 2
    assert echo(port) == 0


def test_silent_and_dribbling_connections_are_closed_at_the_request_timeout(
    edge: Callable[..., Gateway], caplog: pytest.LogCaptureFixture
) -> None:
    gateway = edge(dicom_request_timeout_s=0.5)
    port = gateway.parts.settings.dicom_port
    request = association_request()
    with raw_connection(port) as silent, raw_connection(port) as dribbling:
        dribbling.sendall(request[:100])
        assert read_until_closed(silent) == b""
        assert read_until_closed(dribbling) == b""
    assert _refused(gateway, Refusal.REQUEST_TIMEOUT) == 2
    details = sorted(r.__dict__["detail"] for r in _edge_lines(caplog, Refusal.REQUEST_TIMEOUT))
    assert details == ["100 bytes of the A-ASSOCIATE-RQ in time", "nothing received"]
    assert echo(port) == 0


def test_connections_per_peer_address_are_capped_at_accept(
    edge: Callable[..., Gateway],
) -> None:
    gateway = edge(max_connections_per_peer=3, dicom_request_timeout_s=60)
    port = gateway.parts.settings.dicom_port
    with (
        raw_connection(port) as first,
        raw_connection(port) as second,
        raw_connection(port) as third,
    ):
        with raw_connection(port) as fourth:
            assert read_until_closed(fourth) == b""  # closed at once, not at the timeout
        assert echo(port) is None  # 127.0.0.1 is at its cap ...
        assert echo(port, source="127.0.0.2") == 0  # ... another address is not
        assert all(is_open(c) for c in (first, second, third))
    assert _refused(gateway, Refusal.PEER_CONNECTIONS) == 2
    # the idle ones are gone: the address may connect again
    assert wait_until(lambda: echo(port) == 0)


def test_idle_connections_do_not_count_against_max_associations(
    edge: Callable[..., Gateway],
) -> None:
    gateway = edge(max_associations=2, dicom_request_timeout_s=60)
    port = gateway.parts.settings.dicom_port
    idle = [socket.create_connection(("127.0.0.1", port), source_address=(f"127.0.0.{n}", 0))
            for n in range(2, 6) for _ in range(8)]  # fmt: skip
    held = []
    try:
        for _ in range(2):
            assoc = verification_association(port)
            assert assoc.is_established
            held.append(assoc)
        third = verification_association(port)
        assert third.is_rejected  # the limit counts associations, and only those
        assert _refused(gateway, Refusal.ASSOCIATION_LIMIT) == 1
        assert all(is_open(c) for c in idle)
    finally:
        for assoc in held:
            assoc.release()
        for connection in idle:
            connection.close()
    assert wait_until(lambda: echo(port) == 0)


# --- during the association ---------------------------------------------------------------


def test_a_p_data_declaring_2_gib_aborts_the_association(
    edge: Callable[..., Gateway], caplog: pytest.LogCaptureFixture
) -> None:
    gateway = edge()
    port = gateway.parts.settings.dicom_port
    assoc = verification_association(port)
    assert assoc.is_established
    raw = assoc.dul.socket.socket  # type: ignore[union-attr]
    assert raw is not None
    raw.sendall(bytes.fromhex("04007FFFFFFF") + b"\0" * 4096)
    assert wait_until(lambda: assoc.is_aborted)
    assert _refused(gateway, Refusal.PDU_TOO_LARGE) == 1
    (line,) = _edge_lines(caplog, Refusal.PDU_TOO_LARGE)
    assert line.__dict__["calling_ae"] == "IRK_CAMI"
    assert echo(port) == 0


def _associated(connection: socket.socket) -> None:
    connection.sendall(association_request())
    accept = connection.recv(6)
    assert accept[0] == 0x02  # A-ASSOCIATE-AC
    with_body = struct.unpack(">I", accept[2:6])[0]
    while with_body:
        with_body -= len(connection.recv(with_body))


def test_a_pdu_header_read_ahead_with_the_one_before_is_still_checked(
    edge: Callable[..., Gateway],
) -> None:
    # One write: a C-ECHO and a P-DATA-TF declaring 2 GiB, whose header the SCP reads in
    # the same call as the echo's PDU (READ_AHEAD): aborted all the same, nothing allocated
    # (whether the echo is answered first is a race, as it was with a read per PDU).
    gateway = edge()
    port = gateway.parts.settings.dicom_port
    with raw_connection(port) as connection:
        _associated(connection)
        connection.sendall(echo_request(1) + bytes.fromhex("04007FFFFFFF") + b"\0" * 4096)
        tail = read_until_closed(connection)
    assert tail.endswith(A_ABORT)
    assert _refused(gateway, Refusal.PDU_TOO_LARGE) == 1
    assert echo(port) == 0


def test_requests_in_one_write_are_each_answered(edge: Callable[..., Gateway]) -> None:
    # Several PDUs per read, headers split across reads: every one decoded and answered.
    gateway = edge()
    port = gateway.parts.settings.dicom_port
    count = MAX_UNANSWERED
    with raw_connection(port) as connection:
        _associated(connection)
        connection.sendall(b"".join(echo_request(n) for n in range(1, count + 1)))
        answers = bytearray()
        while answers.count(b"\x00\x00\x20\x01\x02\x00\x00\x00") < count:  # (0000,0120)
            chunk = connection.recv(65536)
            assert chunk, "closed before every request was answered"
            answers += chunk
    assert all(
        answers.find(struct.pack("<HHIH", 0, 0x0120, 2, n)) >= 0 for n in range(1, count + 1)
    )
    assert _refused(gateway, Refusal.UNANSWERED_REQUESTS) == 0


def test_requests_sent_without_waiting_for_responses_abort_the_association(
    edge: Callable[..., Gateway],
) -> None:
    gateway = edge()
    port = gateway.parts.settings.dicom_port
    with raw_connection(port) as connection:
        connection.sendall(association_request())
        accept = connection.recv(6)
        assert accept[0] == 0x02  # A-ASSOCIATE-AC
        with_body = struct.unpack(">I", accept[2:6])[0]
        while with_body:
            with_body -= len(connection.recv(with_body))
        connection.sendall(b"".join(echo_request(n) for n in range(1, 201)))
        tail = read_until_closed(connection)
    assert tail.endswith(A_ABORT)
    assert _refused(gateway, Refusal.UNANSWERED_REQUESTS) == 1
    assert echo(port) == 0


def test_an_instance_over_max_instance_bytes_is_refused_with_a_status(
    edge: Callable[..., Gateway], caplog: pytest.LogCaptureFixture
) -> None:
    gateway = edge(max_instance_bytes=64 * 1024)
    study, series = make_uid("edge-big-study"), make_uid("edge-big-series")
    big = ct_instance(study, series, make_uid("edge-big", 1), size=256)  # 128 KiB of pixels
    small = ct_instance(study, series, make_uid("edge-big", 2), 2, size=16)
    ae = AE("IRK_CAMI")
    ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    assoc = associate(ae, "127.0.0.1", gateway.parts.settings.dicom_port, ae_title="AIGW")
    assert assoc.is_established
    try:
        refused = assoc.send_c_store(big)
        assert int(refused.Status) == 0xA700
        assert "over 65536 bytes" in str(refused.ErrorComment)
        assert int(assoc.send_c_store(small).Status) == 0x0000  # the association goes on
    finally:
        assoc.release()
    with gateway.parts.db.session() as session:
        stored = session.scalars(select(InstanceRow.sop_instance_uid)).all()
    assert stored == [small.SOPInstanceUID]
    assert _refused(gateway, Refusal.INSTANCE_TOO_LARGE) == 1
    (line,) = _edge_lines(caplog, Refusal.INSTANCE_TOO_LARGE)
    assert line.__dict__["calling_ae"] == "IRK_CAMI"


def test_refusals_are_counted_in_metrics(edge: Callable[..., Gateway]) -> None:
    port = free_port()
    gateway = edge(http_port=port)
    wait_for_port(port)
    with raw_connection(gateway.parts.settings.dicom_port) as connection:
        connection.sendall(bytes.fromhex("0100FFFFFFF0"))
        read_until_closed(connection)
    assert echo(gateway.parts.settings.dicom_port, calling_ae="STRANGER") is None
    assert echo(gateway.parts.settings.dicom_port) == 0
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    assert 'aigw_dicom_refusals_total{reason="request_too_large",stage="connection"} 1.0' in metrics
    assert 'aigw_dicom_refusals_total{reason="calling_ae",stage="association"} 1.0' in metrics
    assert "aigw_dicom_associations_accepted_total 1.0" in metrics


def test_a_check_that_fails_rejects_the_association(
    edge: Callable[..., Gateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom accepts when the request handler raises; ours rejects instead."""
    gateway = edge()

    def probe_crashes() -> bool:
        raise RuntimeError("free-space probe crashed")

    monkeypatch.setattr(gateway.parts.store, "has_room", probe_crashes)
    assoc = verification_association(gateway.parts.settings.dicom_port)
    assert assoc.is_rejected and not assoc.is_established


# --- reading a plain socket --------------------------------------------------------------


@pytest.fixture
def high_socket() -> Iterator[tuple[int, socket.socket]]:
    """A socket on descriptor 1500 and its peer. A busy gateway holds more than FD_SETSIZE
    (1024) descriptors: select() refuses such a descriptor, poll() does not."""
    ours, peer = socket.socketpair()
    high = 1500
    try:
        os.dup2(ours.fileno(), high)
    except OSError as exc:  # the soft limit is under 1501 here
        pytest.skip(f"cannot hold descriptor {high}: {exc}")
    try:
        yield high, peer
    finally:
        with contextlib.suppress(OSError):
            os.close(high)
        ours.close()
        peer.close()


def test_a_plain_read_keeps_the_socket_timeout_past_select_s_descriptor_limit(
    high_socket: tuple[int, socket.socket],
) -> None:
    # The read still times out, then reads what arrives.
    high, peer = high_socket
    connection = socket.socket(fileno=high)
    try:
        connection.settimeout(0.05)
        buffer = bytearray(8)
        with pytest.raises(TimeoutError):
            read_plain(connection, memoryview(buffer))
        peer.sendall(b"abc")
        assert read_plain(connection, memoryview(buffer)) == 3
        assert bytes(buffer[:3]) == b"abc"
        peer.close()
        assert read_plain(connection, memoryview(buffer)) == 0  # the peer has closed
    finally:
        connection.detach()  # the descriptor stays the fixture's to close


def test_waiting_for_a_pdu_works_past_select_s_descriptor_limit(
    high_socket: tuple[int, socket.socket],
) -> None:
    # GuardedSocket.ready waits on the association's socket and its wake pipe: with
    # select(), a socket on a descriptor past 1024 read as "transport closed" (Evt17).
    high, peer = high_socket
    wake_read, wake_write = os.pipe()
    try:
        assert wait_readable((high, wake_read), 0.05) == set()
        os.write(wake_write, b"\0")
        assert wait_readable((high, wake_read), 0.05) == {wake_read}
        peer.sendall(b"abc")
        assert wait_readable((high, wake_read), 0.05) == {high, wake_read}
        with pytest.raises(OSError):
            wait_readable((-1, wake_read), 0.05)  # a socket closed meanwhile
        os.close(high)
        with pytest.raises(OSError):
            wait_readable((high, wake_read), 0.05)
    finally:
        os.close(wake_read)
        os.close(wake_write)
