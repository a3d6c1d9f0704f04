"""What the resource page says about a link is true (issue 13).

Each case runs end to end: a real origin on 127.0.0.1, a real Celery
worker (in this process), PostgreSQL, then the resource page as CKAN
renders it. The text of each page's link status section is written to
``test-artifacts/link-truth.txt`` (gitignored) for the record.
"""

from __future__ import annotations

import shutil

import pytest
from ckan import model
from ckan.tests import factories
from ckan.tests.helpers import call_action
from werkzeug import Response

from ckanext.archiver import status as st
from ckanext.archiver.model import ArchivalHistory
from ckanext.archiver.tests.helpers import archival_row, checked_row, login, wait_for
from ckanext.archiver.tests.views.pages import check_link_now, status_section
from ckanext.archiver.tests.views.pages import resource_page as _page
from ckanext.archiver.worker import dispatch
from ckanext.archiver.worker import figures as worker_figures

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db")


def _history(resource_id):
    model.Session.remove()
    return model.Session.query(ArchivalHistory).filter_by(
        resource_id=resource_id).order_by(ArchivalHistory.id).all()


# 1 -- an explicit check always contacts the server --------------------------

def test_check_now_contacts_a_server_whose_answer_is_still_fresh(
        app, celery_worker, origin, sysadmin):
    origin.expect_request("/data.csv").respond_with_data(
        "a,b\n1,2\n", content_type="text/csv", headers={"Cache-Control": "max-age=86400"})
    dataset = factories.Dataset()
    res = factories.Resource(package_id=dataset["id"], url=origin.url_for("/data.csv"))
    first = wait_for(lambda: checked_row(res["id"]))
    assert first.status_id == st.ARCHIVED and first.fresh_until is not None
    status_section(app, dataset, res, case="fresh: first check")

    # a routine run may skip the server: recorded as a skip, not as a check
    dispatch.enqueue([(res["id"], dataset["id"])], "bulk")
    skipped = wait_for(lambda: (r := archival_row(res["id"])) is not None
                       and r.fresh_skip_at is not None and r)
    assert (skipped.status_id, skipped.last_checked, skipped.last_success) == (
        st.ARCHIVED, first.last_checked, first.last_success)
    assert len(_history(res["id"])) == 1  # no check was made
    assert len(origin.log) == 1
    text = status_section(app, dataset, res, case="fresh: routine run skipped")
    assert "Not re-checked: the server said this file stays fresh until" in text
    assert "Checked:" in text

    origin.stop()
    check_link_now(app, dataset, res, sysadmin)
    row = wait_for(lambda: (r := archival_row(res["id"])) is not None
                   and r.last_checked > first.last_checked and r)
    assert row.status_id == st.REQUEST_FAILED and row.is_broken is True
    assert "Connection refused" in row.reason
    assert row.fresh_skip_at is None
    text = status_section(app, dataset, res, case="fresh: after Check link now")
    assert "Link broken" in text and "Connection refused" in text
    assert "Link OK" not in text and "Still fresh" not in text


def test_the_freshness_rule_is_one(tmp_path):
    """Worker and engine share one rule (``Previous.fresh_for``): the
    normalised URL counts, and a missing cached copy ends the skip."""
    import datetime

    from ckanext.archiver.engine.outcome import Previous

    now = datetime.datetime.now(datetime.timezone.utc)
    later = now + datetime.timedelta(hours=1)
    kept = tmp_path / "kept.csv"
    kept.write_text("x")
    prev = Previous(url="HTTP://Example.COM/a.csv", fresh_until=later,
                    cache_filepath=str(kept))
    assert prev.fresh_for("http://example.com/a.csv", True, now) == later
    assert prev.fresh_for("http://example.com/a.csv", True, later) is None
    assert prev.fresh_for("http://example.com/b.csv", True, now) is None
    kept.unlink()
    assert prev.fresh_for("http://example.com/a.csv", True, now) is None
    assert prev.fresh_for("http://example.com/a.csv", False, now) == later


# 2 -- a fault of the site is not a fault of the link ------------------------

