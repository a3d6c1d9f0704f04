"""Putting resources on the archiver's queues.

Used by the plugin's hooks, the CLI and the actions; loads no Celery until a
resource is queued (tasks are sent by name). A resource waiting in a queue
is not queued twice: a Redis key per resource (``SET NX`` with an expiry)
says it is pending, and queuing it on ``priority`` while it waits on
``bulk`` raises it. Its ``archival`` row (made if missing) records
``queued_at``, so that what was queued but never finished can be found and
queued again after a Redis loss (``requeue_lost``).
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any, Iterable, Optional, Sequence

import redis
import sqlalchemy as sa
from ckan import model

from ckanext.archiver import config, keys
from ckanext.archiver.config import QUEUES
from ckanext.archiver.engine.hostqueue import HostQueue
from ckanext.archiver.model import Archival, rows, utcnow
from ckanext.archiver.worker import app, housekeeping
from ckanext.archiver.worker.recorder import Recorder

__all__ = ["QUEUES", "PENDING_TTL", "enqueue", "release", "take_marks", "requeue_lost", "lengths",
           "purge", "needing_check", "after_commit", "batches"]

log = logging.getLogger(__name__)

PENDING_TTL = 7 * 24 * 3600
FORCED = ":force"  # suffix of the pending mark of a forced (explicit) check
# seconds within which a granted check's row says it started (worker.hosts:
# written a few at a time by the process's recorder thread for it)
STARTED_LAG = Recorder.LINGER + 0.5

Item = tuple[str, str]  # (resource_id, package_id)


def _claim(items: Sequence[Item], queue_name: str, options: config.Options,
           force: bool = False) -> list[Item]:
    """Mark items pending; return those not already waiting (on priority:
    also those waiting on bulk, which are raised, and, for a forced check,
    those waiting for a check that is not forced: an explicit check always
    contacts the server). The mark is the queue's name, with ``:force``
    for a forced check."""
    r = keys.client(options)
    mark = f"{queue_name}{FORCED}" if force else queue_name
    with r.pipeline(transaction=False) as pipe:
        for rid, _pid in items:
            pipe.set(keys.pending(options, rid), mark, nx=True, ex=PENDING_TTL)
        claimed = pipe.execute()
    chosen = [item for item, ok in zip(items, claimed) if ok]
    if queue_name == "priority":
        waiting = [item for item, ok in zip(items, claimed) if not ok]
        if waiting:
            with r.pipeline(transaction=False) as pipe:
                for rid, _pid in waiting:
                    pipe.getset(keys.pending(options, rid), mark)
                before = pipe.execute()
            forced = b"priority" + FORCED.encode()
            taken = {forced} if force else {b"priority", forced}
            chosen += [item for item, was in zip(waiting, before) if was not in taken]
            kept = [rid for (rid, _pid), was in zip(waiting, before) if was == forced]
            if kept and not force:  # a forced check still waits: keep its mark
                with r.pipeline(transaction=False) as pipe:
                    for rid in kept:
                        pipe.set(keys.pending(options, rid), forced, xx=True, keepttl=True)
                    pipe.execute()
    return chosen


def queue_of_mark(mark: Optional[bytes]) -> Optional[str]:
    """The queue a pending mark names (``priority:force`` -> ``priority``)."""
    if not mark:
        return None
    return mark.decode("utf-8", "replace").split(":", 1)[0]


def release(resource_ids: Iterable[str]) -> None:
    """Forget that resources are pending (a worker starts on them)."""
    options = config.current()
    pending = [keys.pending(options, rid) for rid in resource_ids]
    if pending:
        keys.client(options).delete(*pending)


def take_marks(resource_ids: Sequence[str]) -> list[Optional[bytes]]:
    """``release``, returning each resource's pending mark as it was."""
    options = config.current()
    if not resource_ids:
        return []
    with keys.client(options).pipeline(transaction=False) as pipe:
        for rid in resource_ids:
            pipe.getdel(keys.pending(options, rid))
        return pipe.execute()


def batches(items: Sequence[Item], size: int) -> list[list[Item]]:
    """Batches of about ``size`` resources, keeping a dataset's resources
    together where it fits (fewer commits, and so fewer round locks, per
    dataset)."""
    out: list[list[Item]] = []
    current: list[Item] = []
    for item in sorted(items, key=lambda i: i[1]):
        if len(current) >= size and current[-1][1] != item[1]:
            out.append(current)
            current = []
        if len(current) >= 2 * size:
            out.append(current)
            current = []
        current.append(item)
    if current:
        out.append(current)
    return out


