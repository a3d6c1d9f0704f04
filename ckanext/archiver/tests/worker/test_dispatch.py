"""Triggers, de-duplication and the Celery path, with real Redis and a
real Celery worker."""

import os
import signal
import time

import pytest
from ckan import model
from ckan.tests import factories
from ckan.tests.helpers import call_action

from ckanext.archiver import config, keys
from ckanext.archiver.model import checks
from ckanext.archiver.tests.helpers import archival_row, checked_row, wait_for
from ckanext.archiver.tests.http_fixtures import drip
from ckanext.archiver.worker import app as worker_app
from ckanext.archiver.worker import batch, dispatch, retry, signals, tasks

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db", "archiver_env")


_row = archival_row
_checked = checked_row


def test_create_enqueues_on_priority_once(httpserver):
    res = factories.Resource(url=httpserver.url_for("/a.csv"))
    assert dispatch.lengths() == {"priority": 1, "bulk": 0}
    options = config.current()
    assert keys.client(options).get(keys.pending(options, res["id"])) == b"priority"
    assert _row(res["id"]).queued_at is not None
    # queuing again while it waits does nothing
    assert dispatch.enqueue([(res["id"], res["package_id"])], "priority") == 0
    assert dispatch.enqueue([(res["id"], res["package_id"])], "bulk") == 0
    assert dispatch.lengths() == {"priority": 1, "bulk": 0}


def test_bulk_waiting_resource_is_raised_to_priority():
    dataset = factories.Dataset()
    res = factories.Resource(package_id=dataset["id"])
    dispatch.purge()
    assert dispatch.enqueue([(res["id"], dataset["id"])], "bulk") == 1
    assert dispatch.enqueue([(res["id"], dataset["id"])], "priority") == 1
    assert dispatch.lengths() == {"priority": 1, "bulk": 1}
    assert dispatch.enqueue([(res["id"], dataset["id"])], "priority") == 0


def _drop_messages():
    """Workers took the queued messages (the pending marks stay)."""
    options = config.current()
    r = keys.client(options)
    for name in dispatch.QUEUES:
        r.delete(options.queue_name(name))


def test_metadata_only_edit_enqueues_nothing():
    res = factories.Resource(url="http://127.0.0.1:9/x.csv")
    _drop_messages()  # waits on priority (its mark says so)
    call_action("resource_patch", id=res["id"], description="new words")
    call_action("package_patch", id=res["package_id"], notes="more words")
    assert dispatch.lengths() == {"priority": 0, "bulk": 0}
    call_action("resource_patch", id=res["id"], url="http://127.0.0.1:9/y.csv")
    # still queued from creation (never checked): not queued twice
    assert dispatch.lengths()["priority"] == 0


def test_url_change_of_checked_resource_enqueues(httpserver):
    httpserver.expect_request("/a").respond_with_data("a")
    res = factories.Resource(url=httpserver.url_for("/a"))
    batch.archive_batch([res["id"]])
    dispatch.purge()
    call_action("resource_patch", id=res["id"], name="renamed")
    assert dispatch.lengths()["priority"] == 0
    call_action("resource_patch", id=res["id"], url=httpserver.url_for("/b"))
    assert dispatch.lengths()["priority"] == 1


def test_broker_down_save_still_succeeds(ckan_config, monkeypatch, caplog):
    monkeypatch.setitem(ckan_config, "ckanext.archiver.broker_url", "redis://127.0.0.1:1/0")
    worker_app.reset()
    keys.forget_clients()
    dataset = factories.Dataset()
    res = call_action("resource_create", package_id=dataset["id"], url="http://example.com/x")
    assert res["id"]
    assert "Could not queue 1 resources" in caplog.text
    assert call_action("package_show", id=dataset["id"])["num_resources"] == 1


def test_end_to_end_through_celery(celery_worker, httpserver, archive_dir):
    httpserver.expect_request("/ok.csv").respond_with_data("a,b\n", content_type="text/csv")
    httpserver.expect_request("/missing").respond_with_data("", status=404)
    dataset = factories.Dataset(resources=[
        {"url": httpserver.url_for("/ok.csv"), "name": "ok"},
        {"url": httpserver.url_for("/missing"), "name": "missing"}])
    ok, missing = dataset["resources"]
    assert wait_for(lambda: _checked(ok["id"])).status_id == 0
    assert wait_for(lambda: _checked(missing["id"])).is_broken is True
    shown = call_action("package_show", id=dataset["id"])
    assert shown["archiver"]["is_broken"] is True
    # `update` through the bulk queue: rechecked, unchanged or 304
    before = _row(ok["id"]).updated
    assert dispatch.enqueue([(ok["id"], dataset["id"])], "bulk") == 1
    wait_for(lambda: _row(ok["id"]).updated > before)
    assert dispatch.lengths() == {"priority": 0, "bulk": 0}


