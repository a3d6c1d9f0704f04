"""The rows of the checks next on a host's waiting list, loaded ahead.

A check that waited for its host runs on its own once its slot is granted
(``worker.tasks``), and loading its resource and previous row, one query
each, would cost about as much CPU as the check, and hold the host's slot
idle meanwhile. So the process granted a bulk check that it has not loaded
yet loads it together with the next AHEAD bulk checks on the host's list
(the same two queries, for all of them), and keeps them for whichever of
them it is granted next within MAX_AGE seconds. Once fewer than REFILL_AT
of a host's are left, or REFRESH seconds after it last looked, the next
ones are loaded on a download thread (``refill``, which also drops what
was loaded for checks another process was granted), while the checks run:
a load is then seldom on the way from a slot given back to the host's
next request.

What was loaded ahead is used only while nothing changed: ``worker.hosts``
drops it (``forget``) when the check's pending mark was no longer its own
at its grant (an edit raised the resource to priority, or a priority check
ran meanwhile), so that check is loaded again and sees the new URL, or
that it was checked already. Priority checks are always loaded at their
grant. A result for a URL changed later still goes to the history only
(``model.checks``: superseded).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Optional

import redis
from ckan import model

from ckanext.archiver.engine import pool
from ckanext.archiver.engine.hostqueue import Grant, HostQueue
from ckanext.archiver.model import checks
from ckanext.archiver.model.checks import Job

__all__ = ["job_for", "forget", "refill", "AHEAD", "MAX_AGE", "REFILL_AT"]

log = logging.getLogger(__name__)

AHEAD = 16  # bulk checks of the host's list loaded with the one granted
MAX_AGE = 3.0  # seconds what was loaded ahead is used for
REFILL_AT = AHEAD // 2  # fewer of a host's left: the next ones are loaded meanwhile
REFRESH = 1.0  # seconds after which a host's are looked at again anyway

_lock = threading.Lock()
# resource id -> (when, entry, job, host)
_loaded: dict[str, tuple[float, str, Job, str]] = {}
_forgotten: dict[str, float] = {}  # resource id -> when it was forgotten
_refilling: set[str] = set()  # hosts whose next checks are being loaded
_refilled: dict[str, float] = {}  # host -> when its list was last looked at


def forget(resource_id: str) -> None:
    """What was loaded ahead for ``resource_id`` is out of date (and so is
    what a load under way finds for it)."""
    with _lock:
        _loaded.pop(resource_id, None)
        _forgotten[resource_id] = time.monotonic()


def _expire(now: float) -> None:
    for rid in [r for r, got in _loaded.items() if now - got[0] > MAX_AGE]:
        del _loaded[rid]
    for rid in [r for r, when in _forgotten.items() if now - when > MAX_AGE]:
        del _forgotten[rid]
    for host in [h for h, when in _refilled.items() if now - when > MAX_AGE]:
        del _refilled[host]


def _take(resource_id: str, entry: str) -> Optional[Job]:
    now = time.monotonic()
    with _lock:
        _expire(now)
        got = _loaded.get(resource_id)
        if got is None or got[1] != entry:
            return None
        del _loaded[resource_id]
        return got[2]


def _keep(host: str, nexts: dict[str, str], jobs: list[Job], since: float) -> None:
    """Keep what was loaded for ``nexts`` (resource id -> entry) since
    ``since``, but not what was forgotten meanwhile."""
    now = time.monotonic()
    with _lock:
        for job in jobs:
            rid = job.resource_id
            if rid in nexts and _forgotten.get(rid, -1.0) < since:
                _loaded[rid] = (now, nexts[rid], job, host)


def _nexts(host: str, hq: HostQueue, but: str = "", limit: int = AHEAD) -> dict[str, str]:
    """The next bulk checks on ``host``'s list (resource id -> entry)."""
    nexts: dict[str, str] = {}
    try:
        for entry in hq.waiting(host, limit):
            n = json.loads(entry)
            if n["q"] == "bulk" and n["r"] != but:
                nexts.setdefault(n["r"], entry)
    except (redis.exceptions.RedisError, ValueError, KeyError, TypeError):
        return {}
    return nexts


def refill(host: str, hq: HostQueue) -> None:
    """Load the next bulk checks on ``host``'s list that are not loaded yet
    (on a download thread: ``job_for``); what was loaded for checks no
    longer on it (granted here or to another process) goes."""
    since = time.monotonic()
    try:
        nexts = _nexts(host, hq, limit=AHEAD + REFILL_AT)
        with _lock:
            for rid in [r for r, got in _loaded.items()
                        if got[3] == host and nexts.get(r) != got[1]]:
                del _loaded[rid]
            nexts = {r: e for r, e in nexts.items() if r not in _loaded}
        if nexts:
            _keep(host, nexts, checks.load_jobs(list(nexts)), since)
    except Exception:  # noqa: BLE001 - the database: loaded at the grant instead
        log.warning("Could not load the next checks of %s ahead", host, exc_info=True)
    finally:
        model.Session.remove()
        with _lock:
            _refilling.discard(host)


def _refill_soon(host: str, hq: HostQueue) -> None:
    now = time.monotonic()
    with _lock:
        left = sum(1 for got in _loaded.values() if got[3] == host)
        if host in _refilling or (left >= REFILL_AT
                                  and now - _refilled.get(host, 0.0) < REFRESH):
            return
        _refilling.add(host)
        _refilled[host] = now
    try:
        pool.submit(refill, host, hq)
    except RuntimeError:  # the process is exiting
        with _lock:
            _refilling.discard(host)


def job_for(grant: Grant, hq: Optional[HostQueue]) -> Job:
    """The job of the check ``grant`` was given to: loaded ahead, or now
    with the next bulk checks on its host's list (``hq``: the waiting
    lists; None: only this one)."""
    e = json.loads(grant.entry)
    rid = e["r"]
    if e["q"] == "bulk":
        job = _take(rid, grant.entry)
        if job is not None:
            if hq is not None:
                _refill_soon(grant.host, hq)
            return job
    since = time.monotonic()
    nexts = _nexts(grant.host, hq, but=rid) if e["q"] == "bulk" and hq is not None else {}
    jobs = checks.load_jobs([rid, *nexts])
    _keep(grant.host, nexts, jobs[1:], since)
    return jobs[0]
