"""Faults, with real processes: a worker killed with SIGKILL, Redis
restarted empty, PostgreSQL connections dropped, a full archive and an
archive that cannot be written.

Each scenario ends with every resource holding a recorded status with a
clear reason, no file outside ``archive_dir`` (nor left in its ``.tmp``), no
crashed worker and no lost row. The figures are printed (``pytest -s``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest
import sqlalchemy as sa
from ckan import model
from ckan.cli.cli import ckan
from ckan.tests import factories

from ckanext.archiver import config, keys
from ckanext.archiver import status as st
from ckanext.archiver.model import Archival, ArchivalHistory
from ckanext.archiver.tests.helpers import archival_row, checked_row, wait_for
from ckanext.archiver.tests.http_fixtures import KEEP_ALIVE, drip, respond, serve_bytes
from ckanext.archiver.worker import app as worker_app
from ckanext.archiver.worker import batch, dispatch

pytestmark = [pytest.mark.reliability,
              pytest.mark.usefixtures("with_plugins", "clean_db", "archiver_env")]

FAST = {"total_timeout": 3, "read_timeout": 1, "connect_timeout": 1}


# -- helpers ------------------------------------------------------------------

_row = archival_row
_checked = checked_row


def _all_checked(resource_ids):
    rows = [_checked(rid) for rid in resource_ids]
    return rows if all(rows) else None


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _tmp_files(archive_dir):
    return [p for p in (archive_dir / ".tmp").rglob("*") if p.is_file()]


def _history_count(resource_id):
    model.Session.remove()
    return model.Session.query(ArchivalHistory).filter_by(resource_id=resource_id).count()


def _first_then_fast(body: bytes, first, calls: list):
    """A route whose first request is answered by ``first`` (a slow or
    hanging handler) and every later one at once with ``body``."""

    def handler(request, conn):
        calls.append(time.monotonic())
        if len(calls) == 1:
            return first(request, conn)
        respond(conn, 200, body, {"Content-Type": "text/plain"}, keep_alive=True)
        return KEEP_ALIVE

    return handler


def _forever(request, conn):
    """Send a body of a million bytes, one byte every 0.1 s."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                 b"Content-Length: 1000000\r\n\r\n")
    for _ in range(1_000_000):
        conn.sendall(b"z")
        time.sleep(0.1)


def _cli(cli, make_ini, *args, **options):
    return cli.invoke(ckan, ["-c", make_ini(**options), "archiver", *args])


# -- 1. a worker killed with SIGKILL -----------------------------------------------

