"""Blueprint of the archiver: broken-links report and cached copies.

* ``archiver.report_index``  ``/report/broken-links``
* ``archiver.report_org``    ``/report/broken-links/<org>``
* ``archiver.cached_copy``   ``/dataset/<id>/resource/<resource_id>/archive/<filename>``
* ``archiver.check_now``     ``POST /dataset/<id>/archiver/check``

The report pages answer ``?format=csv`` and ``?format=json`` with the same
rows, streamed. Everything a reader sees follows the datasets' read
permission: anonymous readers count public datasets only, members their
organizations' private ones too, sysadmins everything.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import logging
import mimetypes
import os
from typing import Any, Callable, Iterable, Iterator, Optional
from urllib.parse import quote, urlencode

import ckan.plugins.toolkit as tk
from ckan import model
from ckan.lib.pagination import Page
from flask import Blueprint, Response, request, send_file, stream_with_context

from ckanext.archiver import status as st
from ckanext.archiver.helpers import archiver_dataset_url
from ckanext.archiver.model import Archival, report
from ckanext.archiver.model.trend import since_first_check
from ckanext.archiver.tasks import archive_dir

log = logging.getLogger(__name__)

archiver = Blueprint("archiver", __name__)

__all__ = ["archiver", "archiver_extra"]  # blanket.blueprints registers everything listed here

EXPORT_FORMATS = ("csv", "json")


# -- helpers shared with the worker ------------------------------------------

def cached_copy_url(package_id: str, resource_id: str, filename: str) -> str:
    """Absolute URL of a cached copy served by CKAN (``archiver.cached_copy``).

    Built from ``ckan.site_url`` and ``ckan.root_path`` only, so that it works
    without a request context (the Celery worker calls it to fill
    ``archival.cache_url`` when ``cache_url_root`` is empty).
    """
    site = (tk.config.get("ckan.site_url") or "").rstrip("/")
    root = (tk.config.get("ckan.root_path") or "").replace("{{LANG}}", "")
    root = "".join("/" + part for part in root.split("/") if part)
    return (f"{site}{root}/dataset/{quote(package_id, safe='')}"
            f"/resource/{quote(resource_id, safe='')}"
            f"/archive/{quote(filename, safe='')}")


# -- who is reading ------------------------------------------------------

def request_context() -> dict[str, Any]:
    """An action context for the user of this request."""
    user = tk.current_user
    name = user.name if user and user.is_authenticated else None
    return {"user": name, "auth_user_obj": user if name else None}


_context = request_context


def require_access(action: str, context: dict[str, Any], object_id: str,
                   not_found: str, forbidden: str, forbidden_status: int = 403) -> None:
    """``check_access`` for a view: 404 or ``forbidden_status`` (403 unless
    said) with the given messages."""
    try:
        tk.check_access(action, context, {"id": object_id})
    except tk.ObjectNotFound:
        tk.abort(404, not_found)
    except tk.NotAuthorized:
        tk.abort(forbidden_status, forbidden)


def _viewer() -> report.Viewer:
    user = tk.current_user
    if not user or not user.is_authenticated:
        return report.ANONYMOUS
    if user.sysadmin:
        return report.Viewer(sysadmin=True)
    orgs = tk.get_action("organization_list_for_user")(
        _context(), {"id": user.id, "permission": "read",
                     "include_dataset_count": False})
    return report.Viewer(
        org_ids=tuple(sorted(o["id"] for o in orgs)), user_id=user.id,
        collaborators=bool(tk.config.get(
            "ckan.auth.allow_dataset_collaborators")))


def _no_shared_cache() -> None:
    """What a reader sees depends on who they are: keep shared caches out
    (CKAN marks responses public unless told otherwise)."""
    request.environ["__limit_cache_by_cookie__"] = True
    if tk.current_user and tk.current_user.is_authenticated:
        request.environ["__no_cache__"] = True


# -- report ----------------------------------------------------------------

def _trend_days() -> int:
    return tk.config.get("ckanext.archiver.report_trend_days")


def _trend_window() -> int:
    return tk.config.get("ckanext.archiver.recheck_days")


def _export_format() -> Optional[str]:
    wanted = (request.args.get("format") or "").lower()
    if wanted and wanted not in EXPORT_FORMATS:
        tk.abort(400, tk._("Unknown format: choose csv or json"))
    return wanted or None


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
    viewer = _viewer()
    _no_shared_cache()
    if export:
        return _stream(export, "broken-links", _index_columns(),
                       lambda: _index_records(viewer, sort), meta={})
    summaries = report.organization_summaries(viewer)
    return tk.render("archiver/report_index.html", {
        "summaries": _sorted_summaries(summaries, sort),
        "sort": sort or "",
        "totals": report.totals(summaries),
        "trend": since_first_check(report.broken_trend(
            viewer, days=_trend_days(), window=_trend_window())),
        "trend_window": _trend_window(),
    })


def _index_columns() -> list[str]:
    return ["organization", "title", "datasets", "broken_datasets",
            "broken_datasets_percent", "resources", "broken_resources",
            "broken_resources_percent"]


def _index_records(viewer: report.Viewer,
                   sort: Optional[str] = None) -> Iterator[dict[str, Any]]:
    for s in _sorted_summaries(report.organization_summaries(viewer), sort):
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
        tk.check_access("organization_show", _context(), {"id": group.id})
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
    from ckan import authz

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
    viewer = _viewer()
    _no_shared_cache()
    f = _filters()
    scope = _org_scope(group, f["subs"])
    org_ids = sorted(scope)
    names = {org_id: o.name for org_id, o in scope.items()}
    query = dict(show=f["show"], status_id=f["status_id"],
                 res_format=f["res_format"] or None)
    if export:
        return _stream(
            export, f"broken-links-{group.name}", _row_columns(),
            lambda: (_row_record(row, names) for row in report.iter_resource_rows(
                viewer, org_ids, sort=f["sort"], **query)),
            meta={"organization": {"id": group.id, "name": group.name,
                                   "title": group.title},
                  "filters": {"status": f["status"],
                              "res_format": f["res_format"],
                              "sort": f["sort"],
                              "include_sub_organizations": f["subs"]}})

    page_size = max(tk.config.get("ckanext.archiver.report_page_size"), 1)
    count = report.count_resource_rows(viewer, org_ids, **query)
    last_page = max((count - 1) // page_size + 1, 1)
    page_number = min(max(f["page"], 1), last_page)
    rows = report.resource_rows(viewer, org_ids, sort=f["sort"],
                                limit=page_size,
                                offset=(page_number - 1) * page_size, **query)

    def pager_url(page: int = 1, **_kw: Any) -> str:
        return _report_url(group.name, page=page)

    page = Page(collection=rows, page=page_number, item_count=count,
                items_per_page=page_size, presliced_list=True, url=pager_url)
    facet_rows = report.facets(viewer, org_ids)
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
            viewer, org_ids, days=_trend_days(), window=_trend_window())),
        "trend_window": _trend_window(),
    })


def _report_url(org_name: str, **changes: Any) -> str:
    """The organization page's URL with the current query string, changed."""
    args = {k: v for k, v in request.args.items() if v}
    args.update(changes)
    args = {k: v for k, v in args.items() if v not in (None, "")}
    base = tk.h.url_for("archiver.report_org", org=org_name)
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
        "dataset_url": archiver_dataset_url(row.package_type, row.package_name,
                                            qualified=True),
        "resource_id": row.resource_id, "resource_name": row.resource_name,
        "resource_url": archiver_dataset_url(
            row.package_type, row.package_name, row.resource_id,
            qualified=True),
        "format": row.format, "url": row.url, "status_id": row.status_id,
        "status": st.text(row.status_id), "is_broken": row.is_broken,
        "reason": row.reason, "http_status": row.http_status,
        "first_failure": _iso(row.first_failure),
        "last_success": _iso(row.last_success),
        "failure_count": row.failure_count,
        "url_redirected_to": row.url_redirected_to,
        "is_web_page": row.is_web_page, "last_checked": _iso(row.last_checked),
        "moved_to": row.moved_to,
    }


