"""What a Celery worker does at its start and around its pool processes.

Connected by the bootstep :class:`ConnectSignals`, which ``worker.app.build``
adds to the app by name: only in a worker, when it starts, never at import.
This module is imported by Celery workers only.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps, signals
from ckan import model

from ckanext.archiver import config
from ckanext.archiver.engine import pool
from ckanext.archiver.worker import lost
from ckanext.archiver.worker.dispatch import requeue_lost

__all__ = ["connect", "ConnectSignals", "on_worker_ready", "on_process_init",
           "on_process_shutdown"]

log = logging.getLogger(__name__)

def on_worker_ready(sender: Any = None, **_kwargs: Any) -> None:
    """At worker start, queue again what was queued but lost (a Redis
    restart empties the queues; the rows still say what was waiting); then
    sweep for checks lost with a worker every now and then (``worker.lost``)
    in this process, unless its pool forks processes (each of those sweeps:
    ``on_process_init``; no timer thread in the parent it forks them from)."""
    try:
        count = requeue_lost()
        if count:
            log.warning("Recovered %d queued resources lost by the broker", count)
    except Exception:
        log.exception("Could not look for lost queue entries")
    finally:
        model.Session.remove()
    if sender is not None:  # (a worker's consumer, not a test)
        config.freeze()
        if not _forks(sender):
            _watch()


def _forks(consumer: Any) -> bool:
    return type(getattr(consumer, "pool", None)).__module__ == "celery.concurrency.prefork"


def _watch() -> None:
    try:
        lost.watch()
    except Exception:
        log.exception("Could not start looking for lost checks")


def on_process_init(**_kwargs: Any) -> None:
    """A forked pool process must not share the parent's database
    connections (loading CKAN left one in the pool): drop them, unclosed.
    It reads its options once (``config.freeze``), then sweeps for lost
    checks (``worker.lost``)."""
    if model.meta.engine is not None:
        model.meta.engine.dispose(close=False)
    config.freeze()
    _watch()


def on_process_shutdown(**_kwargs: Any) -> None:
    """A pool process about to exit lets the downloads its batches handed
    off end and be recorded first (up to ``total_timeout``; a check queued
    at hand-off covers any it cannot wait for)."""
    if pool.late_count():
        log.info("Waiting for %d handed-off downloads", pool.late_count())
        left = pool.drain(config.current().total_timeout)
        if left:
            log.warning("Exiting with %d handed-off downloads unfinished", left)


def connect() -> None:
    """Connect the receivers (idempotent: Celery keeps one per receiver)."""
    signals.worker_ready.connect(on_worker_ready, weak=False)
    signals.worker_process_init.connect(on_process_init, weak=False)
    signals.worker_process_shutdown.connect(on_process_shutdown, weak=False)


class ConnectSignals(bootsteps.Step):
    """Worker bootstep: connects the receivers when the worker is created
    (before its pool forks, so that pool processes have them too)."""

    name = "ckanext.archiver.signals"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        connect()
