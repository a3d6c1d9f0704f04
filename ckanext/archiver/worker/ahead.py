"""The rows of the checks next on a host's waiting list, loaded ahead.

A check that waited for its host runs on its own once its slot is granted
(``worker.tasks``), and loading its resource and previous row, one query
each, would cost about as much CPU as the check, and hold the host's slot
idle meanwhile. So the process granted a bulk check that it has not loaded
yet loads it together with the next AHEAD bulk checks on the host's list
(the same two queries, for all of them), and keeps them for whichever of
them it is granted next within MAX_AGE seconds.

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

from ckanext.archiver.engine.hostqueue import Grant, HostQueue
from ckanext.archiver.model import checks
from ckanext.archiver.model.checks import Job

__all__ = ["job_for", "forget", "AHEAD", "MAX_AGE"]

log = logging.getLogger(__name__)

AHEAD = 16  # bulk checks of the host's list loaded with the one granted
MAX_AGE = 3.0  # seconds what was loaded ahead is used for

_lock = threading.Lock()
_loaded: dict[str, tuple[float, str, Job]] = {}  # resource id -> (when, entry, job)


def forget(resource_id: str) -> None:
    """What was loaded ahead for ``resource_id`` is out of date."""
    with _lock:
        _loaded.pop(resource_id, None)


def _take(resource_id: str, entry: str) -> Optional[Job]:
    now = time.monotonic()
    with _lock:
        for rid in [r for r, (when, _e, _j) in _loaded.items() if now - when > MAX_AGE]:
            del _loaded[rid]
        got = _loaded.get(resource_id)
        if got is None or got[1] != entry:
            return None
        del _loaded[resource_id]
        return got[2]


def job_for(grant: Grant, hq: Optional[HostQueue]) -> Job:
    """The job of the check ``grant`` was given to: loaded ahead, or now
    with the next bulk checks on its host's list (``hq``: the waiting
    lists; None: only this one)."""
    e = json.loads(grant.entry)
    rid = e["r"]
    if e["q"] == "bulk":
        job = _take(rid, grant.entry)
        if job is not None:
            return job
    nexts: dict[str, str] = {}
    if e["q"] == "bulk" and hq is not None:
        try:
            for entry in hq.waiting(grant.host, AHEAD):
                n = json.loads(entry)
                if n["q"] == "bulk" and n["r"] != rid:
                    nexts.setdefault(n["r"], entry)
        except (redis.exceptions.RedisError, ValueError, KeyError, TypeError):
            nexts = {}
    jobs = checks.load_jobs([rid, *nexts])
    now = time.monotonic()
    with _lock:
        for job in jobs[1:]:
            _loaded[job.resource_id] = (now, nexts[job.resource_id], job)
    return jobs[0]