def _iso(value: Optional[datetime.datetime]) -> Optional[str]:
    """ISO 8601 with the UTC offset (stored times are naive UTC)."""
    if not value:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.isoformat()


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
        body, content_type = csv_body(), "text/csv; charset=utf-8"
    else:
        body, content_type = json_body(), "application/json"
    # content_type, not mimetype: Flask would add a second charset
    response = Response(stream_with_context(body), content_type=content_type)
    if fmt == "csv":
        response.headers["Content-Disposition"] = _content_disposition(
            f"{basename}.csv")
    return response


# -- cached copies -------------------------------------------------------

def _content_disposition(filename: str, disposition: str = "attachment") -> str:
    fallback = "".join(
        c if 32 <= ord(c) < 127 and c not in '"\\%' else "_" for c in filename)
    return (f'{disposition}; filename="{fallback}"; '
            f"filename*=UTF-8''{quote(filename, safe='')}")


def _cached_file(archival: Archival, filename: str) -> Optional[str]:
    """The real path of the archival's cached file when it is a file inside
    archive_dir named ``filename``; None otherwise."""
    root = archive_dir()
    if not archival.cache_filepath or not root:
        return None
    root = os.path.realpath(root)
    path = archival.cache_filepath
    if not os.path.isabs(path):
        path = os.path.join(root, path)
    path = os.path.realpath(path)
    if path == root or os.path.commonpath([path, root]) != root:
        return None
    if os.path.basename(path) != filename or not os.path.isfile(path):
        return None
    return path


