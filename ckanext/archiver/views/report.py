"""The broken-links report: ``archiver.report_index``
(``/report/broken-links``) and ``archiver.report_org``
(``/report/broken-links/<org>``), as HTML pages or, with ``?format=csv`` and
``?format=json``, the same rows streamed. Everything a reader sees follows
the datasets' read permission: anonymous readers count public datasets only,
members their organizations' private ones too, sysadmins everything."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Optional
from urllib.parse import urlencode

import ckan.plugins.toolkit as tk
from ckan import authz, model
from ckan.lib.pagination import Page
from flask import request

from ckanext.archiver import config, urls
from ckanext.archiver import status as st
from ckanext.archiver.model import iso, report
from ckanext.archiver.model.trend import since_first_check
from ckanext.archiver.views.common import no_shared_cache, request_context, viewer
from ckanext.archiver.views.export import stream

__all__ = ["report_index", "report_org", "EXPORT_FORMATS", "INDEX_SORTS"]

EXPORT_FORMATS = ("csv", "json")

# Sort keys of the index table (``-key``: descending). No key: worst first.
INDEX_SORTS: dict[str, Callable[[report.OrgSummary], Any]] = {
    "organization": lambda s: (s.title or s.name or "").lower(),
    "datasets": lambda s: s.datasets,
    "broken_datasets": lambda s: s.broken_datasets,
    "broken_datasets_percent": lambda s: s.broken_datasets_percent,
    "resources": lambda s: s.resources,
    "broken_resources": lambda s: s.broken_resources,
    "broken_resources_percent": lambda s: s.broken_resources_percent,
}

def _export_format() -> Optional[str]:
    wanted = (request.args.get("format") or "").lower()
    if wanted and wanted not in EXPORT_FORMATS:
        tk.abort(400, tk._("Unknown format: choose csv or json"))
    return wanted or None


def _index_sort() -> Optional[str]:
    sort = (request.args.get("sort") or "").strip()
    if sort and sort.lstrip("-") not in INDEX_SORTS:
        tk.abort(400, tk._("Unknown sort {value}: use {choices}").format(
            value=sort[:40], choices=", ".join(INDEX_SORTS)))
    return sort or None


def _sorted_summaries(summaries: list[report.OrgSummary],
                      sort: Optional[str]) -> list[report.OrgSummary]:
    if not sort:
        return summaries
    key = INDEX_SORTS[sort.lstrip("-")]
    # "No organization" stays last; ties keep the worst-first order
    named = [s for s in summaries if s.org_id is not None]
    named.sort(key=key, reverse=sort.startswith("-"))
    return named + [s for s in summaries if s.org_id is None]


def report_index():
    """Broken links per organization, worst first (or ``?sort=``), with
    site totals."""
    export = _export_format()
    sort = _index_sort()
    reader = viewer()
    no_shared_cache()
    options = config.current()
    if export:
        return stream(export, "broken-links", _index_columns(),
                      lambda: _index_records(reader, sort), meta={})
    summaries = report.organization_summaries(reader)
    return tk.render("archiver/report_index.html", {
        "summaries": _sorted_summaries(summaries, sort),
        "sort": sort or "",
        "totals": report.totals(summaries),
        "trend": since_first_check(report.broken_trend(
            reader, days=options.report_trend_days, window=options.recheck_days)),
        "trend_window": options.recheck_days,
    })


def _index_columns() -> list[str]:
    return ["organization", "title", "datasets", "broken_datasets",
            "broken_datasets_percent", "resources", "broken_resources",
            "broken_resources_percent"]


def _index_records(reader: report.Viewer,
                   sort: Optional[str] = None) -> Iterator[dict[str, Any]]:
    for s in _sorted_summaries(report.organization_summaries(reader), sort):
        yield {
            "organization": s.name, "title": s.title,
            "datasets": s.datasets, "broken_datasets": s.broken_datasets,
            "broken_datasets_percent": s.broken_datasets_percent,
            "resources": s.resources, "broken_resources": s.broken_resources,
            "broken_resources_percent": s.broken_resources_percent,
        }


def _organization_or_404(id: str) -> model.Group:
    group = model.Group.get(id)
    if group is None or not group.is_organization or group.state != "active":
        tk.abort(404, tk._("Organization not found"))
    try:
        tk.check_access("organization_show", request_context(), {"id": group.id})
    except tk.NotAuthorized:
        tk.abort(403, tk._("Not authorized to see this organization"))
    return group


def _filters() -> dict[str, Any]:
    """The organization page's filters from the query string; a value that
    means nothing is refused with a 400 that says what is allowed (never a
    silent fall-back to another list)."""
    status = (request.args.get("status") or report.SHOW_BROKEN).strip()
    show, status_id = report.SHOW_BROKEN, None
    if status in (report.SHOW_UNSURE, report.SHOW_WEB_PAGE, report.SHOW_MOVED):
        show = status
    elif status.isdigit() and int(status) in st.STATUSES:
        status_id = int(status)
    elif status != report.SHOW_BROKEN:
        tk.abort(400, tk._("Unknown status filter {value}: use broken, unsure, "
                           "webpage, moved or a status id ({ids})").format(
            value=status[:40], ids=", ".join(str(i) for i in st.STATUSES)))
    sort = request.args.get("sort") or report.DEFAULT_SORT
    if sort not in report.SORTS:
        tk.abort(400, tk._("Unknown sort {value}: use {choices}").format(
            value=sort[:40], choices=", ".join(report.SORTS)))
    page = request.args.get("page") or "1"
    if not page.isdigit():
        tk.abort(400, tk._("The page must be a number"))
    return {"status": status, "show": show, "status_id": status_id,
            "res_format": (request.args.get("res_format") or "").strip(),
            "sort": sort, "page": int(page),
            "subs": request.args.get("include_sub_organizations") in ("1", "true", "on")}


def _org_scope(group: model.Group, with_subs: bool) -> dict[str, model.Group]:
    """The organization, and with ``with_subs`` its sub-organizations (all
    levels, CKAN's group hierarchy), by id."""
    scope = {group.id: group}
    if with_subs:
        for child in group.get_children_group_hierarchy(type="organization"):
            org = model.Group.get(child[0])
            if org is not None and org.state == "active":
                scope[org.id] = org
    return scope


def _editable(org_ids: Iterable[str]) -> set[str]:
    """The organizations whose datasets this reader may edit (and so have
    re-checked from the report)."""
    user = tk.current_user
    if not user or not user.is_authenticated:
        return set()
    if user.sysadmin:
        return set(org_ids)
    return {org_id for org_id in org_ids if authz.has_user_permission_for_group_or_org(
        org_id, user.name, "update_dataset")}


def report_org(org: str):
    """One organization's broken resources (with
    ``include_sub_organizations=1``, its sub-organizations' too), paginated,
    sortable and filterable; ``?format=csv|json`` streams all the rows."""
    export = _export_format()
    group = _organization_or_404(org)
    reader = viewer()
    no_shared_cache()
    options = config.current()
    f = _filters()
    scope = _org_scope(group, f["subs"])
    org_ids = sorted(scope)
    names = {org_id: o.name for org_id, o in scope.items()}
    query = dict(show=f["show"], status_id=f["status_id"],
                 res_format=f["res_format"] or None)
    if export:
        return stream(
            export, f"broken-links-{group.name}", _row_columns(),
            lambda: (_row_record(row, names) for row in report.iter_resource_rows(
                reader, org_ids, sort=f["sort"], **query)),
            meta={"organization": {"id": group.id, "name": group.name,
                                   "title": group.title},
                  "filters": {"status": f["status"],
                              "res_format": f["res_format"],
                              "sort": f["sort"],
                              "include_sub_organizations": f["subs"]}})

    page_size = options.report_page_size
    count = report.count_resource_rows(reader, org_ids, **query)
    last_page = max((count - 1) // page_size + 1, 1)
    page_number = min(max(f["page"], 1), last_page)
    rows = report.resource_rows(reader, org_ids, sort=f["sort"],
                                limit=page_size,
                                offset=(page_number - 1) * page_size, **query)

    def pager_url(page: int = 1, **_kw: Any) -> str:
        return _report_url(group.name, page=page)

    page = Page(collection=rows, page=page_number, item_count=count,
                items_per_page=page_size, presliced_list=True, url=pager_url)
    facet_rows = report.facets(reader, org_ids)
    has_subs = len(scope) > 1 or bool(
        not f["subs"] and group.get_children_group_hierarchy(type="organization"))
    return tk.render("archiver/report_org.html", {
        "organization": group,
        "rows": rows,
        "page": page,
        "count": count,
        "filters": f,
        "has_sub_organizations": has_subs,
        "organizations": scope,
        "editable_orgs": _editable(org_ids),
        "status_options": _status_options(facet_rows),
        "format_options": _format_options(facet_rows, f),
        "sort_url": lambda sort: _report_url(group.name, sort=sort, page=None),
        "export_url": lambda fmt: _report_url(group.name, format=fmt,
                                              page=None),
        "trend": since_first_check(report.broken_trend(
            reader, org_ids, days=options.report_trend_days, window=options.recheck_days)),
        "trend_window": options.recheck_days,
    })


def _report_url(org_name: str, **changes: Any) -> str:
    """The organization page's URL with the current query string, changed."""
    args = {k: v for k, v in request.args.items() if v}
    args.update(changes)
    args = {k: v for k, v in args.items() if v not in (None, "")}
    base = urls.report_org_url(org_name)
    return base + ("?" + urlencode(args) if args else "")


def _status_options(facet_rows: Iterable[Any]) -> list[dict[str, Any]]:
    """Choices of the status filter, with counts: all broken, each status,
    not sure, web pages."""
    by_status: dict[int, int] = {}
    broken = unsure = web = moved = 0
    for row in facet_rows:
        by_status[row.status_id] = by_status.get(row.status_id, 0) + row.n
        if row.is_broken:
            broken += row.n
        elif row.is_broken is None:
            unsure += row.n
        else:
            web += row.n if row.is_web_page else 0
            moved += row.n if row.moved else 0
    options = [{"value": report.SHOW_BROKEN, "count": broken,
                "text": tk._("All broken links")}]
    for status_id in sorted(by_status):
        options.append({"value": str(status_id), "count": by_status[status_id],
                        "text": tk._(st.text(status_id) or "")})
    options.append({"value": report.SHOW_UNSURE, "count": unsure,
                    "text": tk._("Not sure if broken")})
    options.append({"value": report.SHOW_WEB_PAGE, "count": web,
                    "text": tk._("Link goes to a web page, not a file")})
    options.append({"value": report.SHOW_MOVED, "count": moved,
                    "text": tk._("Link moved (permanent redirect): update it")})
    return options


def _format_options(facet_rows: Iterable[Any],
                    f: dict[str, Any]) -> list[dict[str, Any]]:
    """Choices of the format filter: the formats of the rows the status
    filter selects, with counts."""
    def selected(row: Any) -> bool:
        if f["status_id"] is not None:
            return row.status_id == f["status_id"]
        if f["show"] == report.SHOW_UNSURE:
            return row.is_broken is None
        if f["show"] == report.SHOW_WEB_PAGE:
            return bool(row.is_web_page) and row.is_broken is False
        if f["show"] == report.SHOW_MOVED:
            return bool(row.moved) and row.is_broken is False
        return bool(row.is_broken)

    counts: dict[str, int] = {}
    for row in facet_rows:
        if row.format and selected(row):
            counts[row.format] = counts.get(row.format, 0) + row.n
    return [{"value": fmt, "count": n, "text": fmt.upper()}
            for fmt, n in sorted(counts.items())]


# -- exports -----------------------------------------------------------------

def _row_columns() -> list[str]:
    return ["organization", "dataset", "dataset_title", "private", "dataset_url",
            "resource_id",
            "resource_name", "resource_url", "format", "url", "status_id",
            "status", "is_broken", "reason", "http_status", "first_failure",
            "last_success", "failure_count", "url_redirected_to",
            "is_web_page", "last_checked", "moved_to"]


def _row_record(row: Any, org_names: dict[str, str]) -> dict[str, Any]:
    return {
        "organization": org_names.get(row.owner_org),
        "dataset": row.package_name, "dataset_title": row.package_title,
        "private": bool(row.private),
        "dataset_url": urls.dataset_url(row.package_type, row.package_name,
                                        qualified=True),
        "resource_id": row.resource_id, "resource_name": row.resource_name,
        "resource_url": urls.dataset_url(
            row.package_type, row.package_name, row.resource_id,
            qualified=True),
        "format": row.format, "url": row.url, "status_id": row.status_id,
        "status": st.text(row.status_id), "is_broken": row.is_broken,
        "reason": row.reason, "http_status": row.http_status,
        "first_failure": iso(row.first_failure, offset=True),
        "last_success": iso(row.last_success, offset=True),
        "failure_count": row.failure_count,
        "url_redirected_to": row.url_redirected_to,
        "is_web_page": row.is_web_page, "last_checked": iso(row.last_checked, offset=True),
        "moved_to": row.moved_to,
    }
