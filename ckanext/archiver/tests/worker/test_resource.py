"""One resource of a batch: the rules it shares with the engine; its temp
files."""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import threading
import time

import pytest
from ckan.tests import factories

from ckanext.archiver import config
from ckanext.archiver import status as st
from ckanext.archiver.engine import netguard
from ckanext.archiver.model import checks
from ckanext.archiver.tests.factories import make_archival
from ckanext.archiver.tests.helpers import archival_row
from ckanext.archiver.tests.http_fixtures import drip, serve_bytes
from ckanext.archiver.worker import batch, services
from ckanext.archiver.worker.resource import Run, _tmp_dir, politeness_host, run_one, settle_files

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db", "archiver_env")


def _fresh_row(resource, cache_filepath):
    later = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) + \
        datetime.timedelta(days=1)
    make_archival(resource, st.ARCHIVED, url=resource["url"], fresh_until=later,
                  cache_filepath=cache_filepath, sha256="0" * 64)


@pytest.fixture
def busy_host(ckan_config, monkeypatch):
    """The only slot of a host, held by somebody else for the test."""
    monkeypatch.setitem(ckan_config, "ckanext.archiver.per_host_concurrency", 1)
    monkeypatch.setitem(ckan_config, "ckanext.archiver.host_wait", 0.3)
    held = []

    def hold(url):
        limiter = services.limiter(config.current())
        host = politeness_host(url)
        held.append((limiter, host, limiter.acquire(host, timeout=1)))
        assert held[-1][2] is not None

    yield hold
    for limiter, host, token in held:
        limiter.release(host, token)


def test_fresh_row_whose_file_is_gone_waits_for_its_host(httpserver, busy_host, tmp_path):
    """Where they disagreed: the worker called such a row fresh (raw URL,
    file not looked at) and skipped the host's slot, while the engine did
    not (its file is gone) and downloaded it: a download past politeness."""
    httpserver.expect_request("/data.csv").respond_with_data("a,b\n1,2\n")
    res = factories.Resource(url=httpserver.url_for("/data.csv"))
    _fresh_row(res, str(tmp_path / "gone.csv"))
    busy_host(res["url"])
    batch.archive_batch([res["id"]], polite=True)
    row = archival_row(res["id"])
    assert row.status_id == st.DOWNLOAD_FAILURE
    assert "Host busy" in row.reason
    assert httpserver.log == []


def test_fresh_row_with_its_file_needs_no_slot_and_no_request(httpserver, busy_host,
                                                              tmp_path):
    httpserver.expect_request("/data.csv").respond_with_data("a,b\n1,2\n")
    res = factories.Resource(url=httpserver.url_for("/data.csv"))
    kept = tmp_path / "kept.csv"
    kept.write_text("a,b\n1,2\n")
    _fresh_row(res, str(kept))
    busy_host(res["url"])
    batch.archive_batch([res["id"]], polite=True)
    row = archival_row(res["id"])
    # a freshness skip is recorded as a skip: the verdict of the last real
    # check stays (issue 13)
    assert row.status_id == st.ARCHIVED and row.fresh_skip_at is not None
    assert httpserver.log == []


@pytest.mark.parametrize("url, host", [
    ("http://ＬＯＣＡＬＨＯＳＴ:8080/x", "localhost"),  # full-width: raw hostname differs
    ("http://Bücher.Example/a.csv", "xn--bcher-kva.example"),
    (" https://EXAMPLE.org./x ", "example.org."),
    ("ftp://example.org/x", None),
    ("not a url", None),
])
def test_politeness_host_is_the_host_the_engine_contacts(url, host):
    """Where they disagreed: the slot was taken on ``urlsplit().hostname`` of
    the raw URL, the request went to the IDNA-normalised host."""
    assert politeness_host(url) == host
    if host is not None:
        assert netguard.host_of(netguard.normalise_url(url)) == host


def test_two_checks_of_a_resource_at_once_keep_their_own_temp_files(raw_server, archive_dir):
    """An edit's check of a resource beside a download of its old URL (the
    claim was taken over) in the same process: neither removes the other's
    temp file (they shared the resource's temp folder, and the second
    emptied it: the first recorded a system error)."""
    started = threading.Event()
    slow_body = b"s,l,o,w\n" * 4
    drip_handler = drip(slow_body, 0.05)

    def slow(request, conn):
        started.set()
        drip_handler(request, conn)

    res = factories.Resource(url=raw_server.route("/old.csv", slow))
    raw_server.route("/new.csv", serve_bytes(b"n,e,w\n", "text/csv"))
    options = config.current()
    run = Run(options, services.storage(options), None, force=True)
    old, new = checks.load_jobs([res["id"]]) + checks.load_jobs([res["id"]])
    new.url = raw_server.url("/new.csv")
    first = threading.Thread(target=run_one, args=(old, run))
    first.start()
    assert started.wait(10)
    time.sleep(0.1)  # the old URL's body is being written to its temp file
    tmp = archive_dir / ".tmp"
    assert [p for p in tmp.rglob("*.part")]
    run_one(new, run)
    first.join(10)
    for job, body in ((old, slow_body), (new, b"n,e,w\n")):
        assert job.outcome.status_id == st.ARCHIVED, job.outcome.reason
        assert open(job.staged.path, "rb").read() == body
    assert os.listdir(tmp) == []  # both temp folders gone
    settle_files([old, new], [], run.store, options)


def test_a_killed_checks_temp_folder_goes_when_its_process_is_gone_or_it_is_old(archive_dir):
    options = config.current()
    store = services.storage(options)
    job = checks.Job(resource_id="r-tmp")
    mine, other = _tmp_dir(store, job, options), _tmp_dir(store, job, options)
    assert mine != other and os.path.dirname(mine) == os.path.dirname(other)
    open(os.path.join(other, "fetch-1.part"), "wb").close()  # another check, writing
    dead = _tmp_dir(store, job, options)  # a check killed long ago
    open(os.path.join(dead, "fetch-2.part"), "wb").close()
    long_ago = time.time() - options.download_time_max - 61
    for path in (dead, os.path.join(dead, "fetch-2.part")):
        os.utime(path, (long_ago, long_ago))
    exited = subprocess.Popen(["true"])
    exited.wait()
    killed = os.path.join(os.path.dirname(mine), f"{exited.pid}@{socket.gethostname()}~x")
    os.mkdir(killed)  # a check of a process of this host that is gone: at once
    open(os.path.join(killed, "fetch-3.part"), "wb").close()
    again = _tmp_dir(store, job, options)
    assert not os.path.exists(dead) and not os.path.exists(killed)
    assert os.path.isfile(os.path.join(other, "fetch-1.part"))
    assert sorted(os.listdir(os.path.dirname(mine))) == sorted(
        os.path.basename(p) for p in (mine, other, again))
