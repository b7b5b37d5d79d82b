"""The dashboard's defences where they are the browser's to enforce, in a real headless
Chromium: no inline script runs (CSP), no other site may frame it (frame-ancestors), a form
posted from another page is refused for want of its CSRF token while the session goes on,
an idle session sends the user back to the login form, and failed logins lock the login.

The other pages are served by a plain HTTP server on another port of 127.0.0.1: another
origin, but the same site, so the browser sends the session cookie — only the CSRF token
stands between that page and the dashboard."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait
from sqlalchemy import update

from gateway.access.tokens import create_token
from gateway.index.database import Database
from gateway.index.tables import DashboardSessionRow, utcnow
from tests.control_plane_data import Running, Seed, running_api
from tests.services import free_port

MAX_FAILURES = 2
IDLE_S = 300


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Running, Seed]]:
    yield from running_api(
        Database(f"sqlite:///{tmp_path / 'security.db'}"),
        tmp_path,
        login_max_failures=MAX_FAILURES,
        session_idle_s=IDLE_S,
    )


def _wait_for(driver: WebDriver, element_id: str) -> None:
    WebDriverWait(driver, 30).until(
        expected_conditions.presence_of_element_located((By.ID, element_id))
    )


def _login(driver: WebDriver, server: Running, secret: str, expect: str = "who") -> None:
    driver.get(f"{server.url}/dashboard/login")
    _wait_for(driver, "token")
    driver.find_element(By.ID, "token").send_keys(secret)
    driver.find_element(By.ID, "login-button").click()
    _wait_for(driver, expect)


class _Pages:
    """Another origin serving one HTML page (a would-be attacker's)."""

    def __init__(self, html: str) -> None:
        body = html.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.port}/"

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _console(driver: WebDriver) -> str:
    entries: list[dict[str, object]] = driver.get_log("browser")  # type: ignore[attr-defined]
    return "\n".join(str(entry.get("message", "")) for entry in entries)


def test_no_inline_script_runs_and_no_other_site_frames_the_dashboard(
    running: tuple[Running, Seed], browser: WebDriver
) -> None:
    server, _ = running
    _, secret = create_token(server.db, "admin", name="csp admin")
    _login(browser, server, secret)
    ran = browser.execute_script(
        "const s = document.createElement('script');"
        "s.textContent = 'window.injected = 42';"
        "document.body.appendChild(s);"
        "return window.injected === undefined ? null : window.injected;"
    )
    assert ran is None
    # The console's log is fetched over the driver's protocol: wait for the report, as below.
    WebDriverWait(browser, 30).until(lambda d: "Content Security Policy" in _console(d))

    frame = f'<iframe id="victim" src="{server.url}/dashboard/" width="800" height="600"></iframe>'
    with _Pages(f"<!doctype html><title>elsewhere</title>{frame}") as elsewhere:
        browser.get(elsewhere)
        _wait_for(browser, "victim")
        WebDriverWait(browser, 30).until(lambda d: "frame-ancestors" in _console(d))
        browser.switch_to.frame(browser.find_element(By.ID, "victim"))
        assert browser.find_elements(By.ID, "who") == []  # nothing of the dashboard inside
        browser.switch_to.default_content()


def test_a_form_from_another_page_is_refused_and_the_session_goes_on(
    running: tuple[Running, Seed], browser: WebDriver
) -> None:
    server, _ = running
    _, secret = create_token(server.db, "viewer", "38", name="csrf target")
    _login(browser, server, secret)
    forged = (
        f'<form method="post" action="{server.url}/dashboard/logout">'
        '<button id="go" type="submit">win a prize</button></form>'
    )
    with _Pages(f"<!doctype html><title>prize</title>{forged}") as elsewhere:
        browser.get(elsewhere)
        _wait_for(browser, "go")
        browser.find_element(By.ID, "go").click()
        _wait_for(browser, "error-message")
        assert "CSRF" in browser.find_element(By.ID, "error-message").text
    browser.get(f"{server.url}/dashboard/")
    _wait_for(browser, "who")  # still logged in
    browser.find_element(By.ID, "logout-button").click()  # the dashboard's own form works
    _wait_for(browser, "login")


def test_idle_sessions_end_and_failed_logins_lock_the_login(
    running: tuple[Running, Seed], browser: WebDriver
) -> None:
    server, _ = running
    _, secret = create_token(server.db, "admin", name="idle admin")
    _login(browser, server, secret)
    with server.db.session() as session:  # what IDLE_S seconds without a click would do
        session.execute(
            update(DashboardSessionRow).values(
                last_seen_at=utcnow() - timedelta(seconds=IDLE_S + 1)
            )
        )
    browser.get(f"{server.url}/dashboard/regions/38")
    _wait_for(browser, "login")
    assert browser.current_url.endswith("/dashboard/login")

    for _ in range(MAX_FAILURES - 1):
        _login(browser, server, "aigw_1_" + "wrong" * 9, expect="login-error")
    _login(browser, server, "aigw_1_" + "wrong" * 9, expect="login-locked")
    _login(browser, server, secret, expect="login-locked")  # the right token waits too
    assert "заблокирован" in browser.find_element(By.ID, "login-locked").text
