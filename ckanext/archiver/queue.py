"""Putting resources on the archiver's queues.

Used by the plugin's hooks, the CLI and the actions. A resource waiting in a
queue is not queued twice: a Redis key per resource (``SET NX`` with an
expiry) says it is pending, and queuing it on ``priority`` while it waits on
``bulk`` raises it. Its ``archival`` row (made if missing) records
``queued_at``, so that what was queued but never finished can be found and
queued again after a Redis loss (``requeue_lost``).
"""

from __future__ import annotations

import datetime
import logging
from typing import Any, Iterable, Optional, Sequence

import ckan.plugins.toolkit as tk
import redis
import sqlalchemy as sa
from ckan import model

from ckanext.archiver import celery_app
from ckanext.archiver.model import Archival, utcnow

log = logging.getLogger(__name__)

QUEUES = ("priority", "bulk")
PENDING_TTL = 7 * 24 * 3600
FORCED = ":force"  # suffix of the pending mark of a forced (explicit) check
_redis: dict[str, redis.Redis] = {}

Item = tuple[str, str]  # (resource_id, package_id)


def redis_client() -> redis.Redis:
    url = celery_app.broker_url(tk.config)
    if url not in _redis:
        _redis[url] = redis.Redis.from_url(url, socket_timeout=5,
                                           socket_connect_timeout=3)
    return _redis[url]


def pending_key(resource_id: str) -> str:
    return "archiver:{}:pending:{}".format(tk.config.get("ckan.site_id"), resource_id)


def _claim(items: Sequence[Item], queue: str, force: bool = False) -> list[Item]:
    """Mark items pending; return those not already waiting (on priority:
    also those waiting on bulk, which are raised, and, for a forced check,
    those waiting for a check that is not forced: an explicit check always
    contacts the server). The mark is the queue's name, with ``:force``
    for a forced check."""
    r = redis_client()
    mark = f"{queue}{FORCED}" if force else queue
    with r.pipeline(transaction=False) as pipe:
        for rid, _pid in items:
            pipe.set(pending_key(rid), mark, nx=True, ex=PENDING_TTL)
        claimed = pipe.execute()
    chosen = [item for item, ok in zip(items, claimed) if ok]
    if queue == "priority":
        waiting = [item for item, ok in zip(items, claimed) if not ok]
        if waiting:
            with r.pipeline(transaction=False) as pipe:
                for rid, _pid in waiting:
                    pipe.getset(pending_key(rid), mark)
                before = pipe.execute()
            forced = b"priority" + FORCED.encode()
            taken = {forced} if force else {b"priority", forced}
            chosen += [item for item, was in zip(waiting, before) if was not in taken]
            kept = [rid for (rid, _pid), was in zip(waiting, before) if was == forced]
            if kept and not force:  # a forced check still waits: keep its mark
                with r.pipeline(transaction=False) as pipe:
                    for rid in kept:
                        pipe.set(pending_key(rid), forced, xx=True, keepttl=True)
                    pipe.execute()
    return chosen


def queue_of_mark(mark: Optional[bytes]) -> Optional[str]:
    """The queue a pending mark names (``priority:force`` -> ``priority``)."""
    if not mark:
        return None
    return mark.decode("utf-8", "replace").split(":", 1)[0]


def release(resource_ids: Iterable[str]) -> None:
    """Forget that resources are pending (a worker starts on them)."""
    keys = [pending_key(rid) for rid in resource_ids]
    if keys:
        redis_client().delete(*keys)


# Two arrays in one statement: far faster than a many-row VALUES list.
_MARK_QUEUED = sa.text("""
    INSERT INTO archival (id, resource_id, package_id, queued_at, created, failure_count)
    SELECT rid, rid, pid, :when, :when, 0
    FROM unnest(CAST(:rids AS text[]), CAST(:pids AS text[])) AS t(rid, pid)
    ON CONFLICT (resource_id) DO UPDATE
    SET queued_at = excluded.queued_at, package_id = excluded.package_id
""")


def _mark_queued(items: Sequence[Item], when: datetime.datetime) -> None:
    """Record queued_at (making rows for never-checked resources), on a
    connection of its own: the caller's transaction is not touched."""
    with model.meta.engine.begin() as conn:
        for start in range(0, len(items), 10000):
            chunk = items[start:start + 10000]
            conn.execute(_MARK_QUEUED, {"rids": [rid for rid, _pid in chunk],
                                        "pids": [pid for _rid, pid in chunk], "when": when})


def _batches(items: Sequence[Item], size: int) -> list[list[Item]]:
    """Batches of about ``size`` resources, keeping a dataset's resources
    together where it fits (so a batch can report ``package-archived``)."""
    batches: list[list[Item]] = []
    current: list[Item] = []
    for item in sorted(items, key=lambda i: i[1]):
        if len(current) >= size and current[-1][1] != item[1]:
            batches.append(current)
            current = []
        if len(current) >= 2 * size:
            batches.append(current)
            current = []
        current.append(item)
    if current:
        batches.append(current)
    return batches