@pytest.mark.celery
def test_sigkill_mid_download_is_redelivered(subprocess_worker, raw_server, archive_dir):
    """The pool process is killed while it downloads: the message comes back,
    the resource ends archived, and no partial file is left."""
    calls = []
    slow = drip(b"z" * 40, interval=0.1)

    def handler(request, conn):
        calls.append(time.monotonic())
        return slow(request, conn)

    url = raw_server.route("/slow", handler)
    proc = subprocess_worker("--pool=prefork", "--concurrency=1")
    res = factories.Resource(url=url)
    wait_for(lambda: calls, timeout=60)
    time.sleep(0.5)
    children = [int(p) for p in os.popen(f"pgrep -P {proc.pid}").read().split()]
    assert children, "no pool process"
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    row = wait_for(lambda: _checked(res["id"]), timeout=60)
    assert len(calls) >= 2
    assert row.status_id == 0 and row.size == 40
    files = [p for p in archive_dir.rglob("*") if p.is_file()]
    assert [p.read_bytes() for p in files] == [b"z" * 40]


def test_lost_queue_entries_come_back(httpserver):
    """Redis lost its queues (restart without persistence): the rows still
    say what was waiting, and requeue_lost (run at worker start and by
    `update --stale`) queues it again."""
    factories.Resource(url=httpserver.url_for("/x"))
    assert dispatch.lengths()["priority"] == 1
    dispatch.purge()  # queues and pending marks gone, as after a Redis restart
    assert dispatch.lengths() == {"priority": 0, "bulk": 0}
    assert dispatch.requeue_lost() == 1
    assert dispatch.lengths() == {"priority": 0, "bulk": 1}
    assert dispatch.requeue_lost() == 0  # waiting again: not twice


def test_worker_start_recovers_lost_entries(httpserver):
    res = factories.Resource(url=httpserver.url_for("/x"))
    dispatch.purge()
    signals.on_worker_ready()
    assert dispatch.lengths()["bulk"] == 1
    assert keys.client(config.current()).get(keys.pending(config.current(), res["id"])) == b"bulk"


def test_message_that_kills_its_worker_is_not_redelivered_forever(httpserver):
    import uuid

    res = factories.Resource(url=httpserver.url_for("/x"))
    task_id = str(uuid.uuid4())
    for _ in range(retry.MAX_DELIVERIES):
        assert not tasks._too_many_deliveries(task_id)
    assert tasks._too_many_deliveries(task_id)
    tasks._record_system_error([res["id"]], "System error during archival: the worker "
                               "stopped every time it archived this")
    row = _row(res["id"])
    assert row.status_id == 23 and row.is_broken is None and "worker stopped" in row.site_fault
    assert row.reason == "System error during archival"  # the cause is for sysadmins


def test_database_unavailable_retries_then_gives_up(httpserver, monkeypatch, ckan_config):
    """A dropped database connection during a task: the task is retried
    (max_retries times, with backoff), then fails; no crash loop."""
    import sqlalchemy as sa

    monkeypatch.setitem(ckan_config, "ckanext.archiver.max_retries", 2)
    res = factories.Resource(url=httpserver.url_for("/x"))
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    monkeypatch.setattr(checks, "load_jobs", broken)
    worker_app.get_app()
    from celery.exceptions import Retry

    with pytest.raises(Retry):  # retried later, with backoff
        tasks.archive_resources.apply(args=[[res["id"]]], throw=True).get()
    monkeypatch.setitem(ckan_config, "ckanext.archiver.max_retries", 0)
    with pytest.raises(sa.exc.OperationalError):  # out of retries: fails, no loop
        tasks.archive_resources.apply(args=[[res["id"]]], throw=True).get()
    assert len(calls) == 2


def test_queued_only_after_the_real_commit(httpserver, monkeypatch):
    """CKAN's package_update releases a SAVEPOINT before it commits: the
    resource must be queued only once its new URL is visible to a worker."""
    import sqlalchemy as sa

    httpserver.expect_request("/v1").respond_with_data("1")
    res = factories.Resource(url=httpserver.url_for("/v1"))
    batch.archive_batch([res["id"]])
    seen = []
    real = dispatch.enqueue

    def spy(items, queue_name="bulk", force=False):
        with model.meta.engine.connect() as conn:  # what a worker would read
            seen.append(conn.execute(sa.text("SELECT url FROM resource WHERE id = :id"),
                                     {"id": res["id"]}).scalar())
        return real(items, queue_name, force)

    monkeypatch.setattr(dispatch, "enqueue", spy)
    call_action("resource_patch", id=res["id"], url=httpserver.url_for("/v2"))
    assert seen == [httpserver.url_for("/v2")]


def test_edit_raises_never_checked_resource_waiting_on_bulk():
    dataset = factories.Dataset()
    res = factories.Resource(package_id=dataset["id"], url="http://127.0.0.1:9/a")
    dispatch.purge()
    assert dispatch.enqueue([(res["id"], dataset["id"])], "bulk") == 1
    call_action("package_patch", id=dataset["id"], notes="edited")
    options = config.current()
    assert keys.client(options).get(keys.pending(options, res["id"])) == b"priority"
    assert dispatch.lengths() == {"priority": 1, "bulk": 1}