def enqueue(items: Iterable[Item], queue_name: str = "bulk", force: bool = False) -> int:
    """Queue resources for archiving; return how many were queued (those
    already waiting are skipped). Raises on a broker or database error:
    callers that must not fail (hooks) catch and log."""
    if queue_name not in QUEUES:
        raise ValueError("queue must be one of {}".format(", ".join(QUEUES)))
    unique = list(dict(items).items())
    if not unique:
        return 0
    options = config.current()
    chosen = _claim(unique, queue_name, options, force)
    if not chosen:
        return 0
    when = utcnow()
    try:
        rows.mark_queued(chosen, when)
        celery_queue = options.queue_name(queue_name)
        kwargs: dict[str, Any] = {"queue": queue_name, "queued_at": when.isoformat(),
                                  "force": force}
        if queue_name == "priority":
            for rid, _pid in chosen:
                app.send(app.ARCHIVE_TASK, celery_queue, [[rid]], kwargs)
        else:
            for batch in batches(chosen, options.batch_size):
                app.send(app.ARCHIVE_TASK, celery_queue, [[rid for rid, _pid in batch]], kwargs)
    except Exception:
        release(rid for rid, _pid in chosen)
        raise
    return len(chosen)


def requeue_lost(older_than: Optional[datetime.timedelta] = None,
                 queued_too: bool = False) -> int:
    """Queue again what was queued but never finished and is no longer
    waiting in Redis (lost in a Redis restart, or its worker died for
    good). Rows started within ``older_than`` (default: the hard time
    limit) are left alone: a worker may still be on them; with
    ``queued_too`` (the live workers' sweep, ``worker.lost``) so are rows
    queued within it. So is a resource a worker has claimed
    (``worker.inflight``): it is being archived now."""
    options = config.current()
    if older_than is None:
        older_than = datetime.timedelta(seconds=options.time_limits[1])
    cutoff = utcnow() - older_than
    found = rows.lost(cutoff, cutoff if queued_too else None)
    if not found:
        return 0
    r = keys.client(options)
    with r.pipeline(transaction=False) as pipe:
        for rid, _pid in found:
            pipe.exists(keys.pending(options, rid), keys.running(options, rid))
        waiting = pipe.execute()
    lost = [(rid, pid) for (rid, pid), w in zip(found, waiting) if not w]
    if lost:
        # the query is older than the look in Redis: a check whose row was
        # committed in between had released its claim (after its commit)
        # and looks lost, and queued again it would be checked twice; so
        # would one granted its host's slot in between (its pending mark
        # gone, its claim not taken yet), whose row says it started within
        # STARTED_LAG (worker.hosts). Ask the rows again after that (read
        # committed: a new snapshot)
        time.sleep(STARTED_LAG)
        lost = rows.lost(cutoff, cutoff if queued_too else None,
                         among=[rid for rid, _pid in lost])
    if lost:
        log.warning("Re-queuing %d resources queued but never archived", len(lost))
    return enqueue(lost, "bulk") if lost else 0


def lengths() -> dict[str, int]:
    """Messages waiting in each queue."""
    options = config.current()
    r = keys.client(options)
    return {q: int(r.llen(options.queue_name(q))) for q in QUEUES}


def purge(for_good: bool = False) -> dict[str, int]:
    """Empty both queues and the per-host waiting lists and forget pending
    marks; return what was removed. ``for_good`` (``ckan archiver
    purge-queues``): also say on the rows that nothing is queued any more,
    or a worker's start (``requeue_lost``) would queue it all again, as it
    does after a Redis loss."""
    options = config.current()
    r = keys.client(options)
    removed = {}
    for q in QUEUES:
        name = options.queue_name(q)
        removed[q] = int(r.llen(name))
        r.delete(name)
    removed["waiting for their host"] = HostQueue(r, keys.hosts_prefix(options), 1, 0, 1).purge()
    found = list(r.scan_iter(match=keys.pending_pattern(options), count=1000))
    for start in range(0, len(found), 1000):
        r.delete(*found[start:start + 1000])
    if for_good:
        rows.unqueue_all()
    return removed


