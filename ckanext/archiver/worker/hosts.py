"""Busy hosts: a check whose host has no free slot waits on the host's list
in Redis (``engine.hostqueue``), not on a thread.

``take_slot`` gives a check its host's slot now (or within SHORT_WAIT), or
puts it on the host's waiting list (``job.deferred``). Whenever a slot comes
free (``give_back``, or the periodic ``pump`` for slots whose holder died),
the heads of the list are granted it, and this process starts each when its
start is due (``engine.timer``), with the function the Celery tasks gave
``serve`` (``worker.tasks``: ``archive_batch`` of that one resource).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from typing import Callable, Optional

import redis

from ckanext.archiver import config, keys
from ckanext.archiver import status as st
from ckanext.archiver.engine import timer
from ckanext.archiver.engine.hostqueue import Grant, HostQueue
from ckanext.archiver.engine.outcome import Outcome
from ckanext.archiver.model import rows
from ckanext.archiver.model.checks import Job
from ckanext.archiver.worker import ahead, dispatch
from ckanext.archiver.worker.recorder import Recorder

__all__ = ["Deferral", "hostqueue", "serve", "start", "give_back", "take_slot", "not_tried",
           "entry_of", "keep_pace", "RECHECK", "SHORT_WAIT", "LATE_SLACK"]

log = logging.getLogger(__name__)

PUMP_EVERY = 5.0  # seconds between two looks for waiting lists nobody serves
SHORT_WAIT = 0.25  # a granted start this close is waited for on the thread
LATE_SLACK = 0.01  # a request starting later than this after its reserved start asks again
ASKS = 3  # times it asks, at most
RECHECK = 1.0  # seconds between two looks at a host a granted check waits for

_hostqueues: dict[tuple, HostQueue] = {}
_last: list[HostQueue] = []  # the one the pump serves (no config read on the timer thread)
_runner: list[Callable[[Grant], None]] = []


def hostqueue(options: Optional[config.Options] = None) -> HostQueue:
    """The site's per-host waiting lists (and this process's pump of them)."""
    options = options or config.current()
    client = keys.client(options)
    args = (keys.hosts_prefix(options), options.per_host_concurrency,
            options.per_host_min_interval, options.host_lease, options.host_down_after,
            options.per_host_start_interval, options.per_host_max_interval)
    key = (id(client), *args)
    hq = _hostqueues.get(key)
    if hq is None:
        hq = _hostqueues[key] = HostQueue(client, *args)
    _last[:] = [hq]  # (every call: the options may have changed back)
    timer.every("archiver-pump", PUMP_EVERY, _pump)
    return hq


def serve(run_granted: Callable[[Grant], None]) -> None:
    """Say how this process runs a check its host's slot was granted to
    (``worker.tasks``; a process that never defers a check needs none)."""
    _runner[:] = [run_granted]


def _pump() -> None:
    try:
        start(_last[0].pump())
    except redis.exceptions.RedisError as e:  # the broker is down: next time
        log.warning("Could not look at the hosts' waiting lists (%s)", type(e).__name__)


@dataclasses.dataclass
class Deferral:
    """A batch's checks go to their hosts' waiting lists when no slot is
    free; what a slot is granted to runs later in this process."""

    hq: HostQueue
    queue: str
    queued_at: Optional[str]
    force: bool
    attempt: int

    def entry(self, job: Job) -> str:
        return json.dumps({"r": job.resource_id, "q": self.queue, "t": self.queued_at,
                           "f": self.force, "a": self.attempt}, sort_keys=True)


def entry_of(grant: Grant) -> dict:
    """What ``Deferral.entry`` said of the check (keys r, q, t, f, a)."""
    return json.loads(grant.entry)


def start(grants: list[Grant]) -> None:
    """Run each granted check when its start is due (no thread waits). Its
    row says it started (``started_at``, written within
    ``dispatch.STARTED_LAG`` by the process's thread for it, a few rows at
    a time; its pending mark went with the grant, ``engine.hostqueue``):
    should this process die before its row is
    written, the check looks lost, and the live workers' sweep
    (``worker.lost``) queues it again once it is older than any check can
    last. A mark that is no longer the one its check set (an edit raised
    it, a priority check ran meanwhile) makes what was loaded ahead for it
    out of date (``worker.ahead``)."""
    if not grants:
        return
    entries = [entry_of(g) for g in grants]
    ids = [e["r"] for e in entries]
    Recorder.of_process(_mark_started).add(ids)
    marks = [g.mark for g in grants]  # dropped by the grant (engine.hostqueue)
    unknown = [k for k, mark in enumerate(marks) if mark is None]
    if unknown:  # a check granted at its submit, or queued by an older version
        try:
            got = dispatch.take_marks([ids[k] for k in unknown])
        except redis.exceptions.RedisError:
            log.warning("Could not drop the pending marks of %d checks", len(unknown))
            got = [None] * len(unknown)
        for k, mark in zip(unknown, got):
            marks[k] = mark.decode() if mark else None
    for e, mark in zip(entries, marks):
        if mark != e["q"] + (dispatch.FORCED if e["f"] else ""):
            ahead.forget(e["r"])
    for grant in grants:
        _wake(grant, time.monotonic() + grant.wait)


def _mark_started(items: list[list[str]]) -> None:
    """The rows of granted checks say they started (``start``), a few at a
    time, on the process's thread for it: one transaction for what was
    granted within ``Recorder.LINGER``, not one each on the way from a slot
    given back to the next request."""
    ids = [rid for chunk in items for rid in chunk]
    try:
        rows.mark_started(ids)
    except Exception as e:  # noqa: BLE001 - the database: the checks still run
        log.warning("Could not mark %d granted checks started (%s)", len(ids),
                    type(e).__name__)


def _run(grant: Grant) -> None:
    if not _runner:  # never in a worker (worker.tasks serves); the lease runs out
        log.error("No runner for the check of %s granted a slot on %s",
                  entry_of(grant)["r"], grant.host)
        return
    _runner[0](grant)


def _wake(grant: Grant, due: float) -> None:
    """Start ``grant`` at ``due``; a long wait (a host backing off) looks
    every RECHECK seconds whether the host stopped answering meanwhile, and
    then records it as not tried at once."""
    left = due - time.monotonic()
    if left > RECHECK and grant.token:
        def look() -> None:
            try:
                down = hostqueue().not_answering(grant.host)
            except redis.exceptions.RedisError:
                down = 0
            if down:
                _run(grant)  # not tried (grant.wait > 0)
            else:
                _wake(grant, due)
        timer.call_later(RECHECK, look)
    else:
        timer.call_later(left, functools.partial(_run, grant))


def give_back(grant: Optional[Grant], outcome: Optional[Outcome] = None) -> None:
    """Release a granted slot, with what its host did; start the grants the
    release hands out."""
    if grant is None or not grant.token:
        return
    try:
        start(hostqueue().release(
            grant.host, grant.token,
            outcome.host_answered if outcome else None,
            latency=_latency(outcome),
            http_status=outcome.http_status if outcome else None,
            retry_after=outcome.retry_after if outcome else None))
    except redis.exceptions.RedisError:  # the lease expires by itself
        log.warning("Could not release the slot of host %s", grant.host)


def keep_pace(job: Job, grant: Grant, hq: HostQueue) -> Optional[Grant]:
    """The grant to send ``job``'s request on now. Starts are reserved:
    a request that comes to its start more than LATE_SLACK late (a busy
    machine, a slow thread) would reach the host closer than its gap to
    the next one, so it asks for a new start (``HostQueue.on_time``),
    waited for here when within SHORT_WAIT. A later one is not waited
    for on the thread: the check goes back to wait for it (None,
    ``job.deferred``; this process runs it then). ``hq``: the run's."""
    for _ in range(ASKS):  # a wait can end late too (on a machine that busy)
        try:
            timed = hq.on_time(grant, LATE_SLACK)
        except redis.exceptions.RedisError:  # the broker is down: as granted
            return grant
        if timed is grant:
            break
        if timed.wait > SHORT_WAIT:
            start([timed])
            job.deferred = True
            return None
        if timed.wait > 0:
            time.sleep(timed.wait)
        grant = timed
    return grant


