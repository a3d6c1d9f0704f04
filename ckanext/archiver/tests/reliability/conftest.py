"""Fixtures of the reliability suite (they only add to ``tests/conftest.py``).

* ``redis_factory``: private ``redis-server`` processes on free loopback
  ports, which a test may kill and start again (the shared Redis on 6379 is
  never touched);
* ``own_broker``: one of them, made the archiver's broker for this test
  process (pass ``broker_url=own_broker.url`` to ``make_ini`` for
  subprocesses; ``worker_factory`` does it for you). Tests that use it are
  also isolated from other test runs sharing the machine's Redis;
* ``worker_factory``: real ``celery worker`` subprocesses with their output
  in a log file, extra environment variables, and helpers to wait until they
  are ready, kill them and read their memory figures from ``/proc``;
* ``pg_proxy``: a TCP proxy in front of PostgreSQL that a test can cut or
  make refuse connections, to take the database away from one worker only.

Module-scoped fixtures of the test modules use the plain helpers
(:class:`RedisProcess`, :func:`launch_worker`, :func:`write_ini`).
Nothing here overrides a fixture of ``tests/conftest.py``.
"""

from __future__ import annotations

import shutil
from typing import Optional

import pytest

from ckanext.archiver import config as archiver_config
from ckanext.archiver import keys
from ckanext.archiver.tests.reliability.helpers import (
    RedisProcess,
    TcpProxy,
    Worker,
    free_port,
    launch_worker,
    set_ini_options,
    stop_worker,
)
from ckanext.archiver.worker import app as worker_app


@pytest.fixture
def redis_factory():
    """``make() -> RedisProcess`` (started); all killed at teardown."""
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    made = []

    def make() -> RedisProcess:
        server = RedisProcess(free_port()).start()
        made.append(server)
        return server

    yield make
    for server in made:
        server.kill()


@pytest.fixture
def own_broker(archiver_env, redis_factory, ckan_config, monkeypatch):
    """A private Redis used as this test's broker (queues, pending marks,
    politeness and delivery counters all live there)."""
    server = redis_factory()
    monkeypatch.setitem(ckan_config, "ckanext.archiver.broker_url", server.url)
    worker_app.reset()
    keys.forget_clients()
    yield server
    worker_app.reset()
    keys.forget_clients()


@pytest.fixture
def worker_factory(own_broker, make_ini, tmp_path):
    """``start(*celery_args, name="w", env=None, queues=("priority", "bulk"),
    ini=None, **archiver_options) -> Worker``: a real ``celery worker``
    subprocess on this test's private broker, its output in
    ``tmp_path/<name>.log``; ``ini`` sets raw options of its config file.
    Every worker (and pool process) still running is killed at teardown."""

    workers: list[Worker] = []

    def start(*extra: str, name: str = "w", env: Optional[dict] = None,
              queues: tuple = ("priority", "bulk"), ini: Optional[dict] = None,
              **options) -> Worker:
        options.setdefault("broker_url", own_broker.url)
        names = [archiver_config.current().queue_name(q) for q in queues]
        path = make_ini(**options)
        if ini:
            set_ini_options(path, ini)
        worker = launch_worker(path, names, str(tmp_path / f"{name}.log"), name, extra, env)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        stop_worker(worker)


@pytest.fixture
def pg_proxy(ckan_config):
    """A :class:`TcpProxy` in front of this test database's PostgreSQL;
    ``pg_proxy.url`` is the sqlalchemy URL going through it."""
    from sqlalchemy.engine import make_url

    url = make_url(ckan_config["sqlalchemy.url"])
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.url = url.set(host="127.0.0.1", port=proxy.port).render_as_string(
        hide_password=False)
    yield proxy
    proxy.stop()
