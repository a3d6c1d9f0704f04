"""The broken-links report in a real browser (headless Chromium, Selenium 4).

CKAN runs on a real port of 127.0.0.1 (werkzeug's server, in a thread); the
browser opens the report index, follows an organization's link and finds
the broken row. Screenshots go to ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

import datetime
import os
import pathlib
import shutil
import threading

import pytest
from ckan import model
from ckan.tests import factories
from werkzeug.serving import make_server

from ckanext.archiver import status as st
from ckanext.archiver.model import Archival, ArchivalHistory, utcnow
from ckanext.archiver.tests import factories as archiver_factories

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = pathlib.Path(__file__).resolve().parents[3] / "test-artifacts"

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (dev-requirements)")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.usefixtures("with_plugins", "clean_db"),
    pytest.mark.skipif(
        not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
        reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian packages "
               "chromium and chromium-driver; scripts/setup.sh installs them)"),
]


@pytest.fixture
def live_server(app):
    """The test app on a free port of 127.0.0.1."""
    # the whole WSGI stack (CKAN 2.11 sets the locale in a middleware)
    server = make_server("127.0.0.1", 0, app.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1280,1000",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def _screenshot(driver, name: str) -> pathlib.Path:
    ARTIFACTS.mkdir(exist_ok=True)
    height = driver.execute_script(
        "return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(height, 800), 3000))
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


def _data():
    org = factories.Organization(name="health", title="Health")
    factories.Organization(name="transport", title="Transport")
    dataset = factories.Dataset(owner_org=org["id"], name="clinics",
                                title="Clinics")
    broken = factories.Resource(package_id=dataset["id"], name="Clinic list",
                                format="CSV",
                                url="http://example.com/files/clinics.csv")
    ok = factories.Resource(package_id=dataset["id"], name="Clinic page",
                            format="HTML", url="http://example.com/clinics")
    for res, status, extra in [
            (broken, st.DOWNLOAD_ERROR,
             {"reason": "Server returned 404 Not Found", "http_status": 404,
              "failure_count": 4}),
            (ok, st.ARCHIVED, {"is_web_page": True})]:
        model.Session.query(Archival).filter_by(resource_id=res["id"]).delete()
        model.Session.commit()
        archiver_factories.make_archival(res, status, **extra)
    now = utcnow()
    for days in range(0, 60, 7):  # weekly checks; broken for the last 3 weeks
        model.Session.add(ArchivalHistory(
            resource_id=broken["id"], package_id=dataset["id"],
            checked_at=now - datetime.timedelta(days=days),
            status_id=st.DOWNLOAD_ERROR if days < 21 else st.ARCHIVED,
            is_broken=days < 21))
    model.Session.commit()
    return broken


def test_report_index_to_organization_in_chromium(live_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    broken = _data()
    browser.get(f"{live_server}/report/broken-links")
    wait = WebDriverWait(browser, 20)
    link = wait.until(ec.element_to_be_clickable(
        (By.LINK_TEXT, "Health")))
    assert browser.find_element(By.CSS_SELECTOR, "svg.archiver-trend")
    _screenshot(browser, "report-index.png")

    link.click()
    row = wait.until(ec.presence_of_element_located(
        (By.CSS_SELECTOR, f'tr[data-resource-id="{broken["id"]}"]')))
    assert browser.current_url.endswith("/report/broken-links/health")
    assert "Clinic list" in row.text
    assert "Server returned 404 Not Found" in row.text
    assert "Clinic page" not in browser.find_element(By.TAG_NAME, "table").text
    path = _screenshot(browser, "report-organization.png")
    assert path.stat().st_size > 10_000

    row.find_element(By.LINK_TEXT, "Clinic list").click()
    wait.until(ec.presence_of_element_located((By.ID, "archiver-status")))
    assert "Link broken" in browser.find_element(By.ID, "archiver-status").text
    _screenshot(browser, "resource-page.png")


def test_report_in_german(live_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    broken = _data()
    browser.get(f"{live_server}/de/report/broken-links")
    wait = WebDriverWait(browser, 20)
    wait.until(ec.element_to_be_clickable((By.LINK_TEXT, "Health"))).click()
    row = wait.until(ec.presence_of_element_located(
        (By.CSS_SELECTOR, f'tr[data-resource-id="{broken["id"]}"]')))
    assert browser.current_url.endswith("/de/report/broken-links/health")
    heading = browser.find_element(By.CSS_SELECTOR, "h1.page-heading").text
    assert heading.startswith("Defekte Links")
    assert "Der Server antwortete mit 404 Not Found" in row.text
    assert "Defekt" in row.text and "Download-Fehler" in row.text
    headers = browser.find_element(By.CSS_SELECTOR, "table thead").text
    assert "Fehlerhaft seit" in headers and "Zuletzt geprüft" in headers
    assert "(UTC)" in row.text  # times with hours and time zone
    _screenshot(browser, "report-organization-de.png")
