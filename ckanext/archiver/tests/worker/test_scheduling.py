"""Checks of a busy host wait on its list in Redis, not on a thread; a
priority check takes the host's next free slot; an edit always wins; the
Redis client serves every download thread. Real HTTP server on 127.0.0.1,
PostgreSQL, Redis and a Celery worker."""

import threading
import time

import pytest
from ckan import model
from ckan.tests import factories
from ckan.tests.helpers import call_action

from ckanext.archiver import config, keys
from ckanext.archiver.model import Archival, ArchivalHistory
from ckanext.archiver.tests.helpers import wait_for
from ckanext.archiver.tests.http_fixtures import KEEP_ALIVE, respond
from ckanext.archiver.worker import dispatch, hosts, tasks

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db", "archiver_env")


class Origin:
    """Handlers that answer after ``delay`` s and note, as the server saw
    them, the most requests in flight at once and the request order."""

    def __init__(self, delay):
        self.delay = delay
        self.lock = threading.Lock()
        self.in_flight = self.most = 0
        self.seen = []

    def __call__(self, request, conn):
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            self.seen.append((time.monotonic(), request.path))
        time.sleep(self.delay)
        with self.lock:
            self.in_flight -= 1
        respond(conn, 200, b"a,b\n1,2\n", {"Content-Type": "text/csv"}, keep_alive=True)
        return KEEP_ALIVE


def _mark(resource_id):
    """The resource's pending mark (the queue it waits on), or None."""
    options = config.current()
    return keys.client(options).get(keys.pending(options, resource_id))


def _row(resource_id):
    model.Session.expire_all()
    return Archival.get_for_resource(resource_id)


def _checked(ids):
    model.Session.expire_all()
    return model.Session.query(Archival).filter(
        Archival.resource_id.in_(ids), Archival.status_id.isnot(None)).count()


@pytest.fixture
def polite(ckan_config, monkeypatch):
    def set_(concurrency, min_interval=0.0, start=0.0):
        for key, value in {"per_host_concurrency": concurrency,
                           "per_host_min_interval": min_interval,
                           "per_host_start_interval": start}.items():
            monkeypatch.setitem(ckan_config, "ckanext.archiver." + key, value)
    return set_


def _dataset(raw_server, origin, count, prefix="r"):
    pkg = factories.Dataset()
    res = [factories.Resource(package_id=pkg["id"],
                              url=raw_server.route(f"/{prefix}{k}.csv", origin))
           for k in range(count)]
    dispatch.purge()  # what the hook queued on creation
    return pkg, [r["id"] for r in res]


def test_busy_host_checks_wait_on_its_list_not_on_a_thread(raw_server, polite, events):
    polite(2, min_interval=0.01, start=0.2)
    origin = Origin(0.1)
    pkg, ids = _dataset(raw_server, origin, 16)
    started = time.monotonic()
    counts = tasks.archive_resources.apply(args=[ids], kwargs={"queue": "bulk"}).get()
    took = time.monotonic() - started
    assert counts["waiting for their host"] >= 12, counts
    assert took < 1.5, "the task does not wait for its host"
    wait_for(lambda: _checked(ids) == len(ids), timeout=20)
    assert origin.most <= 2, "never more than per_host_concurrency in flight"
    assert len(origin.seen) == len(ids), "one attempt per resource"
    assert {_row(rid).status_id for rid in ids} == {0}
    assert _mark(ids[-1]) is None
    gap = hosts.hostqueue().pace("127.0.0.1")["gap"]
    assert 0.01 <= gap < 0.2, "the pace followed the fast answers"
    starts = [t for t, _path in origin.seen]
    assert min(b - a for a, b in zip(starts, starts[1:])) >= 0.009
    # the dataset is announced once, when its last resource is recorded
    wait_for(lambda: ("package-archived", pkg["id"]) in [
        (name, key) for name, key in events], timeout=5)


def test_priority_edit_takes_the_busy_hosts_next_slot(raw_server, polite, request):
    """An edit of a resource waiting in a running bulk backlog on its host
    is checked at its new URL on the host's next free slot, ahead of the
    bulk checks waiting for it."""
    polite(1)
    origin = Origin(0.3)
    pkg, ids = _dataset(raw_server, origin, 8)
    request.getfixturevalue("celery_worker")  # started once nothing else is queued
    dispatch.enqueue([(rid, pkg["id"]) for rid in ids], "bulk")
    wait_for(lambda: len(origin.seen) >= 1, timeout=10)
    edited = ids[-1]
    assert _mark(edited) == b"bulk", "waits for its host"
    new_url = raw_server.route("/edited.csv", origin)
    t_edit = time.monotonic()
    call_action("resource_patch", id=edited, url=new_url)
    wait_for(lambda: _row(edited).url == new_url and _row(edited).status_id == 0, timeout=10)
    latency = time.monotonic() - t_edit
    assert latency < 1.5, "one request in flight (0.3 s) ahead of it, not seven"
    order = [path for _t, path in origin.seen]
    assert "/edited.csv" in order[:3], order
    wait_for(lambda: _checked(ids) == len(ids), timeout=20)
    assert _row(edited).url == new_url
    assert f"/r{len(ids) - 1}.csv" not in order or order.count("/edited.csv") == 1


