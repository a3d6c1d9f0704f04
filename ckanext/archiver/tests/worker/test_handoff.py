"""A bulk batch does not wait for a hanging download (it is handed off and
recorded when it ends), a check is queued for it in case the worker dies,
and a host that stopped answering is not tried for each of its resources.
Real HTTP servers on 127.0.0.1, PostgreSQL and Redis."""

import base64
import datetime
import json
import time

import pytest
from ckan import model
from ckan.tests import factories

from ckanext.archiver import config, keys
from ckanext.archiver import status as st
from ckanext.archiver.engine import pool
from ckanext.archiver.model import Archival, utcnow
from ckanext.archiver.tests.helpers import wait_for
from ckanext.archiver.tests.http_fixtures import KEEP_ALIVE, respond
from ckanext.archiver.worker import app as worker_app
from ckanext.archiver.worker import batch, retry, tasks

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db", "archiver_env")


def _row(resource_id):
    model.Session.expire_all()
    return Archival.get_for_resource(resource_id)


def _ok(request, conn):
    respond(conn, 200, b"a,b\n1,2\n", {"Content-Type": "text/csv"}, keep_alive=True)
    return KEEP_ALIVE


def _hanging(seconds):
    def handler(request, conn):
        time.sleep(seconds)
    return handler


@pytest.fixture
def fast(ckan_config, monkeypatch):
    for key, value in {"read_timeout": 1, "connect_timeout": 1, "total_timeout": 3}.items():
        monkeypatch.setitem(ckan_config, "ckanext.archiver." + key, value)


def test_hanging_download_handed_off_and_recorded_when_it_ends(raw_server, fast, events):
    dataset, other = factories.Dataset(), factories.Dataset()
    hanging = factories.Resource(package_id=dataset["id"],
                                 url=raw_server.route("/hang", _hanging(3)))
    ok = [factories.Resource(package_id=dataset["id"], url=raw_server.route(f"/{i}.csv", _ok))
          for i in range(9)]
    elsewhere = factories.Resource(package_id=other["id"], url=raw_server.url("/0.csv"))
    ids = [hanging["id"]] + [r["id"] for r in ok] + [elsewhere["id"]]

    started = time.monotonic()
    result = batch.archive_batch(ids, wait_max=30, on_late=lambda late: None)
    took = time.monotonic() - started
    assert took < 0.9, f"the batch waited {took:.2f} s: longer than needed for 10 of 11"
    assert [j.resource_id for j in result.late] == [hanging["id"]]
    assert len(result.recorded) == 10 and _row(hanging["id"]).status_id is None
    assert ("package-archived", other["id"]) in events
    assert ("package-archived", dataset["id"]) not in events, "one of its resources is late"

    wait_for(lambda: _row(hanging["id"]).status_id is not None, timeout=10)
    row = _row(hanging["id"])
    assert row.status_id == st.REQUEST_FAILED
    assert row.reason == "Timed out after 1 s waiting for the server to respond"
    assert pool.drain(5) == 0
    assert ("archived", hanging["id"]) in events
    assert events[-1] == ("package-archived", dataset["id"]), "announced once complete"


def test_without_wait_max_the_batch_waits(raw_server, fast):
    slow = factories.Resource(url=raw_server.route("/slow", _hanging(3)))
    quick = factories.Resource(url=raw_server.route("/ok.csv", _ok))
    started = time.monotonic()
    result = batch.archive_batch([slow["id"], quick["id"]])
    assert time.monotonic() - started >= 1
    assert result.late == [] and len(result.recorded) == 2


def test_handed_off_check_skips_what_was_recorded_since(raw_server):
    done = factories.Resource(url=raw_server.route("/a.csv", _ok))
    lost = factories.Resource(url=raw_server.route("/b.csv", _ok))
    handed_off = utcnow().isoformat()
    batch.archive_batch([done["id"]])
    recorded = _row(done["id"]).updated
    result = batch.archive_batch([done["id"], lost["id"]], force=True,
                                 handed_off_at=handed_off)
    assert [j.resource_id for j in result.skipped] == [done["id"]], (
        "recorded after the hand-off: skipped, even with force")
    assert _row(done["id"]).updated == recorded
    assert _row(lost["id"]).status_id == st.ARCHIVED


