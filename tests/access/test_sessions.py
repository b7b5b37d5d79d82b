"""Dashboard sessions over real HTTP (uvicorn, SQLite): every form needs its CSRF token;
failed logins lock an account and a peer address for ``login_lockout_s`` — kept in the
index, so a restart does not lift it — and the lock ends; a session ends when idle, too old,
revoked or logged out; every login, failure, lockout and session end is an audit event.

Peers are told apart by their source address: Linux answers on all of 127.0.0.0/8, so a
client bound to 127.0.0.2 is another peer to the server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from gateway.access import audit
from gateway.access.audit import AuditEvent
from gateway.access.tokens import create_token, revoke_token
from gateway.index.database import Database
from gateway.index.tables import DashboardSessionRow, LoginFailureRow, utcnow
from tests.control_plane_data import Running, Seed, running_api, serve_api

CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')
MAX_FAILURES = 3
LOCKOUT_S = 3600
IDLE_S = 600
MAX_AGE_S = 7200


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Running, Seed]]:
    yield from running_api(
        Database(f"sqlite:///{tmp_path / 'sessions.db'}"),
        tmp_path,
        login_max_failures=MAX_FAILURES,
        login_lockout_s=LOCKOUT_S,
        session_idle_s=IDLE_S,
        session_max_age_s=MAX_AGE_S,
    )


def _peer(server: Running, address: str = "127.0.0.1") -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=server.url, timeout=30, transport=transport)


def _csrf(html: str) -> str:
    found = CSRF.search(html)
    assert found, html[:2000]
    return found.group(1)


def _login(browser: httpx.Client, secret: str) -> httpx.Response:
    form = browser.get("/dashboard/login")
    return browser.post("/dashboard/login", data={"token": secret, "csrf": _csrf(form.text)})


def _events(server: Running, *kinds: AuditEvent) -> list[audit.AuditEntry]:
    return list(reversed(audit.query(server.db, events=list(kinds))))


def test_every_form_needs_its_csrf_token_and_logout_ends_the_session(
    running: tuple[Running, Seed],
) -> None:
    server, _ = running
    _, secret = create_token(server.db, "viewer", "38", name="ward")
    with _peer(server) as browser, _peer(server) as other:
        assert browser.get("/dashboard/").headers["location"] == "/dashboard/login"
        without = browser.post("/dashboard/login", data={"token": secret})
        assert without.status_code == 403 and "устарела" in without.text
        assert "aigw_session" not in without.headers.get("set-cookie", "")
        _csrf(browser.get("/dashboard/login").text)  # this browser now has its form cookie
        forged = browser.post("/dashboard/login", data={"token": secret, "csrf": "0" * 64})
        assert forged.status_code == 403
        # A token from another browser's form does not fit this browser's cookie.
        theirs = _csrf(other.get("/dashboard/login").text)
        assert (
            browser.post("/dashboard/login", data={"token": secret, "csrf": theirs}).status_code
            == 403
        )
        assert _events(server, AuditEvent.LOGIN_SUCCEEDED, AuditEvent.LOGIN_FAILED) == []

        logged_in = _login(browser, secret)
        assert logged_in.status_code == 303, logged_in.text
        cookie = logged_in.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        assert secret not in cookie
        session_cookie = browser.cookies["aigw_session"]
        page = browser.get("/dashboard/")
        assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
        refused = browser.post(
            "/dashboard/logout", data={"csrf": _csrf(other.get("/dashboard/login").text)}
        )
        assert refused.status_code == 403 and "CSRF" in refused.text
        assert browser.get("/dashboard/").status_code == 200  # still logged in
        out = browser.post("/dashboard/logout", data={"csrf": _csrf(page.text)})
        assert out.status_code == 303 and out.headers["location"] == "/dashboard/login"
        # The cookie, presented again, opens nothing: the session ended in the index.
        browser.cookies.set("aigw_session", session_cookie, domain="127.0.0.1", path="/dashboard")
        assert browser.get("/dashboard/").status_code == 303
    succeeded = _events(server, AuditEvent.LOGIN_SUCCEEDED)
    assert [(e.token_name, e.role, e.region, e.client_ip) for e in succeeded] == [
        ("ward", "viewer", "38", "127.0.0.1")
    ]
    ended = _events(server, AuditEvent.SESSION_ENDED)
    assert [e.detail["reason"] for e in ended] == ["logout"]


def test_failed_logins_lock_the_account_and_the_address_until_the_lock_ends(
    running: tuple[Running, Seed],
) -> None:
    server, _ = running
    target, target_secret = create_token(server.db, "region_admin", "71", name="tula admin")
    bystander, bystander_secret = create_token(server.db, "viewer", "38", name="irkutsk viewer")
    guess = f"aigw_{target.id}_{'x' * 43}"  # aimed at the target's account, wrong secret
    with _peer(server, "127.0.0.2") as guesser:
        answers = [_login(guesser, guess) for _ in range(MAX_FAILURES)]
        assert [a.status_code for a in answers] == [401] * (MAX_FAILURES - 1) + [429]
        assert "Неизвестный" in answers[0].text
        locked = answers[-1]
        assert "заблокирован" in locked.text
        assert 0 < int(locked.headers["retry-after"]) <= LOCKOUT_S + 1
        # While locked nothing is checked: not even the right secret gets in.
        assert _login(guesser, target_secret).status_code == 429
        assert _login(guesser, bystander_secret).status_code == 429  # the address is locked
    with _peer(server, "127.0.0.3") as colleague:
        assert _login(colleague, target_secret).status_code == 429  # the account is locked
        assert _login(colleague, bystander_secret).status_code == 303  # neither is this one
    with server.db.session() as session:
        rows = {row.key: row for row in session.scalars(select(LoginFailureRow))}
    for key in (f"account:{target.id}", "peer:127.0.0.2"):
        until = rows[key].locked_until
        assert until is not None
        assert until - rows[key].last_failure_at == timedelta(seconds=LOCKOUT_S)

    # Secrets without an account count against their address alone.
    with _peer(server, "127.0.0.4") as scanner:
        codes = [_login(scanner, "aigw_not-a-token").status_code for _ in range(MAX_FAILURES)]
        assert codes == [401] * (MAX_FAILURES - 1) + [429]

    # The lock is in the index: a new app over the same database still refuses.
    with serve_api(server.db, server.store, server.settings, server.registry) as restarted:
        with _peer(restarted, "127.0.0.3") as colleague:
            assert _login(colleague, target_secret).status_code == 429
        # When the lock's time has passed (moved back here rather than waited for), the
        # account logs in again, and its count starts afresh.
        with server.db.session() as session:
            session.execute(
                update(LoginFailureRow).values(locked_until=utcnow() - timedelta(seconds=1))
            )
        with _peer(restarted, "127.0.0.3") as colleague:
            assert _login(colleague, target_secret).status_code == 303

    locks = _events(server, AuditEvent.LOGIN_LOCKED)
    assert [sorted(e.detail["locked"]) for e in locks] == [
        [f"account:{target.id}", "peer:127.0.0.2"],
        ["peer:127.0.0.4"],
    ]
    assert locks[0].region == "71" and locks[0].client_ip == "127.0.0.2"
    failed = _events(server, AuditEvent.LOGIN_FAILED)
    reasons = [(e.client_ip, e.detail["reason"]) for e in failed]
    assert reasons.count(("127.0.0.2", "unknown or revoked")) == MAX_FAILURES
    assert reasons.count(("127.0.0.2", "locked out")) == 2
    assert reasons.count(("127.0.0.3", "locked out")) == 2
    t, b = target.id, bystander.id
    claims = [e.detail["claimed_token_id"] for e in failed if e.client_ip != "127.0.0.4"]
    assert claims == [t] * MAX_FAILURES + [t, b, t, t]
    assert all(target_secret not in str(e.detail) and guess not in str(e.detail) for e in failed)
    assert [e.token_name for e in _events(server, AuditEvent.LOGIN_SUCCEEDED)] == [
        "irkutsk viewer",
        "tula admin",
    ]


def _age(server: Running, **columns: object) -> None:
    """Move the live session's times back: what idling or a long day would have done."""
    with server.db.session() as session:
        for row in session.scalars(
            select(DashboardSessionRow).where(DashboardSessionRow.ended_at.is_(None))
        ):
            for name, value in columns.items():
                setattr(row, name, value)