def cached_copy(id: str, resource_id: str, filename: str):
    """The cached copy of a resource, with the dataset's read permission
    (404 for a reader who may not see it, as for the dataset page)."""
    require_access("resource_show", _context(), resource_id, tk._("Resource not found"),
                   tk._("Resource not found"), forbidden_status=404)
    resource = model.Resource.get(resource_id)
    package = model.Package.get(id)
    if (resource is None or package is None or resource.state != "active"
            or package.state == "deleted" or resource.package_id != package.id):
        tk.abort(404, tk._("Resource not found"))
    archival = Archival.get_for_resource(resource.id)
    path = _cached_file(archival, filename) if archival else None
    if path is None:
        tk.abort(404, tk._("No cached copy of this resource"))

    if package.private:
        request.environ["__no_cache__"] = True
    mimetype = (archival.mimetype or mimetypes.guess_type(filename)[0]
                or "application/octet-stream")
    response = serve_archive_file(path, mimetype, archival.sha256 or True, filename)
    # Bytes from somebody else's server, on the portal's origin: never let
    # a browser run them as a page of the portal.
    response.headers["Content-Security-Policy"] = "sandbox"
    return response


def serve_archive_file(path: str, mimetype: str, etag: Any, download_name: str) -> Response:
    """A file of ``archive_dir`` as ``serve_with`` says: streamed by Flask
    (Range, ETag, conditional requests) or handed to the front server with
    ``X-Accel-Redirect`` / ``X-Sendfile``."""
    serve_with = tk.config.get("ckanext.archiver.serve_with")
    if serve_with in ("x-accel-redirect", "x-sendfile"):
        response = Response(status=200, mimetype=mimetype)
        if serve_with == "x-accel-redirect":
            relative = os.path.relpath(path, os.path.realpath(archive_dir()))
            prefix = tk.config.get("ckanext.archiver.x_accel_prefix") or ""
            response.headers["X-Accel-Redirect"] = (
                prefix.rstrip("/") + "/" + quote(relative.replace(os.sep, "/")))
        else:
            # Raw bytes of the path, as WSGI headers carry them.
            response.headers["X-Sendfile"] = path.encode("utf-8").decode("latin-1")
    else:
        response = send_file(path, mimetype=mimetype, conditional=True, etag=etag)
        # werkzeug's conditional responses set Date, and the WSGI server
        # (werkzeug, gunicorn, waitress) adds its own: keep the server's, as
        # on every other CKAN page
        response.headers.pop("Date", None)
    response.headers["Content-Disposition"] = _content_disposition(download_name)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


