"""Service statistics: what ``archiver_status``, ``ckan archiver status
--json`` and the Prometheus endpoint ``/archiver/metrics`` report.

Everything is computed when asked, from Redis (queue lengths), Celery
(workers, only when asked: it waits for their answers) and the database:
``archival`` (resources by status, the oldest check, the oldest resource
never checked) and ``archival_history`` (checks done and failed, bytes
downloaded, per hour). Resources count while they and their dataset are
active.

The Prometheus text is written by hand (exposition format 0.0.4): no
dependency on ``prometheus-client``.
"""

from __future__ import annotations

import datetime
import math
from typing import Any, Iterable, Optional

import ckan.plugins.toolkit as tk
import redis
import sqlalchemy as sa
from ckan import model

from ckanext.archiver import queue
from ckanext.archiver import status as st
from ckanext.archiver.model import utcnow

__all__ = ["numbers", "prometheus_text", "PROMETHEUS_CONTENT_TYPE"]

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_ACTIVE = """
    FROM resource r
    JOIN package p ON p.id = r.package_id AND p.state = 'active'
    LEFT JOIN archival a ON a.resource_id = r.id
    WHERE r.state = 'active'
"""


def _iso(value: Optional[datetime.datetime]) -> Optional[str]:
    return value.isoformat() if value else None


def _age(value: Optional[datetime.datetime], now: datetime.datetime) -> Optional[float]:
    return round((now - value).total_seconds(), 1) if value else None


def _status_counts() -> tuple[list[dict[str, Any]], int]:
    rows = model.Session.execute(sa.text(
        f"SELECT a.status_id, count(*) AS n {_ACTIVE} GROUP BY a.status_id")).all()
    counts, never = [], 0
    for status_id, n in sorted(rows, key=lambda r: (r[0] is None, r[0] or 0)):
        if status_id is None:
            never += int(n)
            continue
        counts.append({"status_id": status_id, "status": st.text(status_id),
                       "is_broken": st.is_broken(status_id), "count": int(n)})
    return counts, never


def _oldest_unchecked(now: datetime.datetime) -> Optional[dict[str, Any]]:
    row = model.Session.execute(sa.text(
        f"SELECT r.id, r.package_id, r.created, a.queued_at {_ACTIVE} "
        "AND a.status_id IS NULL ORDER BY r.created ASC NULLS LAST, r.id LIMIT 1")).first()
    if row is None:
        return None
    return {"resource_id": row.id, "package_id": row.package_id,
            "since": _iso(row.created), "queued_at": _iso(row.queued_at),
            "age_seconds": _age(row.created, now)}


def _per_hour(hours: int, now: datetime.datetime) -> list[dict[str, Any]]:
    """Checks done / failed (broken or not sure) and bytes per hour, oldest
    first, every hour present (the current one is partial)."""
    current = now.replace(minute=0, second=0, microsecond=0)
    first = current - datetime.timedelta(hours=hours - 1)
    rows = model.Session.execute(sa.text("""
        SELECT date_trunc('hour', checked_at) AS hour, count(*) AS done,
               count(*) FILTER (WHERE is_broken IS NOT FALSE AND NOT site_fault) AS failed,
               count(*) FILTER (WHERE is_broken) AS broken,
               count(*) FILTER (WHERE site_fault) AS site_faults,
               coalesce(sum(bytes_received), 0) AS bytes
        FROM archival_history
        WHERE checked_at >= :first AND checked_at <= :now
        GROUP BY 1
    """), {"first": first, "now": now}).all()
    by_hour = {row.hour: row for row in rows}
    out = []
    for n in range(hours):
        hour = first + datetime.timedelta(hours=n)
        row = by_hour.get(hour)
        out.append({"hour": hour.isoformat(), "done": int(row.done) if row else 0,
                    "failed": int(row.failed) if row else 0,
                    "broken": int(row.broken) if row else 0,
                    "site_faults": int(row.site_faults) if row else 0,
                    "bytes": int(row.bytes) if row else 0})
    return out


def _workers(timeout: float = 1.0) -> dict[str, Any]:
    """This site's workers (those consuming its queues: Celery's broadcasts
    reach every worker on the Redis server, other portals' too) and their
    tasks in flight. The two questions are asked at once (each waits for
    ``timeout``)."""
    from concurrent.futures import ThreadPoolExecutor

    from ckanext.archiver import celery_app

    app = celery_app.get_app()
    ours = {celery_app.queue_name(q, tk.config) for q in queue.QUEUES}

    def ask(method: str) -> dict[str, Any]:
        return getattr(app.control.inspect(timeout=timeout), method)() or {}

    with ThreadPoolExecutor(max_workers=2) as pool:
        queues_f, active_f = pool.submit(ask, "active_queues"), pool.submit(ask, "active")
        consuming, active = queues_f.result(), active_f.result()
    workers = sorted(name for name, qs in consuming.items()
                     if any(q.get("name") in ours for q in qs or ()))
    return {"workers": workers,
            "tasks_in_flight": sum(len(active.get(name) or ()) for name in workers)}


