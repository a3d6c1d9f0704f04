"""SQL of the broken-links report, computed live from indexed tables.

Every query starts from the archival row of a resource that is still active,
in a dataset that is still active (``archival -> resource -> package`` joined
on the resource's *current* dataset, ``package.owner_org -> group``), and
applies the reader's :class:`Viewer` so that nobody counts or sees a private
dataset they could not open.

The indexes these queries lean on are made by the ``report_indexes``
migration (see ``migration/archiver/versions``).
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any, Iterator, Optional, Sequence, Union

import sqlalchemy as sa
from ckan import model

__all__ = [
    "Viewer", "OrgSummary", "organization_summaries", "totals",
    "resource_rows", "count_resource_rows", "iter_resource_rows",
    "facets", "broken_trend", "SORTS", "SHOW_BROKEN", "SHOW_UNSURE",
    "SHOW_WEB_PAGE", "SHOW_MOVED",
]

SHOW_BROKEN = "broken"
SHOW_UNSURE = "unsure"
SHOW_WEB_PAGE = "webpage"
SHOW_MOVED = "moved"  # works, but a permanent redirect points elsewhere

# Sort keys of the organization page -> ORDER BY (ties broken by ids so that
# pages never overlap).
SORTS: dict[str, str] = {
    "first_failure": "a.first_failure ASC NULLS LAST",
    "-first_failure": "a.first_failure DESC NULLS LAST",
    "failure_count": "a.failure_count ASC NULLS FIRST",
    "-failure_count": "a.failure_count DESC NULLS LAST",
}
DEFAULT_SORT = "first_failure"


@dataclasses.dataclass(frozen=True)
class Viewer:
    """Who is reading the report, reduced to what the SQL needs.

    :param sysadmin: sees every dataset
    :param org_ids: organizations whose private datasets this user may read
    :param user_id: the user's id, for dataset collaborators (or None)
    :param collaborators: whether dataset collaborators are enabled
    """

    sysadmin: bool = False
    org_ids: tuple[str, ...] = ()
    user_id: Optional[str] = None
    collaborators: bool = False

    def clause(self, params: dict[str, Any]) -> str:
        """SQL condition on ``p`` (package) for this viewer; fills params."""
        if self.sysadmin:
            return "TRUE"
        parts = ["p.private IS NOT TRUE"]
        if self.org_ids:
            params["viewer_orgs"] = list(self.org_ids)
            parts.append("p.owner_org = ANY(:viewer_orgs)")
        if self.collaborators and self.user_id:
            params["viewer_id"] = self.user_id
            parts.append("EXISTS (SELECT 1 FROM package_member pm "
                         "WHERE pm.package_id = p.id "
                         "AND pm.user_id = :viewer_id)")
        return "(" + " OR ".join(parts) + ")"


ANONYMOUS = Viewer()

# Checked resources (a row with no status yet is only queued), still
# active, in their current dataset, still active.
_BASE = """
    FROM archival a
    JOIN resource r ON r.id = a.resource_id AND r.state = 'active'
    JOIN package p ON p.id = r.package_id AND p.state = 'active'
"""
_CHECKED = "a.status_id IS NOT NULL"


@dataclasses.dataclass
class OrgSummary:
    """One row of the report's index (``org_id`` None: no organization)."""

    org_id: Optional[str]
    name: Optional[str]
    title: Optional[str]
    datasets: int = 0
    resources: int = 0
    broken_datasets: int = 0
    broken_resources: int = 0

    @property
    def broken_datasets_percent(self) -> float:
        return _percent(self.broken_datasets, self.datasets)

    @property
    def broken_resources_percent(self) -> float:
        return _percent(self.broken_resources, self.resources)


def _percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 1) if whole else 0.0


def organization_summaries(viewer: Viewer) -> list[OrgSummary]:
    """A row per organization with checked resources the viewer may see,
    worst first (most broken resources, then highest share, then title).
    Datasets without an (active) organization are gathered in one row whose
    ``org_id`` is None, listed last."""
    params: dict[str, Any] = {}
    # Two levels (resources per dataset, then datasets per organization):
    # hash aggregates, no count(DISTINCT) sort over every resource.
    sql = f"""
        WITH per_dataset AS (
            SELECT r.package_id, count(*) AS resources,
                   count(*) FILTER (WHERE a.is_broken) AS broken
            FROM archival a
            JOIN resource r ON r.id = a.resource_id AND r.state = 'active'
            WHERE {_CHECKED}
            GROUP BY r.package_id
        ), s AS (
            SELECT p.owner_org AS org_id, count(*) AS datasets,
                   sum(d.resources) AS resources,
                   count(*) FILTER (WHERE d.broken > 0) AS broken_datasets,
                   sum(d.broken) AS broken_resources
            FROM per_dataset d
            JOIN package p ON p.id = d.package_id AND p.state = 'active'
            WHERE {viewer.clause(params)}
            GROUP BY p.owner_org
        )
        SELECT g.id, g.name, g.title, s.datasets, s.resources,
               s.broken_datasets, s.broken_resources
        FROM s
        LEFT JOIN "group" g ON g.id = s.org_id AND g.state = 'active'
                            AND g.is_organization
    """
    by_org: dict[Optional[str], OrgSummary] = {}
    for row in model.Session.execute(sa.text(sql), params):
        key = row.id
        summary = by_org.setdefault(key, OrgSummary(row.id, row.name, row.title))
        summary.datasets += int(row.datasets)
        summary.resources += int(row.resources)
        summary.broken_datasets += int(row.broken_datasets)
        summary.broken_resources += int(row.broken_resources)
    return sorted(by_org.values(), key=lambda s: (
        s.org_id is None, -s.broken_resources, -s.broken_resources_percent,
        (s.title or s.name or "").lower()))


