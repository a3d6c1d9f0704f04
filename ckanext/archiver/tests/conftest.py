"""Fixtures shared by the archiver's tests (helper functions are in
``tests/helpers.py``, test data in ``tests/factories.py``).

CKAN's search index (Solr) is replaced by a no-op for the whole session,
see ``ckanext.archiver.testing.nosearch``: Solr cannot be installed on the
machines this project is built on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest
from celery.contrib.testing.worker import start_worker
from werkzeug.serving import make_server

from ckanext.archiver import config, keys
from ckanext.archiver.testing import nosearch
from ckanext.archiver.tests.helpers import forget_hosts
from ckanext.archiver.tests.http_fixtures import *  # noqa: F403
from ckanext.archiver.worker import app as worker_app
from ckanext.archiver.worker import dispatch, services

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


@pytest.fixture
def archive_dir(tmp_path, ckan_config, monkeypatch):
    """A fresh archive_dir for one test."""
    path = tmp_path / "archive"
    path.mkdir()
    monkeypatch.setitem(ckan_config, "ckanext.archiver.archive_dir", str(path))
    return path


@pytest.fixture
def archiver_env(archive_dir, ckan_config, monkeypatch):
    """Fresh archive_dir, empty queues, fast retries; Celery app rebuilt
    from this test's config."""
    monkeypatch.setitem(ckan_config, "ckanext.archiver.retry_delay", 0.1)
    monkeypatch.setitem(ckan_config, "ckanext.archiver.max_retries", 0)
    monkeypatch.setitem(ckan_config, "ckanext.archiver.per_host_min_interval", 0.0)
    monkeypatch.setitem(ckan_config, "ckanext.archiver.per_host_concurrency", 8)
    monkeypatch.setitem(ckan_config, "ckanext.archiver.per_host_start_interval", 0.0)
    worker_app.reset()
    keys.forget_clients()
    dispatch.purge()
    forget_hosts()
    yield archive_dir
    worker_app.reset()
    keys.forget_clients()


@pytest.fixture
def celery_worker(archiver_env):
    """A real Celery worker (in this process, threads pool) consuming both
    queues."""
    app = worker_app.get_app()
    options = config.current()
    queues = ",".join(options.queue_name(n) for n in config.QUEUES)
    app.amqp.queues.select(queues.split(","))
    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False,
                      shutdown_timeout=10, loglevel="WARNING") as worker:
        yield worker


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
            "ckanext.archiver.per_host_start_interval": "0",
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
    procs = []

    def start(*extra, **options):
        queues = ",".join(config.current().queue_name(n) for n in config.QUEUES)
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

    bucket = "t-" + re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") \
        + "-" + os.urandom(3).hex()
    seaweedfs.make_bucket(bucket)
    options = seaweedfs.options(bucket)
    for key, value in options.items():
        monkeypatch.setitem(ckan_config, "ckanext.archiver." + key, value)
    services._s3.cache_clear()
    yield services.storage()
    services._s3.cache_clear()


@pytest.fixture
def s3_cli(cli, make_ini, s3_env, seaweedfs):
    """``s3_cli(*ARGS)``: `ckan -c <ini> archiver ARGS` with this test's bucket (``s3_env``)."""
    from ckan.cli.cli import ckan

    options = seaweedfs.options(s3_env.bucket)

    def invoke(*args):
        return cli.invoke(ckan, ["-c", make_ini(**options), "archiver", *args])

    return invoke


@pytest.fixture
def live_server(app):
    """The test app on a free port of 127.0.0.1."""
    # the whole WSGI stack (CKAN 2.11 sets the locale in a middleware)
    server = make_server("127.0.0.1", 0, app.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
