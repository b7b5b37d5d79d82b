"""The dashboard in a real headless Chromium (Selenium, started by the test): log in with a
token, the national table's counts for the seeded set, region 38 with three devices meets the
target and region 71 with two does not, a study page with its flag image; a screenshot of
each page is saved under the test's tmp dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from gateway.access import audit
from gateway.access.tokens import create_token
from gateway.index.database import Database
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


def _cells(driver: WebDriver, region: str) -> dict[str, str]:
    row = driver.find_element(By.CSS_SELECTOR, f'#national tr[data-region="{region}"]')
    return {
        cls: row.find_element(By.CSS_SELECTOR, f"td.{cls}").text
        for cls in (
            "devices-image",
            "devices-emk",
            "devices-total",
            "target",
            "studies",
            "positive",
            "median",
            "p95",
            "failed-jobs",
            "failed-deliveries",
        )
    }


def _screenshot(driver: WebDriver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"dashboard-{name}.png"
    driver.get_screenshot_as_file(str(path))
    assert path.stat().st_size > 10_000
    print(f"dashboard screenshot: {path}")
    return path


def test_national_table_and_the_three_device_target(
    running: tuple[Running, Seed], browser: WebDriver, tmp_path: Path
) -> None:
    server, data = running
    _, secret = create_token(server.db, "admin", name="national admin")
    _login(browser, server, secret)
    assert browser.title.startswith("Регионы")
    assert browser.find_element(By.ID, "who").text.startswith("national admin")

    irkutsk, tula, moscow = (_cells(browser, code) for code in ("38", "71", "77"))
    # 38: dev-cxr and dev-ct (image) + dev-emk (EMK) processed studies this week.
    assert (irkutsk["devices-image"], irkutsk["devices-emk"], irkutsk["devices-total"]) == (
        "2",
        "1",
        "3",
    )
    assert irkutsk["target"] == "выполнена"
    assert irkutsk["studies"] == str(len(data.by_region("38")))
    assert irkutsk["positive"] == "33 %"
    assert (irkutsk["median"], irkutsk["p95"]) == ("90 с", "2.0 мин")  # 60 s (delivery), 90, 120
    assert (irkutsk["failed-jobs"], irkutsk["failed-deliveries"]) == ("0", "2")
    # 71: two registered devices (the unregistered dev-ghost does not count): unmet.
    assert (tula["devices-image"], tula["devices-emk"], tula["devices-total"]) == ("2", "0", "2")
    assert tula["target"] == "не выполнена"
    assert tula["studies"] == "3" and tula["failed-jobs"] == "1"
    # 77: one device this week; the other one's study is 20 days old.
    assert (moscow["devices-total"], moscow["studies"], moscow["target"]) == (
        "1",
        "1",
        "не выполнена",
    )
    _screenshot(browser, tmp_path, "national-week")

    browser.find_element(By.LINK_TEXT, "месяц").click()
    WebDriverWait(browser, 30).until(expected_conditions.url_contains("period=month"))
    assert _cells(browser, "77")["devices-total"] == "2"
    assert _cells(browser, "77")["studies"] == "2"

    browser.get(f"{server.url}/dashboard/regions/71?period=week")
    target = browser.find_element(By.ID, "target")
    assert "unmet" in str(target.get_attribute("class")) and "не выполнен" in target.text
    assert browser.find_element(By.ID, "devices-total").text == "2"
    bars = browser.find_elements(By.CSS_SELECTOR, "svg.chart rect.bar")
    assert len(bars) in (7, 8)  # one per calendar day the week window touches
    assert sum(int(str(bar.get_attribute("data-count"))) for bar in bars) == 3
    devices = browser.find_elements(By.CSS_SELECTOR, "#by-device tbody tr")
    assert [row.get_attribute("data-key") for row in devices] == [
        "dev-ct",
        "dev-cxr",
        "dev-ghost",
    ]
    sources = browser.find_elements(By.CSS_SELECTOR, "#by-source tbody tr td.name")
    assert [cell.text for cell in sources] == ["ЦАМИ Тульской области"]
    failures = browser.find_element(By.ID, "failures").text
    assert "decode failed: seeded" in failures
    _screenshot(browser, tmp_path, "region-71")

    browser.get(f"{server.url}/dashboard/regions/38?period=week")
    assert str(browser.find_element(By.ID, "target").get_attribute("class")).split()[-1] == "met"


def test_a_region_viewer_sees_its_region_and_a_study_with_its_flag_image(
    running: tuple[Running, Seed], browser: WebDriver, tmp_path: Path
) -> None:
    server, data = running
    _, secret = create_token(server.db, "viewer", "38", name="irkutsk viewer")
    _login(browser, server, secret)
    rows = browser.find_elements(By.CSS_SELECTOR, "#national tbody tr")
    assert [row.get_attribute("data-region") for row in rows] == ["38"]

    browser.get(f"{server.url}/dashboard/regions/77")
    assert "Не найдено" in browser.page_source
    browser.get(f"{server.url}/dashboard/studies/{data.study('msk-1').uid}")
    assert "Не найдено" in browser.page_source

    study = data.study("irk-1")
    browser.get(f"{server.url}/dashboard/studies/{study.uid}")
    assert browser.find_element(By.ID, "study-state").text == "routed"
    assert "Test model. Not for clinical use." in browser.page_source  # the device's notice
    positive = browser.find_elements(By.CSS_SELECTOR, "table.findings tr.positive")
    assert len(positive) == 1 and "Очаг" in positive[0].text
    image = browser.find_element(By.CSS_SELECTOR, "img.flag")
    WebDriverWait(browser, 30).until(
        lambda driver: driver.execute_script("return arguments[0].naturalWidth", image) == 48
    )
    _screenshot(browser, tmp_path, "study")

    actions = {e.action for e in audit.query(server.db, study_uid=study.uid)}
    assert actions == {
        f"GET /dashboard/studies/{study.uid}",
        f"GET /dashboard/results/{study.result_ids['sc']}/image.png",
    }