def _messages(queue_name):
    raw = keys.client(config.current()).lrange(config.current().queue_name(queue_name), 0, -1)
    out = []
    for message in map(json.loads, raw):
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        out.append((args, kwargs, message["headers"].get("eta")))
    return out


def test_task_queues_a_check_of_handed_off_downloads(raw_server, fast, ckan_config,
                                                     monkeypatch):
    monkeypatch.setitem(ckan_config, "ckanext.archiver.max_retries", 1)
    monkeypatch.setitem(ckan_config, "ckanext.archiver.retry_delay", 60)
    # all ten at once (none waits for its host)
    monkeypatch.setitem(ckan_config, "ckanext.archiver.per_host_concurrency", 10)
    hanging = factories.Resource(url=raw_server.route("/hang", _hanging(3)))
    ok = [factories.Resource(url=raw_server.route(f"/{i}.csv", _ok)) for i in range(9)]
    before = datetime.datetime.now(datetime.timezone.utc)
    counts = tasks.archive_resources.apply(
        args=[[hanging["id"]] + [r["id"] for r in ok]], kwargs={"queue": "bulk"}).get()
    assert counts["handed off"] == 1 and counts["archived"] == 9
    [(args, kwargs, eta)] = _messages("bulk")
    assert args == [[hanging["id"]]]
    assert kwargs["handed_off_at"] and kwargs["queue"] == "bulk"
    delay = (datetime.datetime.fromisoformat(eta) - before).total_seconds()
    assert delay == pytest.approx(retry.late_check_delay(), abs=3)
    assert retry.late_check_delay() == 3 + 120 + 15  # total_timeout, host_wait, margin
    assert pool.drain(5) == 0
    # the late download timed out: recorded as such, and its retry queued
    # from its own thread
    assert _row(hanging["id"]).reason.endswith("(will retry)")
    messages = _messages("bulk")
    assert (args, kwargs, eta) in messages and len(messages) == 2
    [(retry_args, retry_kwargs, retry_eta)] = [m for m in messages if m[1].get("attempt")]
    assert retry_args == [[hanging["id"]]] and retry_kwargs["attempt"] == 1
    assert 40 < (datetime.datetime.fromisoformat(retry_eta) - before).total_seconds() < 80
    # the late check, run when it is due: nothing to do
    result = batch.archive_batch(args[0], "bulk", handed_off_at=kwargs["handed_off_at"])
    assert [j.resource_id for j in result.skipped] == [hanging["id"]]
    monkeypatch.setitem(ckan_config, "ckanext.archiver.total_timeout", 3600)
    assert retry.late_check_delay() == worker_app.MAX_COUNTDOWN


def test_host_that_stopped_answering_is_not_tried(raw_server, fast, ckan_config,
                                                  monkeypatch):
    monkeypatch.setitem(ckan_config, "ckanext.archiver.host_down_after", 2)
    calls = []

    def hang(request, conn):
        calls.append(request.path)
        time.sleep(3)

    raw_server.default = hang
    first = [factories.Resource(url=raw_server.url(f"/first/{i}")) for i in range(2)]
    later = [factories.Resource(url=raw_server.url(f"/later/{i}")) for i in range(3)]
    batch.archive_batch([r["id"] for r in first])
    assert {_row(r["id"]).reason for r in first} == {
        "Timed out after 1 s waiting for the server to respond"}
    started = time.monotonic()
    batch.archive_batch([r["id"] for r in later])
    reasons = sorted(_row(r["id"]).reason for r in later)
    assert reasons == [
        "Not tried: 127.0.0.1 timed out on its last 2 requests or more "
        "(it is tried again once a minute)"] * 2 + [
        "Timed out after 1 s waiting for the server to respond"], "one probe, two skipped"
    assert time.monotonic() - started < 2.5
    assert len(calls) == 3
    assert {_row(r["id"]).status_id for r in later} == {st.REQUEST_FAILED}
    assert all(_row(r["id"]).is_broken for r in later)