@pytest.mark.celery
def test_worker_main_process_killed_mid_download(worker_factory, raw_server, archive_dir,
                                                 own_broker):
    """SIGKILL to the worker's *main* process while its pool process
    downloads, then a new worker.

    What happens (measured): the pool process notices its parent is gone
    and exits within a second (no orphan keeps downloading); the partial
    temp file stays in ``.tmp`` and the message stays in Redis's ``unacked``
    set. It does **not** come back within a reasonable time: the broker's
    visibility timeout is at least 20 minutes (``worker.app.build``: longer
    than any retry countdown, MAX_COUNTDOWN + 300 s), and the recovery a
    worker runs at start (``worker.dispatch.requeue_lost``, also run by ``ckan
    archiver update --stale``) leaves alone a row started less than the
    hard time limit ago (243 s here), since a worker may still be on it.

    Once both times have passed (simulated: ``started_at`` moved back past
    the hard time limit, the message's ``unacked_index`` score past the
    visibility timeout), a new worker recovers it at start -- both ways at
    once: ``requeue_lost`` queues it again and kombu gives the old message
    back (the resource's claim expired too). It is downloaded once more,
    exactly once (the second delivery is skipped as already checked), the
    partial file is gone, one history row.
    """
    calls: list = []
    body = b"z" * 100
    url = raw_server.route("/slow", _first_then_fast(body, _forever, calls))
    first = worker_factory("--pool=prefork", "--concurrency=1", name="first", **FAST)
    first.wait_ready()
    res = factories.Resource(url=url)
    wait_for(lambda: calls, timeout=30)
    wait_for(lambda: _tmp_files(archive_dir), timeout=10)  # mid-download
    pool = first.children()
    assert pool, "no pool process"
    first.kill_main()
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in pool), timeout=10)

    time.sleep(1)
    r = keys.client(config.current())
    assert _checked(res["id"]) is None
    assert r.hlen("unacked") == 1, "the killed worker's message is held by the broker"
    visibility = worker_app.get_app().conf.broker_transport_options["visibility_timeout"]
    assert visibility >= 1200
    assert dispatch.requeue_lost() == 0, "started less than the hard time limit ago"
    assert dispatch.lengths() == {"priority": 0, "bulk": 0}
    assert _tmp_files(archive_dir), "the partial file is still in .tmp"
    assert len(calls) == 1

    # time passes: the hard time limit, then the visibility timeout
    hard = config.current().time_limits[1]
    model.Session.query(Archival).filter_by(resource_id=res["id"]).update(
        {"started_at": Archival.started_at - sa.text(f"interval '{hard + 1} seconds'")},
        synchronize_session=False)
    model.Session.commit()
    for tag in r.zrange("unacked_index", 0, -1):
        r.zadd("unacked_index", {tag: time.time() - visibility - 60})
    # ...and the dead worker's claim on the resource (inflight.py), which
    # expires 30 s after its last heartbeat
    claims = list(r.scan_iter(match="archiver:*:running:*"))
    assert claims, "the killed worker's claim is still there"
    r.delete(*claims)
    second = worker_factory("--pool=prefork", "--concurrency=1", name="second", **FAST)
    second.wait_ready()
    row = wait_for(lambda: _checked(res["id"]), timeout=30)
    assert (row.status_id, row.size, row.is_broken) == (st.ARCHIVED, 100, False)
    assert open(row.cache_filepath, "rb").read() == body
    wait_for(lambda: r.hlen("unacked") == 0 and dispatch.lengths() == {"priority": 0, "bulk": 0},
             timeout=30)
    time.sleep(0.5)
    assert "Recovered 1 queued resources lost by the broker" in second.output()
    assert second.output().count("] received") == 2, "re-queued, and the old message back"
    assert len(calls) == 2, "downloaded again exactly once"
    assert _history_count(res["id"]) == 1
    assert _tmp_files(archive_dir) == []
    assert _files(archive_dir) == [f"{res['id'][:2]}/{res['id']}/slow"]
    assert second.alive()
    print(f"\n[faults] main process killed: pool process gone, message held "
          f"(visibility timeout {visibility} s); recovered at the next worker start; "
          f"{len(calls)} requests, 1 row, 1 history row, partial file removed")