def totals(summaries: Sequence[OrgSummary]) -> OrgSummary:
    """Site totals of the index rows (each dataset has one organization, so
    the sums are exact)."""
    total = OrgSummary(None, None, None)
    for s in summaries:
        total.datasets += s.datasets
        total.resources += s.resources
        total.broken_datasets += s.broken_datasets
        total.broken_resources += s.broken_resources
    return total


# -- one organization -------------------------------------------------------

def _show_clause(show: str, status_id: Optional[int]) -> str:
    if status_id is not None:
        return "a.status_id = :status_id"
    if show == SHOW_UNSURE:
        return "a.is_broken IS NULL"
    if show == SHOW_WEB_PAGE:
        return "a.is_web_page AND a.is_broken IS FALSE"
    if show == SHOW_MOVED:
        return "a.moved_to IS NOT NULL AND a.is_broken IS FALSE"
    return "a.is_broken"


OrgIds = Union[str, Sequence[str]]


def _org_ids(org_id: OrgIds) -> list[str]:
    """One organization's id, or several (an organization and its
    sub-organizations, for the roll-up)."""
    return [org_id] if isinstance(org_id, str) else list(org_id)


def _org_where(viewer: Viewer, org_id: OrgIds, show: str,
               status_id: Optional[int], res_format: Optional[str],
               params: dict[str, Any]) -> str:
    params["org_ids"] = _org_ids(org_id)
    conditions = [
        "p.owner_org = ANY(:org_ids)", _CHECKED,
        viewer.clause(params),
        _show_clause(show, status_id),
    ]
    if status_id is not None:
        params["status_id"] = status_id
    if res_format:
        params["res_format"] = res_format.strip().lower()
        conditions.append("lower(coalesce(r.format, '')) = :res_format")
    return " AND ".join(conditions)


_ROW_COLUMNS = """
    a.resource_id, p.id AS package_id, p.name AS package_name, p.owner_org,
    p.title AS package_title, p.private, p.type AS package_type,
    r.name AS resource_name, r.format,
    coalesce(a.url, r.url) AS url, a.status_id, a.is_broken, a.reason,
    a.http_status, a.first_failure, a.last_success, a.failure_count,
    a.url_redirected_to, a.is_web_page, a.updated, a.cache_filepath,
    a.cache_url, r.url_type, a.moved_to,
    coalesce(a.last_checked, a.updated) AS last_checked
"""


def _rows_sql(where: str, sort: str) -> str:
    order = SORTS.get(sort, SORTS[DEFAULT_SORT])
    return (f"SELECT {_ROW_COLUMNS} {_BASE} WHERE {where} "
            f"ORDER BY {order}, p.name, a.resource_id")


def count_resource_rows(viewer: Viewer, org_id: OrgIds, show: str = SHOW_BROKEN,
                        status_id: Optional[int] = None,
                        res_format: Optional[str] = None) -> int:
    params: dict[str, Any] = {}
    where = _org_where(viewer, org_id, show, status_id, res_format, params)
    return model.Session.execute(
        sa.text(f"SELECT count(*) {_BASE} WHERE {where}"), params).scalar_one()


def resource_rows(viewer: Viewer, org_id: OrgIds, show: str = SHOW_BROKEN,
                  status_id: Optional[int] = None,
                  res_format: Optional[str] = None,
                  sort: str = DEFAULT_SORT, limit: int = 50,
                  offset: int = 0) -> list[sa.Row]:
    """One page of the organization's rows (broken resources by default)."""
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    where = _org_where(viewer, org_id, show, status_id, res_format, params)
    sql = _rows_sql(where, sort) + " LIMIT :limit OFFSET :offset"
    return list(model.Session.execute(sa.text(sql), params))