def test_a_fault_of_the_site_keeps_the_links_verdict(
        app, celery_worker, httpserver, archive_dir, sysadmin, cli, make_ini):
    httpserver.expect_request("/ok.csv").respond_with_data("a,b\n", content_type="text/csv")
    dataset = factories.Dataset()
    res = factories.Resource(package_id=dataset["id"], url=httpserver.url_for("/ok.csv"))
    first = wait_for(lambda: checked_row(res["id"]))
    assert first.status_id == st.ARCHIVED
    status_section(app, dataset, res, case="site fault: first check")

    shutil.rmtree(archive_dir)
    archive_dir.write_text("the archive folder became a file")
    dispatch.enqueue([(res["id"], dataset["id"])], "priority", force=True)
    row = wait_for(lambda: (r := archival_row(res["id"])) is not None
                   and r.site_fault_at is not None and r)
    assert (row.status_id, row.is_broken, row.failure_count, row.last_checked) == (
        st.ARCHIVED, False, 0, first.last_checked)
    assert row.site_fault == (
        f"System error during archival: archive_dir {archive_dir} is not a directory")

    public = status_section(app, dataset, res, case="site fault: public page")
    assert "Link OK" in public and "Could not be re-checked" in public
    assert "archive_dir" not in public and "cached before the link broke" not in public
    shown = call_action("archiver_resource_show", {"user": ""}, id=res["id"])
    assert "site_fault" not in shown and shown["site_fault_at"]
    admin = status_section(app, dataset, res, sysadmin, case="site fault: sysadmin page")
    assert f"archive_dir {archive_dir} is not a directory" in admin

    figures = call_action("archiver_status", {"user": sysadmin["name"]}, with_workers=False)
    assert figures["resources"]["site_faults"] == 1
    assert figures["resources"]["ok"] == 1 and figures["last_hour"]["site_faults"] == 1
    assert figures["last_hour"]["failed"] == 0
    assert "archiver_resources_site_fault 1" in worker_figures.prometheus_text(figures)
    from ckan.cli.cli import ckan

    status = cli.invoke(ckan, ["-c", make_ini(), "archiver", "status", "--no-workers"])
    assert "Site faults: 1 resource" in status.output, status.output
    assert "Links: 1 ok, 0 broken" in status.output

    archive_dir.unlink()
    archive_dir.mkdir()  # the operator repairs it: the next check is a real one
    dispatch.enqueue([(res["id"], dataset["id"])], "priority", force=True)
    row = wait_for(lambda: (r := archival_row(res["id"])) is not None
                   and r.site_fault_at is None and r)
    assert row.status_id == st.ARCHIVED and row.last_checked > first.last_checked
    assert "Could not be re-checked" not in status_section(app, dataset, res)


def test_a_site_fault_on_the_first_check_says_could_not_be_checked(
        app, celery_worker, httpserver, archive_dir, sysadmin):
    shutil.rmtree(archive_dir)
    archive_dir.write_text("a file")
    httpserver.expect_request("/first.csv").respond_with_data("a\n", content_type="text/csv")
    dataset = factories.Dataset()
    res = factories.Resource(package_id=dataset["id"], url=httpserver.url_for("/first.csv"))
    row = wait_for(lambda: checked_row(res["id"]))
    assert row.status_id == st.SYSTEM_ERROR and row.is_broken is None
    assert row.reason == "System error during archival" and row.failure_count == 0
    public = status_section(app, dataset, res, case="site fault on the first check: public")
    assert "could not be checked yet" in public and "archive_dir" not in public


def test_site_fault_reasons_name_the_cause_and_are_translatable(tmp_path):
    from ckanext.archiver.engine import reasons, site_faults

    blocker = tmp_path / "file"
    blocker.write_text("x")
    found = {
        site_faults.archive_dir_problem(str(blocker)): f"archive_dir {blocker} is not a directory",
        site_faults.archive_dir_problem(str(blocker / "a")):
            f"archive_dir {blocker}/a cannot be created: {blocker} is not a directory",
        site_faults.archive_dir_problem(str(tmp_path), OSError(28, "No space")):
            f"archive_dir {tmp_path} is full (No space left on device)",
    }
    for got, expected in found.items():
        assert got == expected
        assert reasons.parse("System error during archival: " + got) is not None, got


# 3 -- counts mean checks ----------------------------------------------------