def enqueue(items: Iterable[Item], queue: str = "bulk", force: bool = False) -> int:
    """Queue resources for archiving; return how many were queued (those
    already waiting are skipped). Raises on a broker or database error:
    callers that must not fail (hooks) catch and log."""
    from ckanext.archiver import tasks

    if queue not in QUEUES:
        raise ValueError("queue must be one of {}".format(", ".join(QUEUES)))
    unique = list(dict(items).items())
    if not unique:
        return 0
    chosen = _claim(unique, queue, force)
    if not chosen:
        return 0
    when = utcnow()
    try:
        _mark_queued(chosen, when)
        celery_queue = celery_app.queue_name(queue, tk.config)
        celery_app.get_app()
        kwargs: dict[str, Any] = {"queue": queue, "queued_at": when.isoformat(),
                                  "force": force}
        if queue == "priority":
            for rid, _pid in chosen:
                tasks.archive_resources.apply_async(
                    args=[[rid]], kwargs=kwargs, queue=celery_queue)
        else:
            size = int(tk.config.get("ckanext.archiver.batch_size"))
            for batch in _batches(chosen, size):
                tasks.archive_resources.apply_async(
                    args=[[rid for rid, _pid in batch]], kwargs=kwargs,
                    queue=celery_queue)
    except Exception:
        release(rid for rid, _pid in chosen)
        raise
    return len(chosen)


def requeue_lost(older_than: Optional[datetime.timedelta] = None) -> int:
    """Queue again what was queued but never finished and is no longer
    waiting in Redis (lost in a Redis restart, or its worker died for
    good). Rows started within ``older_than`` (default: the hard time
    limit) are left alone: a worker may still be on them."""
    if older_than is None:
        older_than = datetime.timedelta(seconds=celery_app.time_limits(tk.config)[1])
    cutoff = utcnow() - older_than
    rows = model.Session.query(Archival.resource_id, Archival.package_id).filter(
        Archival.queued_at.isnot(None),
        Archival.queued_at > sa.func.coalesce(Archival.updated, sa.text("'epoch'")),
        sa.or_(Archival.started_at.is_(None), Archival.started_at < cutoff),
    ).all()
    if not rows:
        return 0
    r = redis_client()
    with r.pipeline(transaction=False) as pipe:
        for rid, _pid in rows:
            pipe.exists(pending_key(rid))
        waiting = pipe.execute()
    lost = [(rid, pid) for (rid, pid), w in zip(rows, waiting) if not w]
    if lost:
        log.warning("Re-queuing %d resources queued but never archived", len(lost))
    return enqueue(lost, "bulk") if lost else 0


def lengths() -> dict[str, int]:
    """Messages waiting in each queue."""
    r = redis_client()
    return {q: int(r.llen(celery_app.queue_name(q, tk.config))) for q in QUEUES}


def purge() -> dict[str, int]:
    """Empty both queues and forget pending marks; return what was removed."""
    r = redis_client()
    removed = {}
    for q in QUEUES:
        name = celery_app.queue_name(q, tk.config)
        removed[q] = int(r.llen(name))
        r.delete(name)
    pattern = "archiver:{}:pending:*".format(tk.config.get("ckan.site_id"))
    keys = list(r.scan_iter(match=pattern, count=1000))
    for start in range(0, len(keys), 1000):
        r.delete(*keys[start:start + 1000])
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
    rows = {a.resource_id: a for a in Archival.get_for_package(package_id)}
    items, waiting = [], []
    for rid, url, url_type, last_modified in resources:
        row = rows.get(rid)
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
    if waiting:  # an edited dataset's resources waiting on bulk are raised
        try:
            with redis_client().pipeline(transaction=False) as pipe:
                for rid in waiting:
                    pipe.get(pending_key(rid))
                marks = pipe.execute()
        except redis.exceptions.RedisError:
            marks = []
        items += [(rid, package_id) for rid, mark in zip(waiting, marks)
                  if queue_of_mark(mark) == "bulk"]
    return items


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
    from ckanext.archiver import tasks

    forget = pending["forget"]
    items = [(rid, pid) for rid, pid in pending["enqueue"].items() if rid not in forget]
    try:
        if forget:
            tasks.forget(sorted(forget))
    except Exception:
        log.exception("Could not remove the archived files of deleted resources")
    try:
        if items:
            enqueue(items, "priority")
    except Exception as e:  # the broker is down: the save must not fail
        log.error("Could not queue %d resources for archiving (%s: %s); "
                  "`ckan archiver update --stale` will pick them up",
                  len(items), type(e).__name__, e)
