"""The broken-links report: ``archiver.report_index``
(``/report/broken-links``) and ``archiver.report_org``
(``/report/broken-links/<org>``), as HTML pages or, with ``?format=csv`` and
``?format=json``, the same rows streamed. Everything a reader sees follows
the datasets' read permission: anonymous readers count public datasets only,
members their organizations' private ones too, sysadmins everything."""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Callable, Iterable, Iterator, Optional
from urllib.parse import urlencode

import ckan.plugins.toolkit as tk
from ckan import model
from ckan.lib.pagination import Page
from flask import Response, request, stream_with_context

from ckanext.archiver import config, urls
from ckanext.archiver import status as st
from ckanext.archiver.model import iso, report
from ckanext.archiver.views.common import (
    content_disposition,
    no_shared_cache,
    request_context,
    viewer,
)

__all__ = ["report_index", "report_org", "EXPORT_FORMATS"]

EXPORT_FORMATS = ("csv", "json")




def _export_format() -> Optional[str]:
    wanted = (request.args.get("format") or "").lower()
    if wanted and wanted not in EXPORT_FORMATS:
        tk.abort(400, tk._("Unknown format: choose csv or json"))
    return wanted or None


def report_index():
    """Broken links per organization, worst first, with site totals."""
    export = _export_format()
    reader = viewer()
    no_shared_cache()
    options = config.current()
    if export:
        return _stream(export, "broken-links", _index_columns(),
                       lambda: _index_records(reader), meta={})
    summaries = report.organization_summaries(reader)
    return tk.render("archiver/report_index.html", {
        "summaries": summaries,
        "totals": report.totals(summaries),
        "trend": report.broken_trend(reader, days=options.report_trend_days,
                                     window=options.recheck_days),
        "trend_window": options.recheck_days,
    })


def _index_columns() -> list[str]:
    return ["organization", "title", "datasets", "broken_datasets",
            "broken_datasets_percent", "resources", "broken_resources",
            "broken_resources_percent"]


def _index_records(reader: report.Viewer) -> Iterator[dict[str, Any]]:
    for s in report.organization_summaries(reader):
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
    """The organization page's filters from the query string (anything
    unknown falls back to the default)."""
    status = (request.args.get("status") or report.SHOW_BROKEN).strip()
    show, status_id = report.SHOW_BROKEN, None
    if status in (report.SHOW_UNSURE, report.SHOW_WEB_PAGE):
        show = status
    elif status.isdigit() and int(status) < 2 ** 31:
        status_id = int(status)
    else:
        status = report.SHOW_BROKEN
    sort = request.args.get("sort") or report.DEFAULT_SORT
    if sort not in report.SORTS:
        sort = report.DEFAULT_SORT
    return {"status": status, "show": show, "status_id": status_id,
            "res_format": (request.args.get("res_format") or "").strip(),
            "sort": sort}


