"""``package-archived`` once per dataset round, whatever checked its
resources: a real Celery worker (threads, both queues), real HTTP servers on
127.0.0.1, PostgreSQL and Redis. Events are received by the test plugin
``archiver_test_pipe``, an IPipe implemented as ckanext-qa implements it,
which snapshots the dataset's rows when it gets the event."""

import datetime
import threading
import time

import pytest
from ckan import model
from ckan.tests import factories
from ckan.tests.helpers import call_action

from ckanext.archiver import status as st
from ckanext.archiver.model import Archival, selection
from ckanext.archiver.testing.pipe import RecordingPipe
from ckanext.archiver.tests.helpers import checked_row, wait_for
from ckanext.archiver.tests.http_fixtures import respond
from ckanext.archiver.worker import dispatch

pytestmark = [
    pytest.mark.ckan_config("ckan.plugins", "archiver archiver_test_pipe"),
    pytest.mark.usefixtures("with_plugins", "clean_db", "celery_worker"),
]

QUIET = 1.5  # seconds without a second event before counting


@pytest.fixture(autouse=True)
def recorded():
    RecordingPipe.clear()
    yield RecordingPipe
    RecordingPipe.clear()


def _csv(httpserver, path, body=b"a,b\n1,2\n"):
    httpserver.expect_request(path).respond_with_data(body, content_type="text/csv")
    return httpserver.url_for(path)


def _one_round(dataset_id, resource_ids, timeout=30):
    """Wait for the dataset's event, then a quiet spell; return the only
    event after checking the rows it saw were all committed."""
    wait_for(lambda: RecordingPipe.of("package-archived", package_id=dataset_id),
             timeout=timeout)
    time.sleep(QUIET)
    events = RecordingPipe.of("package-archived", package_id=dataset_id)
    assert len(events) == 1, events
    event = events[0]
    rows = {row["id"]: row for row in event["rows"]}
    assert set(rows) == set(resource_ids)
    for rid in resource_ids:
        assert not rows[rid]["waiting"], (rid, event["rows"])
        assert rows[rid]["status_id"] is not None, (rid, event["rows"])
    return event


def test_dataset_created_one_event_after_every_priority_check(httpserver):
    resources = [{"url": _csv(httpserver, f"/{i}.csv")} for i in range(6)]
    dataset = factories.Dataset(resources=resources)
    ids = [r["id"] for r in dataset["resources"]]

    event = _one_round(dataset["id"], ids)
    assert event["queue"] == "priority"
    assert event["params"] == {"package_id": dataset["id"]}  # as the older archiver
    assert {row["status_id"] for row in event["rows"]} == {st.ARCHIVED}
    archived = [e["params"]["resource_id"] for e in RecordingPipe.of("archived")]
    assert sorted(archived) == sorted(ids)  # one per resource, as before


def test_one_url_changed_one_event_with_the_new_result(httpserver):
    dataset = factories.Dataset(resources=[{"url": _csv(httpserver, f"/{i}.csv")}
                                           for i in range(3)])
    ids = [r["id"] for r in dataset["resources"]]
    _one_round(dataset["id"], ids)
    RecordingPipe.clear()
    httpserver.expect_request("/gone").respond_with_data("", status=404)

    call_action("resource_patch", id=ids[1], url=httpserver.url_for("/gone"))

    event = _one_round(dataset["id"], ids)
    by_id = {row["id"]: row for row in event["rows"]}
    assert by_id[ids[1]]["status_id"] == st.DOWNLOAD_ERROR
    assert [e["params"]["resource_id"] for e in RecordingPipe.of("archived")] == [ids[1]]