def test_a_session_ends_when_idle_too_old_or_revoked(running: tuple[Running, Seed]) -> None:
    server, _ = running
    token, secret = create_token(server.db, "admin", name="night shift")
    now = utcnow()
    with _peer(server) as browser:
        assert _login(browser, secret).status_code == 303
        _age(server, last_seen_at=now - timedelta(seconds=IDLE_S - 60))
        assert browser.get("/dashboard/").status_code == 200  # used in time: goes on
        with server.db.session() as session:
            seen = session.scalars(select(DashboardSessionRow.last_seen_at)).one()
        assert seen >= now  # and its last use moved forward
        _age(server, last_seen_at=utcnow() - timedelta(seconds=IDLE_S + 1))
        assert browser.get("/dashboard/").headers["location"] == "/dashboard/login"

        assert _login(browser, secret).status_code == 303
        _age(server, created_at=utcnow() - timedelta(seconds=MAX_AGE_S + 1))
        assert browser.get("/dashboard/").status_code == 303  # used all along, but too old

        assert _login(browser, secret).status_code == 303
        assert browser.get("/dashboard/").status_code == 200
        revoke_token(server.db, token.id)
        assert browser.get("/dashboard/").status_code == 303
    with server.db.session() as session:
        ends = [
            (row.end_reason, row.ended_at is not None)
            for row in session.scalars(select(DashboardSessionRow).order_by(DashboardSessionRow.id))
        ]
    assert ends == [("idle", True), ("expired", True), ("revoked", True)]
    events = _events(server, AuditEvent.SESSION_ENDED)
    assert [e.detail["reason"] for e in events] == ["idle", "expired", "revoked"]
    assert {e.token_id for e in events} == {token.id}