def test_failure_count_counts_checks_not_retries(
        app, celery_worker, httpserver, ckan_config, monkeypatch):
    monkeypatch.setitem(ckan_config, "ckanext.archiver.max_retries", 2)
    httpserver.expect_request("/flaky").respond_with_data("oops", status=500)
    httpserver.expect_request("/gone").respond_with_data("no", status=404)
    dataset = factories.Dataset()
    flaky = factories.Resource(package_id=dataset["id"], url=httpserver.url_for("/flaky"))
    gone = factories.Resource(package_id=dataset["id"], url=httpserver.url_for("/gone"))

    def done(rid, attempts):
        row = checked_row(rid)
        return (row is not None and len(_history(rid)) == attempts
                and not row.reason.endswith("(will retry)") and row)

    for round_, expected in ((1, "One-off failure on"), (2, "Failed 2 checks in a row since")):
        row = wait_for(lambda n=round_: done(flaky["id"], 3 * n), timeout=60)
        assert (row.failure_count, row.retries) == (round_, 2)
        assert [h.attempt for h in _history(flaky["id"])][-3:] == [0, 1, 2]
        text = status_section(app, dataset, flaky, case=f"counts: 500 after round {round_}")
        assert expected in text
        if round_ == 2:
            assert "tried 2 more times" in text
        row = wait_for(lambda n=round_: done(gone["id"], n))
        assert (row.failure_count, row.retries) == (round_, 0)
        status_section(app, dataset, gone, case=f"counts: 404 after round {round_}")
        if round_ == 1:
            dispatch.enqueue([(flaky["id"], dataset["id"]), (gone["id"], dataset["id"])],
                          "priority", force=True)


# 4 -- moved links are visible -----------------------------------------------

def test_a_permanent_redirect_is_shown_and_filtered(app, celery_worker, httpserver, sysadmin):
    new = httpserver.url_for("/new.csv")
    httpserver.expect_request("/new.csv").respond_with_data("a\n", content_type="text/csv")
    httpserver.expect_request("/old.csv").respond_with_response(
        Response(status=301, headers={"Location": new}))
    httpserver.expect_request("/moving.csv").respond_with_response(
        Response(status=302, headers={"Location": new}))
    httpserver.expect_request("/chain.csv").respond_with_response(
        Response(status=308, headers={"Location": httpserver.url_for("/old.csv")}))
    httpserver.expect_request("/mixed.csv").respond_with_response(
        Response(status=307, headers={"Location": httpserver.url_for("/old.csv")}))
    org = factories.Organization()
    dataset = factories.Dataset(owner_org=org["id"])
    moved = factories.Resource(package_id=dataset["id"], url=httpserver.url_for("/old.csv"))
    temporary = factories.Resource(package_id=dataset["id"],
                                   url=httpserver.url_for("/moving.csv"))
    assert wait_for(lambda: checked_row(moved["id"])).moved_to == new
    row = wait_for(lambda: checked_row(temporary["id"]))
    assert row.moved_to is None and row.url_redirected_to == new
    # 308 then 301: moved for good; 307 then 301: the link itself did not move
    chain = factories.Resource(package_id=dataset["id"], url=httpserver.url_for("/chain.csv"))
    mixed = factories.Resource(package_id=dataset["id"], url=httpserver.url_for("/mixed.csv"))
    assert wait_for(lambda: checked_row(chain["id"])).moved_to == new
    assert wait_for(lambda: checked_row(mixed["id"])).moved_to is None

    text = status_section(app, dataset, moved, case="moved: 301")
    assert f"Link works, but it moved to {new}: update the link" in text
    assert "Link OK" not in text
    text = status_section(app, dataset, temporary, case="moved: 302")
    assert "Link OK" in text and "moved" not in text

    login(app, sysadmin)
    report = app.get(f"/report/broken-links/{org['name']}",
                     query_string={"status": "moved", "format": "json"}).get_json()
    assert sorted(r["resource_id"] for r in report["rows"]) == sorted([moved["id"], chain["id"]])
    assert {r["moved_to"] for r in report["rows"]} == {new}
    page = app.get(f"/report/broken-links/{org['name']}").get_data(as_text=True)
    assert "Link moved (permanent redirect): update it (2)" in page


# 5 -- pending is visible ----------------------------------------------------

def test_a_queued_check_is_shown_until_its_result_lands(app, archiver_env, httpserver):
    from celery.contrib.testing.worker import start_worker

    from ckanext.archiver import config
    from ckanext.archiver.worker import app as worker_app

    httpserver.expect_request("/later.csv").respond_with_data("a\n", content_type="text/csv")
    dataset = factories.Dataset()
    res = factories.Resource(package_id=dataset["id"], url=httpserver.url_for("/later.csv"))
    body = _page(app, dataset, res)
    assert 'data-archiver-pending="queued"' in body
    assert "archiver-status.js" in body  # the script, through webassets
    text = status_section(app, dataset, res, case="pending: queued, no worker yet")
    assert "Waiting to be checked (queued" in text
    shown = call_action("archiver_resource_show", {"user": ""}, id=res["id"])
    assert shown["pending"] == "queued"

    app_ = worker_app.get_app()
    app_.amqp.queues.select([config.current().queue_name(n) for n in ("priority", "bulk")])
    with start_worker(app_, pool="threads", concurrency=2, perform_ping_check=False,
                      shutdown_timeout=10, loglevel="WARNING"):
        wait_for(lambda: checked_row(res["id"]))
    shown = call_action("archiver_resource_show", {"user": ""}, id=res["id"])
    assert shown["pending"] is None
    body = _page(app, dataset, res)
    assert "data-archiver-pending" not in body
    text = status_section(app, dataset, res, case="pending: after the worker")
    assert "Link OK" in text and "Waiting to be checked" not in text


