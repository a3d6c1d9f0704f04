"""Contract of the names ckanext-qa (qld-gov-au and ckan forks) and its
tests import from ckanext.archiver, each used the way qa uses it, with the
values qa then reads. Written from reading qa's public code (tasks.py,
plugin.py, controllers/__init__.py, logic/action.py, tests/); none of it is
copied here. Real HTTP servers on 127.0.0.1, PostgreSQL and Redis."""

import datetime
import json
import time

import pytest
import sqlalchemy as sa
from ckan import model
from ckan.tests import factories

import ckanext.archiver.tasks
from ckanext.archiver import lib as archiver_lib
from ckanext.archiver import model as archiver_model
from ckanext.archiver import status as st
from ckanext.archiver.interfaces import IPipe
from ckanext.archiver.model import Archival, Status
from ckanext.archiver.tasks import (
    LinkCheckerError,
    LinkHeadMethodNotSupported,
    LinkHeadRequestError,
    LinkInvalidError,
    link_checker,
    notify_package,
    notify_resource,
    update_package,
    update_resource,
)
from ckanext.archiver.testing.pipe import RecordingPipe
from ckanext.archiver.worker import dispatch

pytestmark = [
    pytest.mark.ckan_config("ckan.plugins", "archiver archiver_test_pipe"),
    pytest.mark.usefixtures("with_plugins", "clean_db", "archiver_env"),
]

TODAY = datetime.datetime(2008, 10, 10)


@pytest.fixture(autouse=True)
def recorded():
    RecordingPipe.clear()
    yield RecordingPipe
    RecordingPipe.clear()


# -- model.Status (qa tasks.py: Status.by_text('Chose not to download')) ------

def test_status_texts_and_ids_are_the_older_archivers():
    older = {0: "Archived successfully", 1: "Content has not changed", 10: "URL invalid",
             11: "URL request failed", 12: "Download error", 21: "Chose not to download",
             22: "Download failure", 23: "System error during archival"}
    for status_id, text in older.items():
        assert Status.by_text(text) == status_id
        assert Status.by_id(status_id) == text
    assert Status.instance() is Status.instance()
    with pytest.raises(KeyError):
        Status.by_text("No such status")
    with pytest.raises(KeyError):
        Status.by_id(99)


def test_status_rules_come_from_status_py():
    for status_id in list(st.STATUSES) + [5, 15, 30]:
        assert Status.is_status_broken(status_id) is st.is_broken(status_id)
    assert [Status.is_ok(i) for i in (0, 1, 2, 10, 12, 21, 23)] == [
        True, True, True, False, False, False, False]
    assert archiver_model.broken_enum == {
        True: "Broken", None: "Not sure if broken", False: "Downloaded OK"}


# -- Archival.create, as qa's tests make rows -------------------------------

def test_archival_create_returns_the_row_made_at_queue_time():
    dataset = factories.Dataset(resources=[{"url": "http://example.com/a.csv"}])
    res_id = dataset["resources"][0]["id"]
    queued = Archival.get_for_resource(res_id)
    assert queued is not None and queued.queued_at is not None  # made by the queue

    archival = Archival.create(res_id)  # qa: create, fill in, add, commit
    assert archival is queued
    archival.cache_filepath = __file__
    archival.updated = TODAY
    archival.status_id = Status.by_text("Archived successfully")
    model.Session.add(archival)
    model.Session.commit()

    model.Session.remove()
    rows = model.Session.query(Archival).filter(Archival.resource_id == res_id).all()
    assert len(rows) == 1
    row = rows[0]
    assert (row.status_id, row.status, row.cache_filepath) == (0, "Archived successfully",
                                                              __file__)
    assert row.updated.isoformat() == TODAY.isoformat()  # qa's archival_timestamp
    assert row.package_id == dataset["id"]


def test_archival_create_without_a_row_makes_one():
    dataset = factories.Dataset(resources=[{"url": "http://example.com/a.csv"}])
    res_id = dataset["resources"][0]["id"]
    model.Session.query(Archival).delete()
    model.Session.commit()

    archival = Archival.create(res_id)
    assert archival.resource_id == res_id and archival.package_id == dataset["id"]
    archival.status_id = Status.by_text("Download error")
    archival.is_broken = True
    archival.reason = "Server returned 500 error"
    archival.first_failure = datetime.datetime(2008, 10, 1, 6, 30)
    archival.failure_count = 16
    model.Session.add(archival)
    model.Session.commit()
    model.Session.remove()
    row = Archival.get_for_resource(res_id)
    # what qa's broken_link_error_message reads
    assert (row.is_broken, row.status, row.reason, row.failure_count, row.last_success) == (
        True, "Download error", "Server returned 500 error", 16, None)
    assert row.as_dict()["status"] == "Download error"  # qa_resource_show