def test_stale_run_picking_part_of_a_dataset(httpserver, ckan_config, monkeypatch):
    monkeypatch.setitem(ckan_config, "ckanext.archiver.batch_size", 1)  # a batch each
    dataset = factories.Dataset(resources=[{"url": _csv(httpserver, f"/{i}.csv")}
                                           for i in range(4)])
    ids = [r["id"] for r in dataset["resources"]]
    _one_round(dataset["id"], ids)
    RecordingPipe.clear()
    old = datetime.datetime(2020, 1, 1)
    model.Session.query(Archival).filter(Archival.resource_id.in_(ids[:2])).update(
        {"updated": old}, synchronize_session=False)
    model.Session.commit()

    # what `ckan archiver update --stale 30` queues
    picked = list(selection.select([dataset["id"]], stale_days=30))
    assert sorted(rid for rid, _pid in picked) == sorted(ids[:2])
    assert dispatch.enqueue(picked, "bulk", force=True) == 2

    event = _one_round(dataset["id"], ids)
    assert event["queue"] == "bulk"
    assert sorted(e["params"]["resource_id"] for e in RecordingPipe.of("archived")) \
        == sorted(ids[:2])


def test_retry_that_finishes_later(httpserver, ckan_config, monkeypatch):
    monkeypatch.setitem(ckan_config, "ckanext.archiver.max_retries", 2)
    monkeypatch.setitem(ckan_config, "ckanext.archiver.retry_delay", 3)  # due in 2-3 s
    calls = []
    lock = threading.Lock()

    def flaky(request):
        from werkzeug import Response

        with lock:
            calls.append(time.monotonic())
            first = len(calls) == 1
        if first:
            return Response("busy", status=503)
        return Response("a,b\n", content_type="text/csv")

    httpserver.expect_request("/flaky.csv").respond_with_handler(flaky)
    dataset = factories.Dataset(resources=[
        {"url": _csv(httpserver, "/a.csv")}, {"url": httpserver.url_for("/flaky.csv")},
        {"url": _csv(httpserver, "/b.csv")}])
    ids = [r["id"] for r in dataset["resources"]]

    wait_for(lambda: calls, timeout=20)
    wait_for(lambda: "(will retry)" in ((checked_row(ids[1]) or Archival()).reason or ""),
             timeout=20)
    assert not RecordingPipe.of("package-archived"), "sent while a retry was due"

    event = _one_round(dataset["id"], ids)
    assert len(calls) == 2
    by_id = {row["id"]: row for row in event["rows"]}
    assert by_id[ids[1]]["status_id"] == st.ARCHIVED


def test_resource_deleted(httpserver):
    dataset = factories.Dataset(resources=[{"url": _csv(httpserver, f"/{i}.csv")}
                                           for i in range(3)])
    ids = [r["id"] for r in dataset["resources"]]
    _one_round(dataset["id"], ids)
    RecordingPipe.clear()

    call_action("resource_delete", id=ids[0])

    event = _one_round(dataset["id"], ids[1:])
    assert event["queue"] == "priority"
    assert not RecordingPipe.of("archived")


def test_deleted_while_its_check_waits(httpserver, raw_server, ckan_config, monkeypatch):
    """A deleted resource whose check is still running does not hold up its
    dataset; the event comes once, when the others are done, and not again
    when the deleted one's download ends."""
    monkeypatch.setitem(ckan_config, "ckanext.archiver.read_timeout", 10)

    def slow(request, conn):
        time.sleep(2)
        respond(conn, 200, b"a\n", {"Content-Type": "text/csv"})

    raw_server.route("/slow.csv", slow)
    dataset = factories.Dataset(resources=[
        {"url": raw_server.url("/slow.csv")}, {"url": _csv(httpserver, "/x.csv")},
        {"url": _csv(httpserver, "/y.csv")}])
    ids = [r["id"] for r in dataset["resources"]]
    wait_for(lambda: checked_row(ids[1]) and checked_row(ids[2]), timeout=20)
    assert not RecordingPipe.of("package-archived")
    call_action("resource_delete", id=ids[0])
    event = _one_round(dataset["id"], ids[1:])
    assert event["params"] == {"package_id": dataset["id"]}
    # the deleted resource's download ends later: no second event
    wait_for(lambda: [e for e in RecordingPipe.of("archived")
                      if e["params"]["resource_id"] == ids[0]], timeout=20)
    time.sleep(QUIET)
    assert len(RecordingPipe.of("package-archived", package_id=dataset["id"])) == 1