def _latency(outcome: Optional[Outcome]) -> Optional[float]:
    """How long the host took: to its response's headers when it sent one
    (the whole attempt otherwise)."""
    if outcome is None:
        return None
    return outcome.latency if outcome.latency is not None else outcome.duration


def not_tried(job: Job, host: str, timeouts: int) -> Outcome:
    """``timeouts``: host_down_after (the reason's text stays the same
    however many more timed out)."""
    return Outcome(
        status_id=st.REQUEST_FAILED, url=job.url or "", transient=True,
        reason=f"Not tried: {host} timed out on its last {timeouts} "
               "requests or more (it is tried again once a minute)")


def take_slot(job: Job, host: str, deferral: Deferral) -> Optional[Grant]:
    """The slot for ``job`` if its host has one free now (or within
    SHORT_WAIT); else ``job`` waits on its host's list (``job.deferred``)
    or, its host not answering, gets its outcome."""
    entry = deferral.entry(job)
    options = config.current()
    try:
        timeouts, grants = deferral.hq.submit(
            host, entry, priority=deferral.queue == "priority",
            mark=(keys.pending(options, job.resource_id),
                  deferral.queue + (dispatch.FORCED if deferral.force else "")))
    except redis.exceptions.RedisError:
        job.retry = True
        job.outcome = Outcome(status_id=st.DOWNLOAD_FAILURE, url=job.url or "",
                              reason="Queue broker unavailable (per-host limits)",
                              transient=True)
        return None
    if timeouts:
        job.outcome = not_tried(job, host, deferral.hq.down_after)
        return None
    mine = None
    for grant in grants:
        if mine is None and grant.entry == entry and grant.wait <= SHORT_WAIT:
            mine = grant
        else:
            start([grant])
    if mine is None:
        job.deferred = True
        return None
    if mine.timeouts:
        job.outcome = not_tried(job, host, deferral.hq.down_after)
        return None
    if mine.wait > 0:
        time.sleep(mine.wait)  # at most SHORT_WAIT, and per_host_concurrency per host
    return mine
