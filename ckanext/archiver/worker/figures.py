"""Service figures: what ``archiver_status``, ``ckan archiver status --json``
and the Prometheus endpoint ``/archiver/metrics`` report.

Everything is computed when asked, from Redis (queue lengths), Celery
(workers, only when asked: it waits for their answers) and the database
(``model.figures``: resources by status, the oldest check, the oldest
resource never checked, checks done and failed and bytes downloaded per
hour).

The Prometheus text is written by hand (exposition format 0.0.4): no
dependency on ``prometheus-client``.
"""

from __future__ import annotations

import datetime
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Optional

import redis

from ckanext.archiver import config
from ckanext.archiver.model import figures, iso, utcnow
from ckanext.archiver.worker import dispatch
from ckanext.archiver.worker.app import get_app

__all__ = ["numbers", "prometheus_text", "PROMETHEUS_CONTENT_TYPE"]

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _workers(timeout: float = 1.0) -> dict[str, Any]:
    """This site's workers (those consuming its queues: Celery's broadcasts
    reach every worker on the Redis server, other portals' too) and their
    tasks in flight. The two questions are asked at once (each waits for
    ``timeout``)."""
    app = get_app()
    options = config.current()
    ours = {options.queue_name(q) for q in config.QUEUES}

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
    hours = max(int(hours or config.current().stats_hours), 1)
    out: dict[str, Any] = {"generated_at": now.isoformat()}
    try:
        out["queues"] = dispatch.lengths()
    except redis.exceptions.RedisError as e:
        out["queues"] = None
        out["broker_error"] = type(e).__name__
    if with_workers and out["queues"] is not None:
        out.update(_workers())
    counts, never = figures.status_counts()
    out["status_counts"] = counts
    out["resources"] = {
        "total": never + sum(c["count"] for c in counts),
        "never_checked": never,
        "ok": sum(c["count"] for c in counts if c["is_broken"] is False),
        "broken": sum(c["count"] for c in counts if c["is_broken"]),
        "not_sure": sum(c["count"] for c in counts if c["is_broken"] is None),
        "site_faults": figures.site_faults(),
    }
    oldest_check = figures.oldest_check()
    out["oldest_check"] = iso(oldest_check)
    out["oldest_check_age_seconds"] = figures.age(oldest_check, now)
    out["oldest_unchecked"] = figures.oldest_unchecked(now)
    per_hour = figures.per_hour(hours, now)
    out["hours"] = hours
    out["per_hour"] = per_hour
    out["done"] = sum(h["done"] for h in per_hour)
    out["failed"] = sum(h["failed"] for h in per_hour)
    out["site_faults"] = sum(h["site_faults"] for h in per_hour)
    out["bytes_downloaded"] = sum(h["bytes"] for h in per_hour)
    out["last_hour"] = figures.last_hour(now)
    return out


# -- Prometheus text exposition format ---------------------------------------


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