def test_a_retry_waiting_for_its_countdown_says_so(
        app, celery_worker, httpserver, ckan_config, monkeypatch, sysadmin):
    """A failed attempt waiting for its retry: the page says when it is
    tried again (not "queued" at a time still to come), and "Check link
    now" does not wait for it."""
    monkeypatch.setitem(ckan_config, "ckanext.archiver.max_retries", 1)
    monkeypatch.setitem(ckan_config, "ckanext.archiver.retry_delay", 300)
    httpserver.expect_oneshot_request("/flaky.csv").respond_with_data("busy", status=503)
    httpserver.expect_request("/flaky.csv").respond_with_data("a\n", content_type="text/csv")
    dataset = factories.Dataset()
    res = factories.Resource(package_id=dataset["id"], url=httpserver.url_for("/flaky.csv"))
    row = wait_for(lambda: (r := checked_row(res["id"])) is not None
                   and r.reason.endswith("(will retry)") and r)
    due = row.queued_at
    assert (due - row.updated).total_seconds() >= 200, "the retry waits for its countdown"
    body = _page(app, dataset, res)
    assert 'data-archiver-pending="retry"' in body
    text = status_section(app, dataset, res, case="retry: waiting for its countdown")
    assert f"Waiting to be tried again at {due:%B} {due.day}, {due:%Y}, {due:%H:%M}" in text
    assert "Waiting to be checked" not in text and "Link broken" in text
    assert call_action("archiver_resource_show", {"user": ""}, id=res["id"])["pending"] == "retry"
    shown = call_action("package_show", {"user": ""}, id=dataset["id"])
    assert shown["resources"][0]["archiver"]["pending"] == "retry"

    check_link_now(app, dataset, res, sysadmin)  # ahead of the retry
    row = wait_for(lambda: (r := checked_row(res["id"])) is not None
                   and r.status_id == st.ARCHIVED and r)
    assert len(httpserver.log) == 2
    text = status_section(app, dataset, res, case="retry: after Check link now")
    assert "Link OK" in text and "tried again" not in text
    assert call_action("archiver_resource_show", {"user": ""}, id=res["id"])["pending"] is None


# 6 -- a web page where a file was promised ----------------------------------

def test_a_web_page_instead_of_a_file_is_a_warning(app, celery_worker, httpserver, sysadmin):
    httpserver.expect_request("/data.csv").respond_with_data(
        "<!doctype html><html><body>Please log in</body></html>", content_type="text/html")
    org = factories.Organization()
    dataset = factories.Dataset(owner_org=org["id"])
    res = factories.Resource(package_id=dataset["id"], format="CSV",
                             url=httpserver.url_for("/data.csv"))
    row = wait_for(lambda: checked_row(res["id"]))
    assert row.is_web_page is True and row.is_broken is False
    body = _page(app, dataset, res)
    assert "archiver-status-warning" in body and "archiver-status-ok" not in body
    text = status_section(app, dataset, res, case="web page")
    assert "Link works, but goes to a web page, not a file" in text
    assert "Link OK" not in text

    login(app, sysadmin)
    report = app.get(f"/report/broken-links/{org['name']}",
                     query_string={"status": "webpage", "format": "json"}).get_json()
    assert [r["resource_id"] for r in report["rows"]] == [res["id"]]


def test_a_forced_check_is_not_swallowed_by_a_waiting_routine_one(archiver_env, httpserver):
    """"Check link now" while a routine check of the resource waits: the
    forced one is queued all the same (the waiting one may skip the
    server); a second click is not."""
    from ckanext.archiver import clitools

    dataset = factories.Dataset()
    res = factories.Resource(package_id=dataset["id"], url=httpserver.url_for("/x"))
    item = [(res["id"], dataset["id"])]  # creating it queued it on priority
    assert dispatch.enqueue(item, "priority") == 0
    assert dispatch.enqueue(item, "priority", force=True) == 1
    assert dispatch.enqueue(item, "priority", force=True) == 0
    assert dispatch.enqueue(item, "priority") == 0
    assert dispatch.enqueue(item, "priority", force=True) == 0  # its mark was kept
    assert clitools.waiting_resources() == {"priority": 1, "bulk": 0}