def iter_resource_rows(viewer: Viewer, org_id: OrgIds, show: str = SHOW_BROKEN,
                       status_id: Optional[int] = None,
                       res_format: Optional[str] = None,
                       sort: str = DEFAULT_SORT,
                       batch: int = 1000) -> Iterator[sa.Row]:
    """All the organization's rows, streamed from a server-side cursor (the
    exports never hold the whole result in memory)."""
    params: dict[str, Any] = {}
    where = _org_where(viewer, org_id, show, status_id, res_format, params)
    stmt = sa.text(_rows_sql(where, sort)).execution_options(
        stream_results=True, yield_per=batch)
    result = model.Session.execute(stmt, params)
    try:
        yield from result
    finally:
        result.close()


def facets(viewer: Viewer, org_id: OrgIds) -> list[sa.Row]:
    """Counts of the organization's checked resources by status, web page
    flag and format: what the page's filters offer."""
    params: dict[str, Any] = {"org_ids": _org_ids(org_id)}
    sql = f"""
        SELECT a.status_id, a.is_broken, coalesce(a.is_web_page, false)
                   AS is_web_page, a.moved_to IS NOT NULL AS moved,
               lower(coalesce(r.format, '')) AS format, count(*) AS n
        {_BASE}
        WHERE p.owner_org = ANY(:org_ids) AND {_CHECKED}
          AND {viewer.clause(params)}
        GROUP BY 1, 2, 3, 4, 5
    """
    return list(model.Session.execute(sa.text(sql), params))


# -- trend ----------------------------------------------------------------

def broken_trend(viewer: Viewer, org_id: Optional[OrgIds] = None,
                 days: int = 90, window: int = 7,
                 today: Optional[datetime.date] = None,
                 ) -> list[tuple[datetime.date, int]]:
    """Broken resources per day over the last ``days`` days, from
    ``archival_history``.

    A resource counts on day *d* when one of its checks in the ``window``
    days up to and including *d* found it broken. With resources re-checked
    every ``window`` days (``recheck_days``), every link that is still
    broken is found broken at least once in any such window, so the value is
    the number of links broken that day (a link fixed during the window is
    still counted until the window has passed). Only resources and datasets
    still active, and datasets the viewer may see, count.

    The SQL reads the broken checks only (partial index) and returns, per
    resource, its sorted broken days; broken days at most ``window`` days
    apart are merged into one interval ``[first, last + window)`` here, and
    the intervals summed per day.

    :returns: ``[(date, count), ...]``, one per day, oldest first.
    """
    window = max(int(window), 1)
    days = max(int(days), 1)
    today = today or datetime.datetime.now(datetime.timezone.utc).date()
    first = today - datetime.timedelta(days=days - 1)
    since = first - datetime.timedelta(days=window - 1)
    params: dict[str, Any] = {
        "since": datetime.datetime.combine(since, datetime.time()),
        "first": first,
    }
    offsets = "(h.checked_at::date - CAST(:first AS date))"
    if org_id is not None:
        # One organization: from its resources to their history rows
        # (index on resource_id, checked_at).
        params["org_ids"] = _org_ids(org_id)
        sql = f"""
            SELECT array_agg(DISTINCT {offsets} ORDER BY {offsets}) AS days
            FROM package p
            JOIN resource r ON r.package_id = p.id AND r.state = 'active'
            JOIN archival_history h ON h.resource_id = r.id
            WHERE p.owner_org = ANY(:org_ids) AND p.state = 'active'
              AND {viewer.clause(params)}
              AND h.is_broken AND h.checked_at >= :since
            GROUP BY h.resource_id
        """
    else:
        # The whole site: from the broken checks (partial index), then keep
        # the resources still active and visible.
        sql = f"""
            WITH b AS (
                SELECT h.resource_id,
                       array_agg(DISTINCT {offsets} ORDER BY {offsets}) AS days
                FROM archival_history h
                WHERE h.is_broken AND h.checked_at >= :since
                GROUP BY h.resource_id
            )
            SELECT b.days FROM b
            JOIN resource r ON r.id = b.resource_id AND r.state = 'active'
            JOIN package p ON p.id = r.package_id AND p.state = 'active'
            WHERE {viewer.clause(params)}
        """
    diff = [0] * (days + 1)

    def add(start: int, stop: int) -> None:
        start, stop = max(start, 0), min(stop, days)
        if start < stop:
            diff[start] += 1
            diff[stop] -= 1

    for (broken_days,) in model.Session.execute(sa.text(sql), params):
        start = last = broken_days[0]
        for day in broken_days[1:]:
            if day - last > window:
                add(start, last + window)
                start = day
            last = day
        add(start, last + window)

    out: list[tuple[datetime.date, int]] = []
    running = 0
    for n in range(days):
        running += diff[n]
        out.append((first + datetime.timedelta(days=n), running))
    return out