# ---------------------------------------------------------------------------
# From the plugin's hooks: act once the dataset's transaction has committed
# (a worker must find the new URL, and a rolled-back edit queues nothing).

_PENDING = "archiver_after_commit"
_listening = False


def needing_check(package_id: str) -> list[Item]:
    """Active resources of a dataset never checked, or whose URL (or
    uploaded file) changed since their last check."""
    resources = model.Session.query(
        model.Resource.id, model.Resource.url, model.Resource.url_type,
        model.Resource.last_modified).filter(
        model.Resource.package_id == package_id,
        model.Resource.state == "active").all()
    known = {a.resource_id: a for a in Archival.get_for_package(package_id)}
    items, waiting = [], []
    for rid, url, url_type, last_modified in resources:
        row = known.get(rid)
        if row is None or row.status_id is None and row.queued_at is None:
            changed = True
        elif row.status_id is None:
            changed = False  # queued, not checked yet
            waiting.append(rid)
        elif url_type == "upload":
            changed = bool(last_modified and row.resource_timestamp != last_modified)
        else:
            changed = (row.url or "") != (url or "").strip()
        if changed:
            items.append((rid, package_id))
    if waiting:
        # A resource whose URL this save changed (CKAN marks it) is raised to
        # priority even when a bulk batch has taken it already or it waits
        # for its host: that check may have read the old URL, and its result
        # is not recorded as the resource's state (model.checks.write_rows).
        # When the save says nothing about URLs, every resource of the
        # dataset still waiting on bulk is raised.
        edited = {obj.id for obj in _touched(model.Session())
                  if isinstance(obj, model.Resource) and obj.package_id == package_id
                  and getattr(obj, "url_changed", False)}
        options = config.current()
        try:
            with keys.client(options).pipeline(transaction=False) as pipe:
                for rid in waiting:
                    pipe.get(keys.pending(options, rid))
                marks = pipe.execute()
        except redis.exceptions.RedisError:
            marks = []
        for rid, mark in zip(waiting, marks):
            name = queue_of_mark(mark)
            if (rid in edited and name != "priority") or (not edited and name == "bulk"):
                items.append((rid, package_id))
    return items


def _touched(session: Any) -> set:
    """Objects this transaction changed or added, flushed (CKAN's own
    record of them, which its IResourceUrlChange uses too) or not (a flag
    left on an object by an earlier transaction of the session does not
    count)."""
    cache = getattr(session, "_object_cache", None) or {}
    return (set(cache.get("changed", ())) | set(cache.get("new", ()))
            | set(session.dirty) | set(session.new))


def _listen() -> None:
    global _listening
    if not _listening:
        sa.event.listen(model.Session, "after_commit", _after_commit)
        sa.event.listen(model.Session, "after_rollback", _after_rollback)
        _listening = True


def after_commit(session: Any, enqueue_items: Sequence[Item] = (),
                 forget_ids: Sequence[str] = ()) -> None:
    """Queue ``enqueue_items`` on priority, and drop the archived files of
    ``forget_ids``, when ``session`` commits."""
    _listen()
    pending = session.info.setdefault(_PENDING, {"enqueue": {}, "forget": set()})
    pending["enqueue"].update(dict(enqueue_items))
    pending["forget"].update(forget_ids)


def _after_rollback(session: Any) -> None:
    if not session.in_nested_transaction():
        session.info.pop(_PENDING, None)


def _after_commit(session: Any) -> None:
    # SQLAlchemy also says "after_commit" when a SAVEPOINT is released
    # (CKAN's package_update uses one): wait for the real commit, or a
    # worker could read the old URL.
    if session.in_nested_transaction():
        return
    pending = session.info.pop(_PENDING, None)
    if not pending:
        return
    forget = pending["forget"]
    items = [(rid, pid) for rid, pid in pending["enqueue"].items() if rid not in forget]
    try:
        if forget:
            housekeeping.forget(sorted(forget), busy={pid for _rid, pid in items})
    except Exception:
        log.exception("Could not remove the archived files of deleted resources")
    try:
        if items:
            enqueue(items, "priority")
    except Exception as e:  # the broker is down: the save must not fail
        log.error("Could not queue %d resources for archiving (%s: %s); "
                  "`ckan archiver update --stale` will pick them up",
                  len(items), type(e).__name__, e)
