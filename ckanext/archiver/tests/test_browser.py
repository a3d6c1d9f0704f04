"""The broken-links report in a real browser (headless Chromium, Selenium 4).

CKAN runs on a real port of 127.0.0.1 (werkzeug's server, in a thread); the
browser opens the report index, follows an organization's link and finds
the broken row. Screenshots go to ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

import datetime
import io
import os
import pathlib
import shutil

import pytest
from ckan import model
from ckan.tests import factories

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


def _two_orgs_data(archive_dir):
    """Health: one broken and one web-page resource (and a cached copy of
    the broken one); Transport: three checked resources, none broken."""
    broken = _data()
    transport = model.Group.get("transport")
    roads = factories.Dataset(owner_org=transport.id, name="roads", title="Roads",
                              resources=[{"name": f"Road {n}", "url": f"http://example.com/r{n}"}
                                         for n in range(3)])
    for res in roads["resources"]:
        model.Session.query(Archival).filter_by(resource_id=res["id"]).delete()
        model.Session.commit()
        archiver_factories.make_archival(res, st.ARCHIVED)
    folder = archive_dir / broken["id"][:2] / broken["id"]
    folder.mkdir(parents=True)
    (folder / "clinics.csv").write_bytes(b"name,beds\nNorth,12\n")
    row = model.Session.query(Archival).filter_by(resource_id=broken["id"]).one()
    row.cache_filepath = str(folder / "clinics.csv")
    row.size = 19
    row.mimetype = "text/csv"
    model.Session.commit()
    return broken


def _names_in_index(browser):
    from selenium.webdriver.common.by import By

    return [a.text for a in browser.find_elements(By.CSS_SELECTOR, "a.archiver-org-link")]


def test_sorting_and_filters_in_chromium(live_server, browser, archive_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    _two_orgs_data(archive_dir)
    wait = WebDriverWait(browser, 20)
    browser.get(f"{live_server}/report/broken-links")
    wait.until(ec.element_to_be_clickable((By.LINK_TEXT, "Health")))
    assert _names_in_index(browser) == ["Health", "Transport"]  # worst first
    browser.find_element(By.CSS_SELECTOR, 'a[data-sort="resources"]').click()
    wait.until(ec.url_contains("sort=-resources"))
    assert _names_in_index(browser) == ["Transport", "Health"]  # 3 resources, then 2
    header = browser.find_element(By.CSS_SELECTOR, 'th[aria-sort="descending"]')
    assert "Resources" in header.text
    browser.find_element(By.CSS_SELECTOR, 'a[data-sort="resources"]').click()
    wait.until(ec.url_contains("sort=resources"))
    assert _names_in_index(browser) == ["Health", "Transport"]
    _screenshot(browser, "report-index-sorted.png")

    browser.get(f"{live_server}/report/broken-links/health")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.archiver-report-org tbody tr")
    assert len(rows) == 1 and "Clinic list" in rows[0].text
    Select(browser.find_element(By.ID, "archiver-status")).select_by_value("webpage")
    browser.find_element(By.CSS_SELECTOR, ".archiver-filters button[type=submit]").click()
    wait.until(ec.url_contains("status=webpage"))
    rows = browser.find_elements(By.CSS_SELECTOR, "table.archiver-report-org tbody tr")
    assert len(rows) == 1 and "Clinic page" in rows[0].text
    assert "Clinic list" not in browser.find_element(By.TAG_NAME, "table").text
    assert browser.find_element(By.CSS_SELECTOR, "p.archiver-count").text.startswith("1 resource")
    _screenshot(browser, "report-organization-filtered.png")

    browser.get(f"{live_server}/report/broken-links/health?status=nonsense")
    assert "Unknown status filter nonsense" in browser.find_element(By.TAG_NAME, "body").text


def test_zip_link_and_cached_copy_from_the_dataset_page(live_server, browser, archive_dir):
    import urllib.request
    import zipfile

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    broken = _two_orgs_data(archive_dir)
    browser.get(f"{live_server}/dataset/clinics")
    link = WebDriverWait(browser, 20).until(ec.presence_of_element_located(
        (By.CSS_SELECTOR, ".archiver-zip-link a")))
    assert "Download all files (zip)" in link.text
    assert link.get_attribute("href") == f"{live_server}/dataset/clinics/archive.zip"
    assert "1 archived file and datapackage.json" in browser.find_element(
        By.CSS_SELECTOR, ".archiver-zip-link").text
    # each resource item has its resource page's verdict, in short
    states = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".archiver-state-badge")]
    assert states == ["Link broken", "Link works, but goes to a web page, not a file"], states
    _screenshot(browser, "dataset-page.png")
    with urllib.request.urlopen(link.get_attribute("href"), timeout=30) as res:
        assert res.status == 200
        body = res.read()
    names = zipfile.ZipFile(io.BytesIO(body)).namelist()
    assert "datapackage.json" in names and any(n.endswith("clinics.csv") for n in names)

    browser.get(f"{live_server}/report/broken-links/health")
    copy = browser.find_element(By.CSS_SELECTOR, "a.archiver-row-copy")
    with urllib.request.urlopen(copy.get_attribute("href"), timeout=30) as res:
        assert res.read() == b"name,beds\nNorth,12\n"
    assert broken["id"] in copy.get_attribute("href")


def test_editor_pages_in_chromium(live_server, browser, archive_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    broken = _two_orgs_data(archive_dir)
    editor = factories.User(name="editor-ed", password="correct-horse-battery-1")
    from ckan.tests.helpers import call_action
    call_action("organization_member_create", id="health", username=editor["name"],
                role="editor")
    wait = WebDriverWait(browser, 20)
    browser.get(f"{live_server}/user/login")
    wait.until(ec.presence_of_element_located((By.ID, "field-login"))).send_keys("editor-ed")
    browser.find_element(By.ID, "field-password").send_keys("correct-horse-battery-1")
    browser.find_element(By.ID, "field-password").submit()  # the login form
    # CKAN redirects to ckan.site_url after the login: come back to this server
    wait.until(lambda b: "/user/login" not in b.current_url)
    browser.get(f"{live_server}/dataset/clinics")
    menu = wait.until(ec.presence_of_element_located(
        (By.CSS_SELECTOR, 'a[href="/report/broken-links/health"]')))
    menu.click()  # the user menu's link to the editor's report
    wait.until(ec.url_contains("/report/broken-links/health"))
    button = browser.find_element(By.CSS_SELECTOR, ".archiver-row-check button")
    assert "Check again" in button.text
    _screenshot(browser, "report-organization-editor.png")

    browser.get(f"{live_server}/dataset/clinics/resource/{broken['id']}/edit")
    status = wait.until(ec.presence_of_element_located(
        (By.CSS_SELECTOR, ".archiver-edit-status")))
    assert "Link broken" in status.text and "Server returned 404 Not Found" in status.text
    _screenshot(browser, "resource-edit.png")


@pytest.mark.usefixtures("archiver_env")
def test_pending_check_updates_the_page_by_itself(live_server, browser, httpserver):
    """A resource waiting for its check says so; once a real worker has
    checked it, the page shows the result without being reloaded."""
    from celery.contrib.testing.worker import start_worker
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from ckanext.archiver import config
    from ckanext.archiver.tests.helpers import checked_row, wait_for
    from ckanext.archiver.worker import app as worker_app

    httpserver.expect_request("/soon.csv").respond_with_data("a,b\n", content_type="text/csv")
    dataset = factories.Dataset(name="pending-demo")
    res = factories.Resource(package_id=dataset["id"], name="Soon",
                             url=httpserver.url_for("/soon.csv"))
    browser.get(f"{live_server}/dataset/pending-demo/resource/{res['id']}")
    section = browser.find_element(By.ID, "archiver-status")
    assert section.get_attribute("data-archiver-pending") == "queued"
    assert "Waiting to be checked (queued" in section.text
    _screenshot(browser, "resource-pending.png")
    browser.execute_script("window.archiverNotReloaded = true;")

    app = worker_app.get_app()
    app.amqp.queues.select([config.current().queue_name(n) for n in ("priority", "bulk")])
    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False,
                      shutdown_timeout=10, loglevel="WARNING"):
        wait_for(lambda: checked_row(res["id"]))

    def updated(driver):
        text = driver.find_element(By.ID, "archiver-status").text
        return "Link OK" in text and "Waiting to be checked" not in text

    WebDriverWait(browser, 20).until(updated)
    assert browser.execute_script("return window.archiverNotReloaded === true;")
    section = browser.find_element(By.ID, "archiver-status")
    assert section.get_attribute("data-archiver-pending") is None
    _screenshot(browser, "resource-after-check.png")
