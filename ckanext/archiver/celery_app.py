"""The Celery app, built from the CKAN configuration.

Inside a CKAN process (web, ``ckan`` CLI, tests) the app is built from the
already-loaded config. A worker started with
``celery -A ckanext.archiver.celery_app worker`` first loads CKAN from the
file named by ``CKAN_INI`` (what ``ckan archiver worker`` does for you).

Settings are those of long network tasks: a message is acknowledged only
when its task has finished (acks_late) and is given back if the worker
process dies (reject_on_worker_lost), each worker process reserves one
message at a time (prefetch 1), and the broker's visibility timeout is
longer than the hard time limit so that a running task is never handed to
a second worker.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

from celery import Celery

log = logging.getLogger(__name__)

_app: Optional[Celery] = None

# Longest delay before a retry (Redis holds delayed tasks as unacked
# messages: they must come back before the visibility timeout).
MAX_COUNTDOWN = 900


def _ckan_config() -> Any:
    """The CKAN config, loading CKAN from CKAN_INI when this process has not
    loaded it yet (a Celery worker)."""
    from ckan.common import config

    if config.get("ckan.site_id"):
        return config
    ini = os.environ.get("CKAN_INI")
    if not ini:
        raise RuntimeError(
            "CKAN_INI is not set: point it at the CKAN config file "
            "(or start workers with `ckan -c <ini> archiver worker`)")
    from ckan.cli import load_config
    from ckan.config.middleware import make_app

    make_app(load_config(ini))
    # CKAN's load_config runs logging.config.fileConfig, which disables the
    # loggers that already exist (Celery's own, made before the app is
    # loaded): switch them back on, or task results and errors go unlogged.
    for name, logger in logging.Logger.manager.loggerDict.items():
        if isinstance(logger, logging.Logger) and name.startswith(("celery", "kombu")):
            logger.disabled = False
    return config


def queue_name(name: str, config: Any = None) -> str:
    """The Celery queue of ``priority`` or ``bulk``: ``<site_id>:<name>``."""
    config = config or _ckan_config()
    option = {"priority": "ckanext.archiver.priority_queue",
              "bulk": "ckanext.archiver.bulk_queue"}[name]
    return "{}:{}".format(config.get("ckan.site_id"), config.get(option))


def broker_url(config: Any = None) -> str:
    config = config or _ckan_config()
    return config.get("ckanext.archiver.broker_url") or config.get("ckan.redis.url")


def download_time_max(config: Any = None) -> float:
    """Longest one download can take: its wait for a free slot on its host,
    then its deadline."""
    config = config or _ckan_config()
    return (float(config.get("ckanext.archiver.host_wait"))
            + float(config.get("ckanext.archiver.total_timeout")))


def time_limits(config: Any = None) -> tuple[int, int]:
    """(soft, hard) time limits of one task, from the download deadline."""
    soft = int(download_time_max(config)) + 60
    return soft, soft + 60


def build(config: Any = None) -> Celery:
    config = config or _ckan_config()
    soft, hard = time_limits(config)
    app = Celery("ckanext.archiver",
                 include=["ckanext.archiver.tasks", "ckanext.archiver.packages"])
    app.conf.update(
        broker_url=broker_url(config),
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=soft,
        task_time_limit=hard,
        broker_transport_options={
            # longer than any task and than any retry countdown (unless set)
            "visibility_timeout": int(config.get("ckanext.archiver.visibility_timeout") or 0)
            or max(hard + 300, MAX_COUNTDOWN + 300),
        },
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        task_default_queue=queue_name("bulk", config),
        task_create_missing_queues=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=False,
        timezone="UTC",
    )
    return app


def get_app() -> Celery:
    """The process's Celery app (built on first use)."""
    global _app
    if _app is None:
        _app = build()
        _app.set_current()
        _app.set_default()
    return _app


def reset() -> None:
    """Forget the app (tests that change the config)."""
    global _app
    _app = None


def __getattr__(name: str) -> Any:
    # `celery -A ckanext.archiver.celery_app` looks for `app` (or `celery`)
    if name in ("app", "celery"):
        return get_app()
    raise AttributeError(name)


def _on_worker_ready(**_kwargs: Any) -> None:
    """At worker start, queue again what was queued but lost (a Redis
    restart empties the queues; the rows still say what was waiting)."""
    from ckan import model

    from ckanext.archiver import queue

    try:
        count = queue.requeue_lost()
        if count:
            log.warning("Recovered %d queued resources lost by the broker", count)
    except Exception:
        log.exception("Could not look for lost queue entries")
    finally:
        model.Session.remove()


def _on_process_init(**_kwargs: Any) -> None:
    """A forked pool process must not share the parent's database
    connections (loading CKAN left one in the pool): drop them, unclosed."""
    from ckan import model

    if model.meta.engine is not None:
        model.meta.engine.dispose(close=False)


def _on_process_shutdown(**_kwargs: Any) -> None:
    """A pool process about to exit lets the downloads its batches handed
    off end and be recorded first (up to ``total_timeout``; a check queued
    at hand-off covers any it cannot wait for)."""
    from ckan.common import config

    from ckanext.archiver import pool

    if pool.late_count():
        log.info("Waiting for %d handed-off downloads", pool.late_count())
        left = pool.drain(float(config.get("ckanext.archiver.total_timeout")))
        if left:
            log.warning("Exiting with %d handed-off downloads unfinished", left)


def _connect_signals() -> None:
    from celery import signals

    signals.worker_ready.connect(_on_worker_ready, weak=False)
    signals.worker_process_init.connect(_on_process_init, weak=False)
    signals.worker_process_shutdown.connect(_on_process_shutdown, weak=False)


_connect_signals()
