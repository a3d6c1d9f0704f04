"""SQL of the service figures (``worker.figures``): resources by status, the
oldest check, the oldest resource never checked, checks per hour. Resources
count while they and their dataset are active."""

from __future__ import annotations

import datetime
from typing import Any, Optional

import sqlalchemy as sa
from ckan import model

from ckanext.archiver import status as st
from ckanext.archiver.model import iso

__all__ = ["status_counts", "oldest_unchecked", "per_hour", "oldest_check", "last_hour", "age",
           "site_faults"]

_ACTIVE = """
    FROM resource r
    JOIN package p ON p.id = r.package_id AND p.state = 'active'
    LEFT JOIN archival a ON a.resource_id = r.id
    WHERE r.state = 'active'
"""


def age(value: Optional[datetime.datetime], now: datetime.datetime) -> Optional[float]:
    return round((now - value).total_seconds(), 1) if value else None


def status_counts() -> tuple[list[dict[str, Any]], int]:
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


def oldest_unchecked(now: datetime.datetime) -> Optional[dict[str, Any]]:
    row = model.Session.execute(sa.text(
        f"SELECT r.id, r.package_id, r.created, a.queued_at {_ACTIVE} "
        "AND a.status_id IS NULL ORDER BY r.created ASC NULLS LAST, r.id LIMIT 1")).first()
    if row is None:
        return None
    return {"resource_id": row.id, "package_id": row.package_id,
            "since": iso(row.created), "queued_at": iso(row.queued_at),
            "age_seconds": age(row.created, now)}


def per_hour(hours: int, now: datetime.datetime) -> list[dict[str, Any]]:
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


def oldest_check() -> Optional[datetime.datetime]:
    """When the least recently checked active resource was checked."""
    return model.Session.execute(sa.text(
        f"SELECT min(a.updated) {_ACTIVE} AND a.status_id IS NOT NULL")).scalar()


def last_hour(now: datetime.datetime) -> dict[str, int]:
    """Checks done, failed and stopped by a site fault, and bytes
    downloaded, in the hour up to ``now``."""
    last = model.Session.execute(sa.text("""
        SELECT count(*) AS done,
               count(*) FILTER (WHERE is_broken IS NOT FALSE AND NOT site_fault) AS failed,
               count(*) FILTER (WHERE site_fault) AS site_faults,
               coalesce(sum(bytes_received), 0) AS bytes
        FROM archival_history WHERE checked_at > :since AND checked_at <= :now
    """), {"since": now - datetime.timedelta(hours=1), "now": now}).one()
    return {"done": int(last.done), "failed": int(last.failed),
            "site_faults": int(last.site_faults), "bytes": int(last.bytes)}


def site_faults() -> int:
    """Active resources whose last check met a fault of the site (archive
    folder, disk, database, worker) since their last real check: the
    operator's to fix, not the links'."""
    return int(model.Session.execute(sa.text(
        f"SELECT count(*) {_ACTIVE} AND a.site_fault_at IS NOT NULL "
        "AND a.site_fault_at >= coalesce(a.last_checked, 'epoch')")).scalar())
