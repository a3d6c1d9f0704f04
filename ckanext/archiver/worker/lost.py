"""Live workers look for checks lost with a worker that died, and queue them
again.

A check is in Redis while it waits (its pending mark: on a queue, on its
host's list) and while it runs (its claim, ``worker.inflight``, kept alive
by its worker's heartbeat); its row says it was queued (``queued_at``) and
when a worker took it (``started_at``; a check granted its host's slot: when
it was granted, ``worker.hosts.start``). A worker host that dies takes with
it the checks it was running: the broker gives back the batches whose
message was not acknowledged (after ``visibility_timeout``, and only when
kombu next looks, about every 100 s), but not a check granted its host's
slot, whose message was acknowledged long before, nor anything when the
broker lost its messages.

So every worker process looks every ``interval`` seconds (on the
``engine.timer`` thread; the look itself runs on a download thread), one
at a time across all workers (a Redis lock, held ``interval`` seconds:
about one sweep per interval whatever the number of workers): rows queued
and not recorded since, queued and started more than ``age`` ago
(``total_timeout`` + the claims' TTL: no check lasts longer than its
deadline, and a dead worker's claims are gone TTL seconds after its last
heartbeat), and neither pending nor claimed in Redis, are queued again on
bulk (``dispatch.requeue_lost``; the rows are asked again ``STARTED_LAG``
after the look in Redis: a check recorded between the query and that look
has neither, nor has one granted its host's slot then, whose row says by
then that it started). A redelivered message of the same check
that comes later finds it recorded since it was queued and skips it.

The interval is a quarter of ``age`` (10 s to 60 s: one query of the
``archival`` table's queued rows per interval, for the whole site; it reads
the partial index of those rows, ``ix_archival_queued``, not the table). With
the defaults (``total_timeout`` 300) a dead worker's checks are queued
again 5.5 to 6.5 minutes after they started, instead of after the
visibility timeout (at least 20 minutes by default) or never.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from typing import Optional

import redis
from ckan import model

from ckanext.archiver import config, keys
from ckanext.archiver.engine import timer
from ckanext.archiver.worker import dispatch, inflight

__all__ = ["age", "interval", "watch", "sweep"]

log = logging.getLogger(__name__)

INTERVAL_MIN, INTERVAL_MAX = 10.0, 60.0
_TIMER = "archiver-lost-sweep"


def age(options: config.Options) -> float:
    """Seconds a row must have been queued and started for to count as lost
    (when nothing in Redis says it waits or runs)."""
    return options.total_timeout + inflight.TTL


def interval(options: config.Options) -> float:
    """Seconds between two sweeps."""
    return min(INTERVAL_MAX, max(INTERVAL_MIN, age(options) / 4))


def watch(options: Optional[config.Options] = None) -> None:
    """Sweep periodically in this process (once per process; a forked pool
    process starts its own timer)."""
    options = options or config.current()
    timer.every(_TIMER, interval(options), lambda: timer.call_later(0, _sweep_now))


def _sweep_now() -> None:
    try:
        sweep()
    except Exception:  # the database or the broker: next time
        log.exception("Could not look for lost checks")
    finally:
        model.Session.remove()


def sweep(options: Optional[config.Options] = None) -> Optional[int]:
    """One sweep (see the module docstring): how many resources were queued
    again, or None when another worker swept within the interval."""
    options = options or config.current()
    token = f"{socket.gethostname()}:{os.getpid()}"
    try:
        if not keys.client(options).set(keys.lost_sweep(options), token, nx=True,
                                         ex=max(1, int(interval(options)))):
            return None
    except redis.exceptions.RedisError as e:
        log.warning("Could not look for lost checks (%s)", type(e).__name__)
        return None
    count = dispatch.requeue_lost(datetime.timedelta(seconds=age(options)), queued_too=True)
    if count:
        log.warning("Queued again %d checks lost with their worker", count)
    return count