def test_init_tables_makes_the_tables_after_a_reset():
    from ckan.cli.db import _run_migrations

    _run_migrations("archiver", "base", forward=False)  # as after CKAN's first clean_db
    assert not sa.inspect(model.meta.engine).has_table("archival")
    archiver_model.init_tables(model.meta.engine)  # qa's reset_qa_db fixture
    assert sa.inspect(model.meta.engine).has_table("archival")
    archiver_model.init_tables(model.meta.engine)  # again: nothing to do, no error


def test_aggregate_archivals_for_a_dataset():
    dataset = factories.Dataset(resources=[{"url": "http://example.com/a"},
                                           {"url": "http://example.com/b"}])
    a, b = dataset["resources"]
    assert archiver_model.aggregate_archivals_for_a_dataset([]) == {
        "status_id": None, "status": None, "reason": None, "is_broken": None}
    for res, status_id, reason in ((a, 0, ""), (b, 12, "Server returned 404")):
        row = Archival.create(res["id"])
        row.status_id, row.is_broken, row.reason = status_id, st.is_broken(status_id), reason
        model.Session.add(row)
    model.Session.commit()
    summary = archiver_model.aggregate_archivals_for_a_dataset(
        Archival.get_for_package(dataset["id"]))
    assert summary == {"status_id": 12, "status": "Download error",
                       "reason": "Server returned 404", "is_broken": True}


# -- tasks.link_checker (qa controllers/__init__.py: _check_link) -------------

def _qa_check(url, url_timeout=10):
    """qa's call: link_checker(json.dumps(context), json.dumps(data))."""
    return json.loads(link_checker(json.dumps({}), json.dumps(
        {"url_timeout": url_timeout, "url": url})))


def test_link_checker_returns_the_headers_qa_reads(httpserver):
    httpserver.expect_request("/file.csv", method="HEAD").respond_with_data(
        "x" * 1234, headers={"Content-Type": "text/csv; charset=utf-8",
                             "Last-Modified": "Tue, 01 Dec 2026 10:00:00 GMT"})
    headers = _qa_check(httpserver.url_for("/file.csv"))
    assert headers["content-type"] == "text/csv; charset=utf-8"
    assert headers["content-length"] == "1234"
    assert headers["last-modified"] == "Tue, 01 Dec 2026 10:00:00 GMT"
    assert [r.method for r, _ in httpserver.log] == ["HEAD"]


def test_link_checker_colon_in_query_and_trailing_whitespace(httpserver):
    httpserver.expect_request("/").respond_with_data("")
    assert isinstance(_qa_check(httpserver.url_for("/") + "?time=09:30&status=200 "), dict)


@pytest.mark.parametrize("status, text", [(404, "404 Not Found"),
                                          (503, "503 Service Unavailable")])
def test_link_checker_error_status(httpserver, status, text):
    httpserver.expect_request("/x").respond_with_data("", status=status)
    with pytest.raises(LinkHeadRequestError) as e:
        _qa_check(httpserver.url_for("/x"))
    assert str(e.value) == f"Server returned HTTP error status: {text}"
    assert isinstance(e.value, LinkCheckerError)  # what qa catches


def test_link_checker_head_not_allowed(httpserver):
    httpserver.expect_request("/x").respond_with_data("", status=405)
    with pytest.raises(LinkHeadMethodNotSupported):
        _qa_check(httpserver.url_for("/x"))


def test_link_checker_redirect_not_followed(httpserver):
    httpserver.expect_request("/old").respond_with_data(
        "", status=301, headers={"Location": httpserver.url_for("/new")})
    headers = _qa_check(httpserver.url_for("/old"))
    assert headers["location"] == httpserver.url_for("/new")
    assert [r.path for r, _ in httpserver.log] == ["/old"]


@pytest.mark.parametrize("url, text", [
    ("file:///home/root/test.txt", "Invalid url scheme. Please use one of: http https"),
    ("http://", "URL parsing failure - did not find a host name"),
    ("ftp://example.com/x", "Invalid url scheme. Please use one of: http https"),
])
def test_link_checker_invalid_url(url, text):
    with pytest.raises(LinkInvalidError) as e:
        _qa_check(url)
    assert str(e.value) == text