@pytest.mark.celery
def test_pool_process_killed_while_a_handed_off_download_runs(worker_factory, raw_server,
                                                               archive_dir, own_broker):
    """A bulk batch of ten whose one hanging download was handed off (the
    nine others recorded, the message acknowledged), then SIGKILL to the
    pool process holding it.

    The check queued at hand-off (``late_check_delay``: host_wait 1 s +
    total_timeout 3 s + 15 s) runs in the new pool process, finds the
    resource unrecorded and downloads it again: archived, one history row,
    no partial file, the nine others untouched."""
    calls: list = []
    body = b"late,but,here\n"

    def hang(request, conn):
        time.sleep(30)

    url = raw_server.route("/late.csv", _first_then_fast(body, hang, calls))
    dataset = factories.Dataset()
    late = factories.Resource(package_id=dataset["id"], url=url)
    others = [factories.Resource(package_id=dataset["id"],
                                 url=raw_server.route(f"/{i}.csv", _slow_ok(0)))
              for i in range(9)]
    options = dict(FAST, read_timeout=2, host_wait=1)
    worker = worker_factory("--pool=prefork", "--concurrency=1", name="handoff",
                            queues=("bulk",), **options)
    worker.wait_ready()
    dispatch.purge()  # what the hook queued on priority, one by one: one bulk batch instead
    assert dispatch.enqueue([(late["id"], dataset["id"])]
                         + [(r["id"], dataset["id"]) for r in others], "bulk") == 10
    wait_for(lambda: _all_checked([r["id"] for r in others]), timeout=30)
    assert _checked(late["id"]) is None and len(calls) == 1, "handed off, still hanging"
    pool_pids = worker.children()
    for pid in pool_pids:
        os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: set(worker.children()) - set(pool_pids), timeout=30)
    row = wait_for(lambda: _checked(late["id"]), timeout=60)
    took = time.monotonic() - killed_at
    assert (row.status_id, row.size) == (st.ARCHIVED, len(body))
    assert open(row.cache_filepath, "rb").read() == body
    assert len(calls) == 2
    assert _history_count(late["id"]) == 1
    assert all(_history_count(r["id"]) == 1 for r in others)
    assert _tmp_files(archive_dir) == []
    assert worker.alive()
    print(f"\n[faults] pool process killed holding a handed-off download: re-checked by "
          f"the hand-off check {took:.0f} s later; 2 requests, 1 history row")


# -- 2. Redis restarted empty ----------------------------------------------------

def _slow_ok(delay: float, body: bytes = b"ok,data\n"):
    def handler(request, conn):
        time.sleep(delay)
        respond(conn, 200, body, {"Content-Type": "text/csv"}, keep_alive=True)
        return KEEP_ALIVE
    return handler


@pytest.mark.celery
def test_redis_restarted_mid_run(worker_factory, raw_server, archive_dir, own_broker, cli,
                                 make_ini):
    """A private Redis (never the shared one) is killed with SIGKILL and
    started again empty: queued messages and pending marks are gone.

    First with no worker running: four resources are queued, Redis is
    restarted, and the worker started next queues them again at start
    (``_on_worker_ready`` -> ``dispatch.requeue_lost``). Then while that worker
    is in the middle of a download with seven more resources queued behind
    it: the worker reconnects and stays up, the download in progress is
    recorded, and ``ckan archiver update --stale 7`` queues again the seven
    that never ran. Every row ends archived, exactly once, none is lost,
    nothing is left in ``.tmp``.

    (Redis comes back before the download in progress ends: when it is
    still away at that moment, see
    ``test_broker_gone_when_a_download_ends_keeps_the_download``.)"""
    calls: list = []
    slow = raw_server.route("/slow.csv", _first_then_fast(b"s,l\n", drip(b"s,low\n" * 3, 0.1),
                                                          calls))
    raw_server.default = _slow_ok(0.05)

    # no worker: queued, Redis lost, the next worker recovers them at start
    first = factories.Dataset(resources=[{"url": raw_server.url(f"/s{i}.csv")}
                                         for i in range(4)])
    first_ids = [r["id"] for r in first["resources"]]
    assert dispatch.lengths()["priority"] == 4
    own_broker.kill()
    own_broker.start()
    assert dispatch.lengths() == {"priority": 0, "bulk": 0}
    worker = worker_factory("--pool=prefork", "--concurrency=1", **FAST)
    worker.wait_ready()
    rows = wait_for(lambda: _all_checked(first_ids), timeout=30)
    assert {row.status_id for row in rows} == {st.ARCHIVED}
    assert "Recovered 4 queued resources lost by the broker" in worker.output()

    # mid-run: a download in progress, seven waiting; Redis lost and back
    dataset = factories.Dataset(resources=[{"url": slow}])
    wait_for(lambda: calls, timeout=30)
    queued = factories.Dataset(resources=[{"url": raw_server.url(f"/r{i}.csv")}
                                          for i in range(7)])
    assert dispatch.lengths()["priority"] == 7
    own_broker.kill()
    time.sleep(0.3)
    own_broker.start()
    in_flight = wait_for(lambda: _checked(dataset["resources"][0]["id"]), timeout=30)
    assert (in_flight.status_id, in_flight.size) == (st.ARCHIVED, 18)
    time.sleep(1)
    lost = [r["id"] for r in queued["resources"]]
    assert not any(_checked(rid) for rid in lost)
    assert dispatch.lengths() == {"priority": 0, "bulk": 0}
    assert worker.alive()

    result = _cli(cli, make_ini, "update", "--stale", "7", broker_url=own_broker.url)
    assert result.exit_code == 0, result.output
    # (may count some twice: see test_update_stale_while_a_worker_takes_a_resource)
    assert int(re.search(r"Queued (\d+) resources", result.output).group(1)) >= len(lost)
    rows = wait_for(lambda: _all_checked(lost), timeout=30)
    assert {row.status_id for row in rows} == {st.ARCHIVED}
    assert worker.alive()
    assert "Connection to broker lost" in worker.output()

    everything = [*first_ids, dataset["resources"][0]["id"], *lost]
    assert all(_history_count(rid) >= 1 for rid in everything)
    assert [_history_count(rid) for rid in everything[:5]] == [1] * 5
    assert len(_files(archive_dir)) == len(everything)
    assert _tmp_files(archive_dir) == []
    print(f"\n[faults] Redis restarted twice: 4 lost messages re-queued at worker start, "
          f"{len(lost)} by `update --stale`; {len(everything)} rows archived, 0 lost")


