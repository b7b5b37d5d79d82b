"""A PostgreSQL the network stops answering: every connection carries libpq's bounds
(``connect_timeout``, keepalives, ``tcp_user_timeout``), a URL's own values are kept, and a
connection attempt that gets no answer fails within its bound instead of resending its SYN
for two minutes while the writer waits."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.errors import DatabaseError
from gateway.index.database import POSTGRES_NETWORK_BOUNDS, Database
from tests.services import Postgres


@contextmanager
def _unanswered_port() -> Iterator[int]:
    """A loopback port whose accept queue is full: the kernel drops any further SYN, as a
    network that stops answering does (a stopped server would refuse at once)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    held: list[socket.socket] = []
    try:
        for _ in range(8):  # Linux queues backlog + 1; the next connect is left unanswered
            peer = socket.socket()
            peer.settimeout(0.5)
            held.append(peer)
            try:
                peer.connect(listener.getsockname())
            except TimeoutError:
                break
        else:
            pytest.fail("the listener's accept queue never filled")
        yield listener.getsockname()[1]
    finally:
        for peer in held:
            peer.close()
        listener.close()


def test_a_connection_attempt_nobody_answers_fails_within_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(POSTGRES_NETWORK_BOUNDS, "connect_timeout", 1)
    failures: list[str] = []

    def attempt(db: Database) -> None:
        try:
            with db.transaction():
                pass
        except DatabaseError as exc:
            failures.append(str(exc))

    with _unanswered_port() as port:
        db = Database(f"postgresql+psycopg://postgres@127.0.0.1:{port}/aigw")
        thread = threading.Thread(target=attempt, args=(db,), daemon=True)
        thread.start()
        # A bound on a failing test's wait: libpq alone resends the SYN for ~127 s.
        thread.join(60)
        assert not thread.is_alive(), "the connection attempt still waits: no connect_timeout"
        db.dispose()
    (failure,) = failures
    assert "timeout expired" in failure


def _parameters(url: str) -> dict[str, str]:
    db = Database(url)
    try:
        with db.transaction() as connection:
            driver = connection.connection.driver_connection
            assert driver is not None
            return dict(driver.info.get_parameters())
    finally:
        db.dispose()


def test_every_postgresql_connection_carries_the_bounds_and_a_url_keeps_its_own(
    pg: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("PGCONNECT_TIMEOUT", "PGSERVICE"):  # an operator's: tested below
        monkeypatch.delenv(variable, raising=False)
    for suffix, connect_timeout in (("", "10"), ("?connect_timeout=3", "3")):
        parameters = _parameters(pg.url + suffix)
        assert parameters["connect_timeout"] == connect_timeout
        assert (parameters["tcp_user_timeout"], parameters["keepalives_idle"]) == ("30000", "30")
        assert (parameters["keepalives_interval"], parameters["keepalives_count"]) == ("10", "3")


def test_an_operator_s_environment_and_service_file_are_not_overridden(
    pg: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "7")
    parameters = _parameters(pg.url)
    assert (parameters["connect_timeout"], parameters["tcp_user_timeout"]) == ("7", "30000")
    monkeypatch.delenv("PGCONNECT_TIMEOUT")

    services = tmp_path / "pg_service.conf"
    services.write_text(
        f"[aigw]\nhost=127.0.0.1\nport={pg.port}\nuser=postgres\ndbname=postgres\n"
        "connect_timeout=4\ntcp_user_timeout=5000\n"
    )
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    parameters = _parameters("postgresql+psycopg:///?service=aigw")
    assert (parameters["connect_timeout"], parameters["tcp_user_timeout"]) == ("4", "5000")