def test_a_bulk_result_for_an_old_url_is_not_recorded(raw_server, polite, request):
    """The bulk batch had taken the resource (no pending mark left) and is
    downloading its old URL when the URL is edited: the edit is checked at
    once, and the old URL's result, arriving after, goes to the history
    only."""
    polite(4)
    slow = Origin(1.5)
    fast = Origin(0.0)
    pkg, [rid] = _dataset(raw_server, slow, 1, prefix="old")
    request.getfixturevalue("celery_worker")
    dispatch.enqueue([(rid, pkg["id"])], "bulk")
    wait_for(lambda: len(slow.seen) == 1, timeout=10)
    assert _mark(rid) is None, "taken by its batch"
    new_url = raw_server.route("/new.csv", fast)
    call_action("resource_patch", id=rid, url=new_url)
    wait_for(lambda: _row(rid).url == new_url and _row(rid).status_id == 0, timeout=10)
    assert slow.in_flight == 1, "checked while the old download still ran"
    wait_for(lambda: model.Session.query(ArchivalHistory).filter_by(
        resource_id=rid).count() == 2, timeout=10)
    row = _row(rid)
    assert (row.url, row.status_id) == (new_url, 0), "the old URL's result is history"


def test_redis_client_serves_more_threads_than_connections(monkeypatch):
    monkeypatch.setattr(keys, "REDIS_CONNECTIONS", 4)
    keys.forget_clients()
    options = config.current()
    errors = []

    def work():
        try:
            for _ in range(20):
                with keys.client(options).pipeline(transaction=False) as pipe:
                    pipe.ping()
                    pipe.execute()
        except Exception as e:  # noqa: BLE001 (what the test looks for)
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert keys.client(options).connection_pool.max_connections == 4
    keys.forget_clients()


def test_a_429_with_retry_after_holds_the_host_back(raw_server, polite):
    """The pace honours Retry-After for every check of the host, and none
    of them waits on a thread meanwhile."""
    polite(1)
    seen = []

    def busy_then_ok(request, conn):
        seen.append(time.monotonic())
        if len(seen) == 1:
            respond(conn, 429, b"slow down", {"Retry-After": "2"}, keep_alive=True)
        else:
            respond(conn, 200, b"a,b\n1,2\n", {"Content-Type": "text/csv"}, keep_alive=True)
        return KEEP_ALIVE

    pkg, ids = _dataset(raw_server, busy_then_ok, 3)
    started = time.monotonic()
    counts = tasks.archive_resources.apply(args=[ids], kwargs={"queue": "bulk"}).get()
    assert time.monotonic() - started < 1.5 and counts["waiting for their host"] == 2
    wait_for(lambda: _checked(ids) == 3, timeout=15)
    assert len(seen) == 3
    assert seen[1] - seen[0] >= 1.9, "nothing before Retry-After"
    # backed off to 1 s, then half way back towards the fast answers twice
    assert hosts.hostqueue().pace("127.0.0.1")["gap"] == pytest.approx(0.25, abs=0.02)


def test_a_check_that_comes_late_to_its_start_asks_for_a_new_one(polite, monkeypatch):
    # starts are reserved; one that came late (a busy machine) would reach
    # the host closer than the gap to the next one
    from ckanext.archiver.model.checks import Job

    polite(3, min_interval=0.2, start=0.2)
    hq = hosts.hostqueue()
    [a] = hq.submit("late.example", "a")[1]
    assert hosts.keep_pace(Job("ra"), a, hq) is a, "on time"
    [b] = hq.submit("late.example", "b")[1]
    time.sleep(0.1)
    later = []
    monkeypatch.setattr(hosts, "start", later.extend)
    job = Job("ra")
    assert hosts.keep_pace(job, a, hq) is None and job.deferred, "not waited for on the thread"
    assert [g.token for g in later] == [a.token]
    assert later[0].wait == pytest.approx(0.3, abs=0.04), "the gap after b's start"
    # late, and no start reserved since: it goes now, and the next is
    # spaced from there
    [c] = hq.submit("alone.example", "c")[1]
    time.sleep(0.15)
    job = Job("rc")
    now = hosts.keep_pace(job, c, hq)
    assert now is not None and now.wait == 0 and not job.deferred
    assert hq.submit("alone.example", "d")[1][0].wait == pytest.approx(0.2, abs=0.03)