def numbers(with_workers: bool = True, hours: Optional[int] = None,
            now: Optional[datetime.datetime] = None) -> dict[str, Any]:
    """The archiver's figures (JSON-serialisable).

    :param with_workers: ask the Celery workers (waits up to a second)
    :param hours: per-hour figures for this many hours (``stats_hours``)
    """
    now = now or utcnow()
    hours = max(int(hours or tk.config.get("ckanext.archiver.stats_hours")), 1)
    out: dict[str, Any] = {"generated_at": now.isoformat()}
    try:
        out["queues"] = queue.lengths()
    except redis.exceptions.RedisError as e:
        out["queues"] = None
        out["broker_error"] = type(e).__name__
    if with_workers and out["queues"] is not None:
        out.update(_workers())
    counts, never = _status_counts()
    out["status_counts"] = counts
    out["resources"] = {
        "total": never + sum(c["count"] for c in counts),
        "never_checked": never,
        "ok": sum(c["count"] for c in counts if c["is_broken"] is False),
        "broken": sum(c["count"] for c in counts if c["is_broken"]),
        "not_sure": sum(c["count"] for c in counts if c["is_broken"] is None),
    }
    # faults of the site (archive folder, disk, database, worker) since the
    # last real check: the operator's to fix, not the links'
    out["resources"]["site_faults"] = int(model.Session.execute(sa.text(
        f"SELECT count(*) {_ACTIVE} AND a.site_fault_at IS NOT NULL "
        "AND a.site_fault_at >= coalesce(a.last_checked, 'epoch')")).scalar())
    oldest_check = model.Session.execute(sa.text(
        f"SELECT min(a.updated) {_ACTIVE} AND a.status_id IS NOT NULL")).scalar()
    out["oldest_check"] = _iso(oldest_check)
    out["oldest_check_age_seconds"] = _age(oldest_check, now)
    out["oldest_unchecked"] = _oldest_unchecked(now)
    per_hour = _per_hour(hours, now)
    out["hours"] = hours
    out["per_hour"] = per_hour
    out["done"] = sum(h["done"] for h in per_hour)
    out["failed"] = sum(h["failed"] for h in per_hour)
    out["site_faults"] = sum(h["site_faults"] for h in per_hour)
    out["bytes_downloaded"] = sum(h["bytes"] for h in per_hour)
    last = model.Session.execute(sa.text("""
        SELECT count(*) AS done,
               count(*) FILTER (WHERE is_broken IS NOT FALSE AND NOT site_fault) AS failed,
               count(*) FILTER (WHERE site_fault) AS site_faults,
               coalesce(sum(bytes_received), 0) AS bytes
        FROM archival_history WHERE checked_at > :since AND checked_at <= :now
    """), {"since": now - datetime.timedelta(hours=1), "now": now}).one()
    out["last_hour"] = {"done": int(last.done), "failed": int(last.failed),
                        "site_faults": int(last.site_faults), "bytes": int(last.bytes)}
    return out


# ---------------------------------------------------------------------------
# Prometheus text exposition format


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value(value: float) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return str(int(value))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[dict[str, Any], float]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{label_text}}} {_value(value)}" if label_text
                              else f"{name} {_value(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def prometheus_text(figures: Optional[dict[str, Any]] = None) -> str:
    """The figures of :func:`numbers` (without workers) as Prometheus text."""
    n = figures if figures is not None else numbers(with_workers=False, hours=1)
    w = _Writer()
    w.metric("archiver_broker_up", "gauge", "1 when the Celery broker (Redis) answers.",
             [({}, 0 if n["queues"] is None else 1)])
    if n["queues"] is not None:
        w.metric("archiver_queue_length", "gauge", "Messages waiting in an archiver queue.",
                 [({"queue": q}, v) for q, v in sorted(n["queues"].items())])
    if "workers" in n:
        w.metric("archiver_workers", "gauge", "Celery workers that answered.",
                 [({}, len(n["workers"]))])
        w.metric("archiver_tasks_in_flight", "gauge", "Tasks being run by the workers.",
                 [({}, n["tasks_in_flight"])])
    w.metric("archiver_resources", "gauge",
             "Active resources by the status of their last check.",
             [({"status_id": c["status_id"], "status": c["status"],
                "result": {True: "broken", False: "ok", None: "not_sure"}[c["is_broken"]]},
               c["count"]) for c in n["status_counts"]])
    w.metric("archiver_resources_never_checked", "gauge",
             "Active resources not checked yet.", [({}, n["resources"]["never_checked"])])
    w.metric("archiver_resources_broken", "gauge", "Active resources with a broken link.",
             [({}, n["resources"]["broken"])])
    last = n["last_hour"]
    w.metric("archiver_checks_last_hour", "gauge", "Checks recorded in the last hour.",
             [({}, last["done"])])
    w.metric("archiver_checks_failed_last_hour", "gauge",
             "Checks in the last hour that found a broken link or could not tell "
             "(faults of the site not included).",
             [({}, last["failed"])])
    w.metric("archiver_resources_site_fault", "gauge",
             "Active resources whose last check met a fault of the site "
             "(archive folder, disk, database, worker), not of the link.",
             [({}, n["resources"]["site_faults"])])
    w.metric("archiver_site_faults_last_hour", "gauge",
             "Checks in the last hour stopped by a fault of the site.",
             [({}, last["site_faults"])])
    w.metric("archiver_downloaded_bytes_last_hour", "gauge",
             "Bytes downloaded in the last hour.", [({}, last["bytes"])])
    unchecked = n["oldest_unchecked"]
    w.metric("archiver_oldest_unchecked_age_seconds", "gauge",
             "Age of the oldest active resource never checked (0 when none).",
             [({}, unchecked["age_seconds"] or 0.0 if unchecked else 0.0)])
    w.metric("archiver_oldest_check_age_seconds", "gauge",
             "Time since the least recently checked resource was checked.",
             [({}, float(n["oldest_check_age_seconds"] or 0.0))])
    return w.text()
