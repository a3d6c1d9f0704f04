"""Fixtures shared by the archiver's tests.

CKAN's search index (Solr) is replaced by a no-op for the whole session,
see ``ckanext.archiver.nosearch``: Solr cannot be installed on the machines
this project is built on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ckanext.archiver import nosearch
from ckanext.archiver.tests.http_fixtures import *  # noqa: F403

nosearch.install()


@pytest.fixture
def clean_db(reset_db, migrate_db_for):
    """CKAN's clean_db drops the plugin's tables on its first run in a
    session: put them back."""
    reset_db()
    migrate_db_for("archiver")


try:  # CKAN 2.12's fixture; CKAN 2.11 has no file storages to reset
    from ckan.tests.pytest_ckan.fixtures import reset_storages  # noqa: F401
except ImportError:
    @pytest.fixture(scope="session")
    def reset_storages():
        return lambda: None


def login(app, user):
    """Log ``user`` (a dict, or None for anonymous) into the test app's
    session. The test client writes the session cookie for "localhost"
    while requests go to ckan.site_url's host: copy it there. (Session
    requests keep CSRF checks on; API-token requests skip them for good.)"""
    from urllib.parse import urlparse

    from ckan.common import config

    if not hasattr(app, "set_session_user"):
        pytest.skip("session logins in tests need CKAN 2.12's test app")
    app.set_session_user(user["id"] if user else None)
    if user:
        cookie = app.client.get_cookie("ckan", domain="localhost")
        host = urlparse(config["ckan.site_url"]).hostname
        app.client.set_cookie("ckan", cookie.value, domain=host)


@pytest.fixture
def archive_dir(tmp_path, ckan_config, monkeypatch):
    """A fresh archive_dir for one test."""
    path = tmp_path / "archive"
    path.mkdir()
    monkeypatch.setitem(ckan_config, "ckanext.archiver.archive_dir", str(path))
    return path


def forget_hosts():
    """Per-host politeness state of earlier tests (every test server is a
    127.0.0.1 host: its timeouts must not make a later test skip it)."""
    from ckan.plugins import toolkit as tk

    from ckanext.archiver import queue

    r = queue.redis_client()
    keys = list(r.scan_iter(match="archiver:{}:host:*".format(tk.config.get("ckan.site_id"))))
    if keys:
        r.delete(*keys)


@pytest.fixture
def archiver_env(archive_dir, ckan_config, monkeypatch):
    """Fresh archive_dir, empty queues, fast retries; Celery app rebuilt
    from this test's config."""
    from ckanext.archiver import celery_app, queue

    monkeypatch.setitem(ckan_config, "ckanext.archiver.retry_delay", 0.1)
    monkeypatch.setitem(ckan_config, "ckanext.archiver.max_retries", 0)
    monkeypatch.setitem(ckan_config, "ckanext.archiver.per_host_min_interval", 0.0)
    monkeypatch.setitem(ckan_config, "ckanext.archiver.per_host_concurrency", 8)
    celery_app.reset()
    queue._redis.clear()
    queue.purge()
    forget_hosts()
    yield archive_dir
    celery_app.reset()
    queue._redis.clear()


@pytest.fixture
def celery_worker(archiver_env):
    """A real Celery worker (in this process, threads pool) consuming both
    queues."""
    from celery.contrib.testing.worker import start_worker
    from ckan.plugins import toolkit as tk

    from ckanext.archiver import celery_app

    app = celery_app.get_app()
    queues = ",".join(celery_app.queue_name(n, tk.config) for n in ("priority", "bulk"))
    app.amqp.queues.select(queues.split(","))
    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False,
                      shutdown_timeout=10, loglevel="WARNING") as worker:
        yield worker


def json_output(output):
    """The JSON document a command printed (older click mixes log lines from
    stderr into the test runner's output: skip to the document)."""
    import json

    start = output.index("{") if output.startswith("{") else output.index("\n{") + 1
    return json.loads(output[start:])


def archival_row(resource_id):
    """The resource's archival row as the database has it now."""
    from ckan import model

    from ckanext.archiver.model import Archival

    model.Session.remove()
    return Archival.get_for_resource(resource_id)


def checked_row(resource_id):
    """The row once the resource has been checked at least once, else None."""
    row = archival_row(resource_id)
    return row if row is not None and row.status_id is not None else None


def wait_for(predicate, timeout=20.0, interval=0.1):
    """Poll until predicate() is truthy; return its value or fail."""
    give_up = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {predicate}")
        time.sleep(interval)


@pytest.fixture
def make_ini(ckan_config, tmp_path):
    """Write a copy of the test config file with the archive_dir of this test
    and the given options (for the CLI and subprocess workers, which load
    their config from a file)."""
    base = open(ckan_config["__file__"]).read()

    def make(**options):
        settings = {
            "ckanext.archiver.archive_dir": ckan_config["ckanext.archiver.archive_dir"],
            "ckanext.archiver.max_retries": "0",
            "ckanext.archiver.per_host_min_interval": "0",
            "ckanext.archiver.per_host_concurrency": "8",
        }
        settings.update({"ckanext.archiver." + k: str(v) for k, v in options.items()})
        lines = [line for line in base.splitlines()
                 if line.split("=")[0].strip() not in settings]
        at = lines.index("[app:main]") + 1
        lines[at:at] = [f"{k} = {v}" for k, v in settings.items()]
        ini = tmp_path / "test-{}.ini".format(len(list(tmp_path.glob("test-*.ini"))))
        ini.write_text("\n".join(lines).replace("%(here)s", os.path.dirname(
            ckan_config["__file__"])) + "\n")
        return str(ini)

    return make


@pytest.fixture
def subprocess_worker(archiver_env, make_ini):
    """Start `celery worker` as a real subprocess (kill/restart tests)."""
    from ckan.plugins import toolkit as tk

    from ckanext.archiver import celery_app

    procs = []

    def start(*extra, **options):
        queues = ",".join(celery_app.queue_name(n, tk.config) for n in ("priority", "bulk"))
        env = dict(os.environ, CKAN_INI=make_ini(**options))
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "ckanext.archiver.celery_app", "worker",
             "-Q", queues, "--loglevel=INFO", "--without-gossip", "--without-mingle",
             *extra],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """A real S3 server (SeaweedFS ``weed mini``) on 127.0.0.1 with ports of
    its own, for the whole session; killed by its PID at teardown."""
    from ckanext.archiver.tests import seaweed

    weed = seaweed.start(str(tmp_path_factory.mktemp("seaweedfs")))
    try:
        yield weed
    finally:
        weed.stop()


@pytest.fixture
def s3_env(archiver_env, seaweedfs, ckan_config, monkeypatch, request):
    """archiver_env with ``storage_backend = s3``: a fresh bucket of the
    session's SeaweedFS for this test. Yields the S3Store."""
    import re

    from ckanext.archiver import backends

    bucket = "t-" + re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") \
        + "-" + os.urandom(3).hex()
    seaweedfs.make_bucket(bucket)
    options = seaweedfs.options(bucket)
    for key, value in options.items():
        monkeypatch.setitem(ckan_config, "ckanext.archiver." + key, value)
    backends._s3.cache_clear()
    yield backends.store()
    backends._s3.cache_clear()