def report_org(org: str):
    """One organization's broken resources, paginated, sortable and
    filterable; ``?format=csv|json`` streams all the rows."""
    export = _export_format()
    group = _organization_or_404(org)
    reader = viewer()
    no_shared_cache()
    options = config.current()
    f = _filters()
    query = dict(show=f["show"], status_id=f["status_id"],
                 res_format=f["res_format"] or None)
    if export:
        return _stream(
            export, f"broken-links-{group.name}", _row_columns(),
            lambda: (_row_record(row) for row in report.iter_resource_rows(
                reader, group.id, sort=f["sort"], **query)),
            meta={"organization": {"id": group.id, "name": group.name,
                                   "title": group.title},
                  "filters": {"status": f["status"],
                              "res_format": f["res_format"],
                              "sort": f["sort"]}})

    page_size = options.report_page_size
    count = report.count_resource_rows(reader, group.id, **query)
    last_page = max((count - 1) // page_size + 1, 1)
    try:
        page_number = min(max(int(request.args.get("page", 1)), 1), last_page)
    except ValueError:
        page_number = 1
    rows = report.resource_rows(reader, group.id, sort=f["sort"],
                                limit=page_size,
                                offset=(page_number - 1) * page_size, **query)

    def pager_url(page: int = 1, **_kw: Any) -> str:
        return _report_url(group.name, page=page)

    page = Page(collection=rows, page=page_number, item_count=count,
                items_per_page=page_size, presliced_list=True, url=pager_url)
    facet_rows = report.facets(reader, group.id)
    return tk.render("archiver/report_org.html", {
        "organization": group,
        "rows": rows,
        "page": page,
        "count": count,
        "filters": f,
        "status_options": _status_options(facet_rows),
        "format_options": _format_options(facet_rows, f),
        "sort_url": lambda sort: _report_url(group.name, sort=sort, page=None),
        "export_url": lambda fmt: _report_url(group.name, format=fmt,
                                              page=None),
        "trend": report.broken_trend(reader, group.id, days=options.report_trend_days,
                                     window=options.recheck_days),
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
    broken = unsure = web = 0
    for row in facet_rows:
        by_status[row.status_id] = by_status.get(row.status_id, 0) + row.n
        if row.is_broken:
            broken += row.n
        elif row.is_broken is None:
            unsure += row.n
        elif row.is_web_page:
            web += row.n
    options = [{"value": report.SHOW_BROKEN, "count": broken,
                "text": tk._("All broken links")}]
    for status_id in sorted(by_status):
        options.append({"value": str(status_id), "count": by_status[status_id],
                        "text": tk._(st.text(status_id) or "")})
    options.append({"value": report.SHOW_UNSURE, "count": unsure,
                    "text": tk._("Not sure if broken")})
    options.append({"value": report.SHOW_WEB_PAGE, "count": web,
                    "text": tk._("Link goes to a web page, not a file")})
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
        return bool(row.is_broken)

    counts: dict[str, int] = {}
    for row in facet_rows:
        if row.format and selected(row):
            counts[row.format] = counts.get(row.format, 0) + row.n
    return [{"value": fmt, "count": n, "text": fmt.upper()}
            for fmt, n in sorted(counts.items())]


# -- exports -----------------------------------------------------------------

def _row_columns() -> list[str]:
    return ["dataset", "dataset_title", "dataset_url", "resource_id",
            "resource_name", "resource_url", "format", "url", "status_id",
            "status", "is_broken", "reason", "http_status", "first_failure",
            "last_success", "failure_count", "url_redirected_to",
            "is_web_page", "last_checked"]


def _row_record(row: Any) -> dict[str, Any]:
    return {
        "dataset": row.package_name, "dataset_title": row.package_title,
        "dataset_url": urls.dataset_url(row.package_type, row.package_name,
                                        qualified=True),
        "resource_id": row.resource_id, "resource_name": row.resource_name,
        "resource_url": urls.dataset_url(
            row.package_type, row.package_name, row.resource_id,
            qualified=True),
        "format": row.format, "url": row.url, "status_id": row.status_id,
        "status": st.text(row.status_id), "is_broken": row.is_broken,
        "reason": row.reason, "http_status": row.http_status,
        "first_failure": iso(row.first_failure),
        "last_success": iso(row.last_success),
        "failure_count": row.failure_count,
        "url_redirected_to": row.url_redirected_to,
        "is_web_page": row.is_web_page, "last_checked": iso(row.updated),
    }


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    """Spreadsheet programs run cells that start like a formula: defuse
    text from publishers (names, reasons) with a leading quote."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    if value is None:
        return ""
    return value


def _stream(fmt: str, basename: str, columns: list[str],
            records: Callable[[], Iterable[dict[str, Any]]],
            meta: dict[str, Any]) -> Response:
    """A streamed CSV or JSON response. ``records`` is called inside the
    response's generator: the query runs while the body is sent, one
    server-side cursor batch at a time."""

    def csv_body() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        try:
            for n, record in enumerate(records(), 1):
                writer.writerow([_csv_cell(record.get(c)) for c in columns])
                if n % 200 == 0:
                    yield buffer.getvalue()
                    buffer.seek(0)
                    buffer.truncate()
            yield buffer.getvalue()
        finally:
            model.Session.remove()

    def json_body() -> Iterator[str]:
        head = json.dumps(meta)[:-1]
        yield (head + ", " if meta else "{") + '"rows": ['
        try:
            for n, record in enumerate(records()):
                yield ("," if n else "") + "\n" + json.dumps(record)
        finally:
            model.Session.remove()
        yield "\n]}\n"

    if fmt == "csv":
        body, mimetype = csv_body(), "text/csv; charset=utf-8"
    else:
        body, mimetype = json_body(), "application/json"
    response = Response(stream_with_context(body), mimetype=mimetype)
    if fmt == "csv":
        response.headers["Content-Disposition"] = content_disposition(
            f"{basename}.csv")
    return response