# -- check now -------------------------------------------------------------

def require_csrf_token() -> None:
    """Check a browser form's CSRF token ourselves: CKAN 2.12 exempts a view
    from its CSRF protection for good once an anonymous or API-token request
    has reached it, which would leave our POST views open."""
    from flask import current_app
    from flask_wtf.csrf import validate_csrf
    from wtforms import ValidationError

    if not current_app.config.get("WTF_CSRF_ENABLED", True):
        return
    if request.headers.get(tk.config.get("apitoken_header_name") or "Authorization"):
        return  # an API client: no cookie, nothing to forge
    field = current_app.config.get("WTF_CSRF_FIELD_NAME") or "_csrf_token"
    try:
        validate_csrf(request.form.get(field))
    except ValidationError:
        tk.abort(400, tk._("The form has expired or is not valid: reload the page "
                           "and try again"))


def _report_came_from(value: Optional[str]) -> Optional[str]:
    """A "Check now" from a report row goes back to that report page: only
    a path of the report itself is accepted (never an open redirect)."""
    if not value:
        return None
    base = tk.h.url_for("archiver.report_index")
    if not value.startswith(base) or "//" in value or "\\" in value \
            or any(ord(c) < 32 for c in value):
        return None
    rest = value[len(base):]
    return value if rest == "" or rest[0] in "/?" else None


def check_now(id: str):
    """Queue the dataset (or the form's ``resource_id``) for checking on the
    priority queue, then go back to its page."""
    require_csrf_token()
    context = _context()
    require_access("package_update", context, id, tk._("Dataset not found"),
                   tk._("Not authorized to check this dataset"))
    package = model.Package.get(id)
    if package is None or package.state == "deleted":
        tk.abort(404, tk._("Dataset not found"))
    resource_id = (request.form.get("resource_id") or "").strip() or None
    if resource_id:
        resource = model.Resource.get(resource_id)
        if (resource is None or resource.package_id != package.id
                or resource.state != "active"):
            tk.abort(404, tk._("Resource not found"))
    try:
        action = tk.get_action("archiver_update")
    except KeyError:
        tk.h.flash_error(tk._("Checking links is not available on this site"))
    else:
        try:
            # an explicit check always contacts the server (no freshness skip)
            result = action(context, {"id": resource_id or package.id,
                                      "queue": "priority", "force": True})
        except tk.NotAuthorized:
            tk.abort(403, tk._("Not authorized to check this dataset"))
        except (tk.ValidationError, tk.ObjectNotFound) as e:
            tk.h.flash_error(tk._("Could not queue the check: {error}").format(
                error=getattr(e, "message", None) or str(e)))
        except Exception:  # the broker is down: say so, do not crash
            log.exception("archiver_update failed for %s",
                          resource_id or package.id)
            tk.h.flash_error(tk._("Could not queue the check, please try "
                                  "again later"))
        else:
            if isinstance(result, dict) and result.get("queued") == 0:
                tk.h.flash_notice(tk._("Already waiting in the queue for "
                                       "checking"))
            else:
                tk.h.flash_success(tk._("Queued for checking"))
    back = _report_came_from(request.form.get("came_from"))
    if back:
        return tk.redirect_to(back)
    dataset_type = package.type or "dataset"
    if resource_id:
        return tk.redirect_to(f"{dataset_type}_resource.read", id=package.name,
                              resource_id=resource_id)
    return tk.redirect_to(f"{dataset_type}.read", id=package.name)


archiver.add_url_rule("/report/broken-links", view_func=report_index,
                      endpoint="report_index")
archiver.add_url_rule("/report/broken-links/<org>", view_func=report_org,
                      endpoint="report_org")
archiver.add_url_rule(
    "/dataset/<id>/resource/<resource_id>/archive/<filename>",
    view_func=cached_copy, endpoint="cached_copy")
archiver.add_url_rule("/dataset/<id>/archiver/check", view_func=check_now,
                      endpoint="check_now", methods=["POST"])
from ckanext.archiver.views_extra import archiver_extra  # noqa: E402