def test_link_checker_goes_through_the_ssrf_guard(httpserver, ckan_config, monkeypatch):
    monkeypatch.setitem(ckan_config, "ckanext.archiver.allowed_networks", "")
    httpserver.expect_request("/secret").respond_with_data("")
    with pytest.raises(LinkInvalidError) as e:
        _qa_check(httpserver.url_for("/secret"))
    assert "private or local network address" in str(e.value)
    assert not httpserver.log, "the request reached the server"


def test_link_checker_timeout_is_the_engines(raw_server, ckan_config, monkeypatch):
    monkeypatch.setitem(ckan_config, "ckanext.archiver.read_timeout", 1)

    def hang(request, conn):
        time.sleep(5)

    url = raw_server.route("/hang", hang)
    started = time.monotonic()
    with pytest.raises(LinkHeadRequestError) as e:
        _qa_check(url, url_timeout=30)  # the configured read timeout wins
    assert time.monotonic() - started < 4
    assert "timed out" in str(e.value)


# -- IPipe, notify_*, update_* ----------------------------------------------

def test_ipipe_send_data_reaches_a_plugin_as_qa_implements_it():
    dataset = factories.Dataset()
    IPipe.send_data("package-archived", "priority", package_id=dataset["id"])
    [event] = RecordingPipe.of("package-archived")
    assert (event["queue"], event["params"]) == ("priority", {"package_id": dataset["id"]})


def test_notify_package_and_resource_as_qa_tests_call_them():
    dataset = factories.Dataset(resources=[{"url": "http://example.com/a"}])
    notify_package(dataset, "priority")  # qa test_tasks: a package dict
    notify_resource(dataset["resources"][0], "bulk", "/tmp/x")
    notify_package(model.Package.get(dataset["id"]), "bulk")  # or a Package
    assert [(e["operation"], e["queue"], e["params"]) for e in RecordingPipe.events] == [
        ("package-archived", "priority", {"package_id": dataset["id"]}),
        ("archived", "bulk", {"resource_id": dataset["resources"][0]["id"],
                              "cache_filepath": "/tmp/x"}),
        ("package-archived", "bulk", {"package_id": dataset["id"]}),
    ]


def test_update_package_and_update_resource_queue_on_the_archivers_queues():
    dataset = factories.Dataset(resources=[{"url": "http://example.com/a"},
                                           {"url": "http://example.com/b"}])
    dispatch.purge()
    assert update_package(dataset["id"], "bulk") == 2
    assert dispatch.lengths() == {"priority": 0, "bulk": 1}  # one batch
    dispatch.purge()
    assert update_resource(dataset["resources"][0]["id"], "priority") == 1
    assert dispatch.lengths() == {"priority": 1, "bulk": 0}
    assert update_resource("no-such-id") == 0
    update_package.get_logger = lambda: None  # qa's test_link_checker does this


def test_lib_module_of_the_older_archiver():
    dataset = factories.Dataset(resources=[{"url": "http://example.com/a"}],
                                extras=[{"key": "k", "value": "v"}])
    dispatch.purge()
    assert archiver_lib.create_archiver_package_task(
        model.Package.get(dataset["id"]), "priority") == 1
    dispatch.purge()
    assert archiver_lib.create_archiver_resource_task(
        model.Resource.get(dataset["resources"][0]["id"]), "bulk") == 1
    assert archiver_lib.get_extra_from_pkg_dict(dataset, "k") == "v"
    assert archiver_lib.get_extra_from_pkg_dict(dataset, "none", 1) == 1


def test_every_name_qa_imports_is_there():
    # qa tasks.py, logic/action.py, bin/migrate_task_status.py
    # qa plugin.py
    from ckanext.archiver.interfaces import IPipe  # noqa: F401
    from ckanext.archiver.model import Archival, Status  # noqa: F401

    # qa controllers/__init__.py (loaded with qa's plugin)
    # qa tests
    from ckanext.archiver.tasks import (  # noqa: F401
        LinkCheckerError,
        link_checker,
        update_package,  # noqa: F401
    )
    assert callable(ckanext.archiver.tasks.notify_package)
    for name in ("init_tables", "aggregate_archivals_for_a_dataset", "broken_enum"):
        assert hasattr(archiver_model, name)
    with pytest.raises(AttributeError):
        ckanext.archiver.tasks.no_such_name  # noqa: B018
