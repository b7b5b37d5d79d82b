"""A radiologist's verdict in the real browser (headless Chromium): the study page's form,
its CSRF token, the verdict shown with who and when, the monitoring page's agreement rate,
shadow results marked; a viewer gets no form."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait
from sqlalchemy import update

from gateway.access.tokens import create_token
from gateway.index.database import Database
from gateway.index.tables import JobRow
from gateway.monitoring.verdicts import history
from tests.control_plane_data import Running, Seed, running_api


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Running, Seed]]:
    yield from running_api(Database(f"sqlite:///{tmp_path / 'dashboard.db'}"), tmp_path)


def _login(driver: WebDriver, server: Running, secret: str) -> None:
    driver.get(f"{server.url}/dashboard/")
    field = WebDriverWait(driver, 30).until(
        expected_conditions.presence_of_element_located((By.ID, "token"))
    )
    field.send_keys(secret)
    driver.find_element(By.ID, "login-button").click()
    WebDriverWait(driver, 30).until(expected_conditions.presence_of_element_located((By.ID, "who")))


def test_a_radiologist_rejects_a_finding_on_the_study_page(
    running: tuple[Running, Seed], browser: WebDriver, tmp_path: Path
) -> None:
    server, data = running
    study = data.study("irk-3")  # two jobs: dev-emk, then dev-cxr
    emk_job, cxr_job = study.job_ids
    with server.db.session() as session:  # the EMK device ran this one in shadow
        session.execute(update(JobRow).where(JobRow.id == emk_job).values(mode="shadow"))
    _, secret = create_token(server.db, "radiologist", "38", name="dr. Ivanova")
    _login(browser, server, secret)
    browser.get(f"{server.url}/dashboard/studies/{study.uid}")
    shadow = browser.find_element(By.CSS_SELECTOR, f"section[data-job='{emk_job}']")
    assert shadow.get_attribute("data-mode") == "shadow"
    assert "теневой режим" in shadow.find_element(By.CSS_SELECTOR, ".shadow-mark").text

    form = browser.find_element(By.ID, f"assess-{cxr_job}")
    form.find_element(By.CSS_SELECTOR, "input[name='verdict'][value='reject']").click()
    finding = form.find_element(By.CSS_SELECTOR, "select[name='finding_id'] option:nth-child(2)")
    finding.click()
    form.find_element(By.NAME, "comment").send_keys("ложноположительный")
    form.find_element(By.CSS_SELECTOR, "button[type='submit']").click()
    WebDriverWait(browser, 30).until(
        expected_conditions.presence_of_element_located(
            (By.CSS_SELECTOR, f"section[data-job='{cxr_job}'] tr.verdict.current")
        )
    )
    row = browser.find_element(By.CSS_SELECTOR, f"section[data-job='{cxr_job}'] tr.verdict")
    assert row.get_attribute("data-verdict") == "reject"
    assert "dr. Ivanova (dashboard)" in row.text and "ложноположительный" in row.text
    (given,) = history(server.db, cxr_job, "38") or []
    assert (given.verdict, given.source, given.author) == ("reject", "dashboard", "dr. Ivanova")
    assert given.finding_id is not None
    browser.get_screenshot_as_file(str(tmp_path / "dashboard-verdict.png"))

    # A form without its CSRF token is refused and changes nothing.
    form = browser.find_element(By.ID, f"assess-{cxr_job}")
    browser.execute_script("arguments[0].querySelector(\"input[name='csrf']\").remove()", form)
    form.find_element(By.CSS_SELECTOR, "button[type='submit']").click()
    WebDriverWait(browser, 30).until(expected_conditions.title_contains("Запрос отклонён"))
    assert "CSRF" in browser.find_element(By.ID, "error-message").text
    assert len(history(server.db, cxr_job, "38") or []) == 1

    browser.get(f"{server.url}/dashboard/monitoring?period=week")
    cxr = browser.find_element(
        By.CSS_SELECTOR, "#device-monitoring tr[data-device='dev-cxr@1.0.0'][data-region='38']"
    )
    assert cxr.find_element(By.CSS_SELECTOR, "td.rejected").text == "1"
    assert cxr.find_element(By.CSS_SELECTOR, "td.agreement").text == "0 % (0/1)"
    rows = browser.find_elements(By.CSS_SELECTOR, "#device-monitoring tbody tr")
    assert {r.get_attribute("data-region") for r in rows} == {"38"}
    browser.get_screenshot_as_file(str(tmp_path / "dashboard-monitoring.png"))


def test_a_viewer_sees_the_verdicts_but_gets_no_form(
    running: tuple[Running, Seed], browser: WebDriver
) -> None:
    server, data = running
    _, secret = create_token(server.db, "viewer", "38", name="irkutsk viewer")
    _login(browser, server, secret)
    browser.get(f"{server.url}/dashboard/studies/{data.study('irk-1').uid}")
    assert browser.find_elements(By.CSS_SELECTOR, "form.assessment") == []
    assert browser.find_element(By.ID, "study-state").text == "routed"
