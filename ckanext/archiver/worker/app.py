"""The Celery app, built from the CKAN configuration.

Inside a CKAN process (web, ``ckan`` CLI, tests) the app is built from the
already-loaded config. A worker started with
``celery -A ckanext.archiver.celery_app worker`` first loads CKAN from the
file named by ``CKAN_INI`` (what ``ckan archiver worker`` does for you).

Importing this module loads no Celery: a web process that never queues
anything never imports it, and the first ``get_app()`` does. The worker
signals (``worker.signals``) are connected by a bootstep of the app, so only
when a worker starts, never at import.

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

from ckan.common import config as ckan_cfg

from ckanext.archiver import config

__all__ = ["build", "get_app", "reset", "ckan_config", "MAX_COUNTDOWN", "TASK_MODULES",
           "ARCHIVE_TASK", "BUILD_PACKAGE_TASK"]

log = logging.getLogger(__name__)

_app: Any = None

# Longest delay before a retry (Redis holds delayed tasks as unacked
# messages: they must come back before the visibility timeout).
MAX_COUNTDOWN = 900

# Task names (public: queued messages carry them).
ARCHIVE_TASK = "ckanext.archiver.archive_resources"
BUILD_PACKAGE_TASK = "ckanext.archiver.build_package"
TASK_MODULES = ["ckanext.archiver.worker.tasks"]
# loaded by name, in a worker only: connects the worker signals when it starts
SIGNALS_STEP = "ckanext.archiver.worker.signals:ConnectSignals"


def ckan_config() -> Any:
    """The CKAN config, loading CKAN from CKAN_INI when this process has not
    loaded it yet (a Celery worker)."""
    if ckan_cfg.get("ckan.site_id"):
        return ckan_cfg
    ini = os.environ.get("CKAN_INI")
    if not ini:
        raise RuntimeError(
            "CKAN_INI is not set: point it at the CKAN config file "
            "(or start workers with `ckan -c <ini> archiver worker`)")
    from ckan.cli import load_config  # a worker process only: loads CKAN itself
    from ckan.config.middleware import make_app

    make_app(load_config(ini))
    # CKAN's load_config runs logging.config.fileConfig, which disables the
    # loggers that already exist (Celery's own, made before the app is
    # loaded): switch them back on, or task results and errors go unlogged.
    for name, logger in logging.Logger.manager.loggerDict.items():
        if isinstance(logger, logging.Logger) and name.startswith(("celery", "kombu")):
            logger.disabled = False
    return ckan_cfg


def build(cfg: Any = None) -> Any:
    """A new Celery app for the site's configuration."""
    from celery import Celery  # not at import: web processes that never queue skip Celery

    options = config.current(cfg or ckan_config())
    soft, hard = options.time_limits
    app = Celery("ckanext.archiver", include=TASK_MODULES)
    app.conf.update(
        broker_url=options.broker_url,
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=soft,
        task_time_limit=hard,
        broker_transport_options={
            # longer than any task and than any retry countdown (unless set)
            "visibility_timeout": options.visibility_timeout
            or max(hard + 300, MAX_COUNTDOWN + 300),
        },
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        task_default_queue=options.queue_name("bulk"),
        task_create_missing_queues=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=False,
        timezone="UTC",
    )
    app.steps["worker"].add(SIGNALS_STEP)
    return app


def get_app() -> Any:
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


def send(task_name: str, queue_name: str, args: list, kwargs: Optional[dict] = None,
         countdown: Optional[float] = None) -> None:
    """Queue a task by name (the task modules need not be imported)."""
    get_app().send_task(task_name, args=args, kwargs=kwargs or {}, queue=queue_name,
                        countdown=countdown)