def test_broker_gone_when_a_download_ends_keeps_the_download(raw_server, archive_dir,
                                                              own_broker):
    """Redis (the broker, also holding the per-host politeness slots) goes
    away while a download is in progress and is still away when it ends."""
    def handler(request, conn):
        own_broker.kill()
        respond(conn, 200, b"a,b\n1,2\n", {"Content-Type": "text/csv"})

    res = factories.Resource(url=raw_server.route("/data.csv", handler))
    batch.archive_batch([res["id"]])
    row = _row(res["id"])
    assert _tmp_files(archive_dir) == []
    assert (row.status_id, row.size) == (st.ARCHIVED, 8), row.reason


def test_update_stale_while_a_worker_takes_a_resource(raw_server, own_broker, monkeypatch):
    """``requeue_lost`` (what ``update --stale`` runs) at the very moment a
    worker takes a resource must not queue it again."""
    res = factories.Resource(url=raw_server.route("/x", serve_bytes(b"x")))
    row = _row(res["id"])
    assert row.queued_at is not None
    requeued = []
    release = dispatch.release

    def release_while_cron_runs(resource_ids):
        release(resource_ids)
        requeued.append(dispatch.requeue_lost())

    monkeypatch.setattr(dispatch, "release", release_while_cron_runs)
    batch.archive_batch([res["id"]], "priority", queued_at=row.queued_at.isoformat())
    assert _row(res["id"]).status_id == st.ARCHIVED
    assert requeued == [0]


# -- 3. PostgreSQL connections dropped -------------------------------------------

def _terminate_backends(application_name):
    """pg_terminate_backend for the connections of one application only
    (other tests may share this database)."""
    with model.meta.engine.begin() as conn:
        killed = conn.execute(sa.text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND application_name = :name"), {"name": application_name}).all()
    return len(killed)


@pytest.mark.celery
def test_postgres_connections_dropped_during_tasks(worker_factory, raw_server, archive_dir,
                                                   pg_proxy):
    """The worker talks to PostgreSQL through a proxy this test controls,
    under its own ``application_name``. While a task downloads: (1) its
    server-side backends are killed with ``pg_terminate_backend`` (only
    this worker's); (2) every connection is reset and PostgreSQL refuses
    new ones for a second and a half. The task retries (OperationalError, with
    backoff), the worker does not crash or loop, and each row ends archived
    with exactly one history row."""
    name = f"archiver-reliability-{uuid.uuid4().hex[:8]}"
    body = b"p" * 8  # dripped in 0.8 s: the outage below outlasts the download
    calls_1: list = []
    calls_2: list = []
    url_1 = raw_server.route("/one", _first_then_fast(body, drip(body, 0.1), calls_1))
    url_2 = raw_server.route("/two", _first_then_fast(body, drip(body, 0.1), calls_2))
    worker = worker_factory("--pool=prefork", "--concurrency=1", env={"PGAPPNAME": name},
                            ini={"sqlalchemy.url": pg_proxy.url}, total_timeout=5,
                            read_timeout=1, connect_timeout=1, max_retries=3, retry_delay=3)
    worker.wait_ready()

    one = factories.Resource(url=url_1)
    wait_for(lambda: calls_1, timeout=30)
    time.sleep(0.3)
    terminated = _terminate_backends(name)
    assert terminated >= 1
    row = wait_for(lambda: _checked(one["id"]), timeout=30)
    assert (row.status_id, row.size) == (st.ARCHIVED, 8)

    two = factories.Resource(url=url_2)
    wait_for(lambda: calls_2, timeout=30)
    time.sleep(0.3)
    pg_proxy.refuse(True)
    cut = pg_proxy.cut()
    time.sleep(1.5)
    pg_proxy.refuse(False)
    row = wait_for(lambda: _checked(two["id"]), timeout=40)
    assert (row.status_id, row.size, row.is_broken) == (st.ARCHIVED, 8, False)

    retries = worker.output().count("Retry in")
    assert cut >= 1 and pg_proxy.refused >= 1
    assert 1 <= retries <= 2, worker.output()[-3000:]
    assert worker.alive()
    assert len(calls_1) <= 2 and len(calls_2) <= 2
    assert _history_count(one["id"]) == 1 and _history_count(two["id"]) == 1
    assert len(_files(archive_dir)) == 2 and _tmp_files(archive_dir) == []
    print(f"\n[faults] PostgreSQL: {terminated} backends terminated, {cut} connections reset "
          f"and {pg_proxy.refused} refused; {retries} task retries; rows correct, "
          f"{len(calls_1) + len(calls_2)} downloads")


@pytest.mark.celery
def test_database_outage_through_all_retries_then_archived(worker_factory, raw_server,
                                                           archive_dir, pg_proxy):
    """PostgreSQL unreachable long enough to use three of four retries: the
    resource must still end archived."""
    url = raw_server.route("/q", serve_bytes(b"q" * 20, "text/plain"))
    worker = worker_factory("--pool=prefork", "--concurrency=1",
                            ini={"sqlalchemy.url": pg_proxy.url}, max_retries=4,
                            retry_delay=0.5, **FAST)
    worker.wait_ready()
    pg_proxy.refuse(True)
    pg_proxy.cut()
    res = factories.Resource(url=url)
    wait_for(lambda: worker.output().count("Retry in") >= 3, timeout=30)
    pg_proxy.refuse(False)
    row = wait_for(lambda: _checked(res["id"]), timeout=30)
    assert worker.alive()
    assert (row.status_id, row.reason) == (st.ARCHIVED, "Downloaded 20 bytes")


# -- 4. archive full ---------------------------------------------------------------

def test_quota_full_chooses_not_to_download_and_keeps_files(raw_server, archive_dir,
                                                            ckan_config, monkeypatch):
    """``max_archive_bytes`` reached: a site fault (the link keeps its
    verdict, the cause is in ``site_fault``), the files
    already kept (another resource's, and this resource's previous copy)
    are left exactly as they were, nothing stays in ``.tmp``."""
    bodies = {"/kept": b"k" * 1000, "/grows": b"g" * 100}

    def handler(request, conn):
        respond(conn, 200, bodies[request.path], {"Content-Type": "text/plain"})

    kept = factories.Resource(url=raw_server.route("/kept", handler))
    grows = factories.Resource(url=raw_server.route("/grows", handler))
    batch.archive_batch([kept["id"], grows["id"]])
    before = {p: (archive_dir / p).stat() for p in _files(archive_dir)}
    assert len(before) == 2

    monkeypatch.setitem(ckan_config, "ckanext.archiver.max_archive_bytes", 1500)
    bodies["/grows"] = b"G" * 1000  # would make 2000 bytes
    batch.archive_batch([grows["id"]])
    row = _row(grows["id"])
    assert (row.status_id, row.is_broken) == (st.ARCHIVED, False)
    assert "is full (max_archive_bytes 1500 reached)" in row.site_fault
    assert open(row.cache_filepath, "rb").read() == b"g" * 100  # the last good copy
    after = {p: (archive_dir / p).stat() for p in _files(archive_dir)}
    assert {p: (s.st_size, s.st_mtime_ns) for p, s in after.items()} == {
        p: (s.st_size, s.st_mtime_ns) for p, s in before.items()}
    assert _tmp_files(archive_dir) == []


def test_quota_counts_the_new_file_once(raw_server, archive_dir, ckan_config, monkeypatch):
    a = factories.Resource(url=raw_server.route("/a", serve_bytes(b"a" * 1000)))
    b = factories.Resource(url=raw_server.route("/b", serve_bytes(b"b" * 1000)))
    batch.archive_batch([a["id"]])
    monkeypatch.setitem(ckan_config, "ckanext.archiver.max_archive_bytes", 2500)
    batch.archive_batch([b["id"]])
    assert _row(b["id"]).status_id == st.ARCHIVED


@pytest.fixture
def small_tmpfs(tmp_path):
    """``mount(path, options) -> path``: a tmpfs mounted there (unmounted at
    teardown); skips when mounting is not permitted."""
    mounted = []

    def mount(path, options="size=64k"):
        path.mkdir(exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                              capture_output=True)
        if done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here: " + done.stderr.decode(errors="replace"))
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_filesystem_really_full(raw_server, archive_dir, small_tmpfs):
    """``archive_dir`` on a 64 kB tmpfs: a 200 kB download fills the disk
    (ENOSPC while streaming). The row says so in words (status 21 or 23,
    "not sure", never broken), the partial file is removed so the space
    comes back, the file already kept is untouched, and the next small file
    is archived."""
    small_tmpfs(archive_dir)
    small = factories.Resource(url=raw_server.route("/small", serve_bytes(b"s" * 1000)))
    big = factories.Resource(url=raw_server.route("/big", serve_bytes(b"b" * 200_000)))
    later = factories.Resource(url=raw_server.route("/later", serve_bytes(b"l" * 2000)))
    batch.archive_batch([small["id"]])
    kept = _files(archive_dir)
    free = shutil.disk_usage(archive_dir).free

    batch.archive_batch([big["id"]])
    row = _row(big["id"])
    assert row.status_id in (st.CHOSE_NOT_TO_DOWNLOAD, st.SYSTEM_ERROR), row.reason
    assert row.is_broken is None
    # a full disk is a fault of the site: its cause is in site_fault (for
    # sysadmins), the public reason says no more than "system error"
    cause = row.site_fault if row.status_id == st.SYSTEM_ERROR else row.reason
    assert re.search(r"No space left on device|archive full", cause), cause
    assert str(archive_dir) not in row.reason and "Traceback" not in cause
    assert _files(archive_dir) == kept
    assert (archive_dir / kept[0]).read_bytes() == b"s" * 1000
    assert _tmp_files(archive_dir) == []
    assert shutil.disk_usage(archive_dir).free == free

    batch.archive_batch([later["id"]])
    assert _row(later["id"]).status_id == st.ARCHIVED
    print(f"\n[faults] full filesystem: {row.status_id} {row.reason!r}")


def test_file_that_fits_on_the_disk_is_kept(raw_server, archive_dir, small_tmpfs):
    small_tmpfs(archive_dir)
    mid = factories.Resource(url=raw_server.route("/mid", serve_bytes(b"m" * 36_000)))
    batch.archive_batch([mid["id"]])
    assert _row(mid["id"]).status_id == st.ARCHIVED


# -- 5. archive_dir not writable -------------------------------------------------

def _assert_clean_reason(reason, *paths):
    assert reason
    for text in ("Traceback", 'File "', "/work/", *map(str, paths)):
        assert text not in reason, reason


def test_read_only_archive_dir_records_system_error(raw_server, archive_dir, small_tmpfs):
    """``archive_dir`` on a read-only filesystem: status 23 with a reason a
    person can read, without a traceback or a path."""
    small_tmpfs(archive_dir, "ro,size=64k")
    res = factories.Resource(url=raw_server.route("/x", serve_bytes(b"x" * 10)))
    result = batch.archive_batch([res["id"]])
    row = _row(res["id"])
    assert [j.resource_id for j in result.recorded] == [res["id"]]
    assert row.status_id == st.SYSTEM_ERROR and row.is_broken is None
    # public: no path, no detail; sysadmins: the folder and the cause
    _assert_clean_reason(row.reason, archive_dir)
    assert row.site_fault == (f"System error during archival: archive_dir {archive_dir} "
                              "is not writable (Read-only file system)"), row.site_fault
    assert "Traceback" not in row.site_fault


def test_uncreatable_archive_dir_records_system_error(raw_server, tmp_path, ckan_config,
                                                      monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file")
    monkeypatch.setitem(ckan_config, "ckanext.archiver.archive_dir", str(blocker / "archive"))
    res = factories.Resource(url=raw_server.route("/x", serve_bytes(b"x" * 10)))
    batch.archive_batch([res["id"]])
    row = _row(res["id"])
    assert row.status_id == st.SYSTEM_ERROR and row.is_broken is None
    _assert_clean_reason(row.reason, tmp_path)
    assert row.site_fault == (f"System error during archival: archive_dir {blocker}/archive "
                              f"cannot be created: {blocker} is not a directory")


def _ckan_worker(ini):
    """``ckan -c ini archiver worker bulk`` in a real process (it execs
    Celery when its checks pass: never in the test process)."""
    ckan_bin = os.path.join(os.path.dirname(sys.executable), "ckan")
    return subprocess.Popen([ckan_bin, "-c", ini, "archiver", "worker", "bulk"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _one_error_line(output):
    lines = [line for line in output.splitlines()
             if line.strip() and "WARNI" not in line and "DEBUG" not in line]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


def test_cli_refuses_unwritable_archive_dir(cli, make_ini, tmp_path, small_tmpfs, raw_server):
    """``ckan archiver update --now`` and ``ckan archiver worker`` print one
    clear line and exit non-zero, for an archive_dir that cannot be created
    (its parent is a regular file) and one on a read-only filesystem."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file")
    targets = {"parent-is-a-file": blocker / "archive",
               "read-only": small_tmpfs(tmp_path / "ro", "ro,size=64k")}
    factories.Resource(url=raw_server.route("/x", serve_bytes(b"x")))
    workers = {kind: _ckan_worker(make_ini(archive_dir=target))
               for kind, target in targets.items()}
    try:
        for kind, target in targets.items():
            result = _cli(cli, make_ini, "update", "--now", archive_dir=target)
            assert result.exit_code == 1, kind
            line = _one_error_line(result.output)
            assert "archive_dir" in line and re.search(r"cannot be created|not writable", line)
        for kind, proc in workers.items():
            try:
                output, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired as e:
                raise AssertionError(f"`ckan archiver worker` kept running ({kind})") from e
            assert proc.returncode != 0, kind
            line = _one_error_line(output)
            assert "archive_dir" in line and re.search(r"cannot be created|not writable", line)
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
