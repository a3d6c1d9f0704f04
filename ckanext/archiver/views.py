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
from flask import Blueprint, Response, redirect, request, send_file, stream_with_context

from ckanext.archiver import backends
from ckanext.archiver import status as st
from ckanext.archiver.helpers import archiver_dataset_url
from ckanext.archiver.model import Archival, report
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
                   not_found: str, forbidden: str) -> None:
    """``check_access`` for a view: 404 or 403 with the given messages."""
    try:
        tk.check_access(action, context, {"id": object_id})
    except tk.ObjectNotFound:
        tk.abort(404, not_found)
    except tk.NotAuthorized:
        tk.abort(403, forbidden)


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


def report_index():
    """Broken links per organization, worst first, with site totals."""
    export = _export_format()
    viewer = _viewer()
    _no_shared_cache()
    if export:
        return _stream(export, "broken-links", _index_columns(),
                       lambda: _index_records(viewer), meta={})
    summaries = report.organization_summaries(viewer)
    return tk.render("archiver/report_index.html", {
        "summaries": summaries,
        "totals": report.totals(summaries),
        "trend": report.broken_trend(viewer, days=_trend_days(),
                                     window=_trend_window()),
        "trend_window": _trend_window(),
    })


def _index_columns() -> list[str]:
    return ["organization", "title", "datasets", "broken_datasets",
            "broken_datasets_percent", "resources", "broken_resources",
            "broken_resources_percent"]


def _index_records(viewer: report.Viewer) -> Iterator[dict[str, Any]]:
    for s in report.organization_summaries(viewer):
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
    viewer = _viewer()
    _no_shared_cache()
    f = _filters()
    query = dict(show=f["show"], status_id=f["status_id"],
                 res_format=f["res_format"] or None)
    if export:
        return _stream(
            export, f"broken-links-{group.name}", _row_columns(),
            lambda: (_row_record(row) for row in report.iter_resource_rows(
                viewer, group.id, sort=f["sort"], **query)),
            meta={"organization": {"id": group.id, "name": group.name,
                                   "title": group.title},
                  "filters": {"status": f["status"],
                              "res_format": f["res_format"],
                              "sort": f["sort"]}})

    page_size = max(tk.config.get("ckanext.archiver.report_page_size"), 1)
    count = report.count_resource_rows(viewer, group.id, **query)
    last_page = max((count - 1) // page_size + 1, 1)
    try:
        page_number = min(max(int(request.args.get("page", 1)), 1), last_page)
    except ValueError:
        page_number = 1
    rows = report.resource_rows(viewer, group.id, sort=f["sort"],
                                limit=page_size,
                                offset=(page_number - 1) * page_size, **query)

    def pager_url(page: int = 1, **_kw: Any) -> str:
        return _report_url(group.name, page=page)

    page = Page(collection=rows, page=page_number, item_count=count,
                items_per_page=page_size, presliced_list=True, url=pager_url)
    facet_rows = report.facets(viewer, group.id)
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
        "trend": report.broken_trend(viewer, group.id, days=_trend_days(),
                                     window=_trend_window()),
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
        "is_web_page": row.is_web_page, "last_checked": _iso(row.updated),
    }


def _iso(value: Optional[datetime.datetime]) -> Optional[str]:
    return value.isoformat() if value else None


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
    """The cached copy of a resource, with the dataset's read permission."""
    require_access("resource_show", _context(), resource_id, tk._("Resource not found"),
                   tk._("Not authorized to see this resource"))
    resource = model.Resource.get(resource_id)
    package = model.Package.get(id)
    if (resource is None or package is None or resource.state != "active"
            or package.state == "deleted" or resource.package_id != package.id):
        tk.abort(404, tk._("Resource not found"))
    archival = Archival.get_for_resource(resource.id)
    key = backends.store_key(archival.cache_filepath) if archival else None
    path = _cached_file(archival, filename) if archival and key is None else None
    if path is None and key is None:
        tk.abort(404, tk._("No cached copy of this resource"))

    if package.private:
        request.environ["__no_cache__"] = True
    mimetype = (archival.mimetype or mimetypes.guess_type(filename)[0]
                or "application/octet-stream")
    if key is not None:
        return _redirect_to_store(key, filename, mimetype)
    response = serve_archive_file(path, mimetype, archival.sha256 or True, filename)
    # Bytes from somebody else's server, on the portal's origin: never let
    # a browser run them as a page of the portal.
    response.headers["Content-Security-Policy"] = "sandbox"
    return response


def _redirect_to_store(key: str, filename: str, mimetype: str) -> Response:
    """302 to a presigned GET of the object (valid ``s3_presign_seconds``),
    answering with the download name and type; Range goes to the store."""
    store = backends.store()
    if not isinstance(store, backends.S3Store) or key.rsplit("/", 1)[-1] != filename:
        tk.abort(404, tk._("No cached copy of this resource"))
    try:
        url = store.presigned_get(key, _content_disposition(filename), mimetype)
    except backends.StoreError as e:
        log.error("Cached copy %s: %s", key, e)
        tk.abort(503, tk._("The archive store is not available, please try again later"))
    response = redirect(url, code=302)
    response.headers["Cache-Control"] = "no-store"  # the URL expires; never cache it
    response.headers["Referrer-Policy"] = "no-referrer"
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
            result = action(context, {"id": resource_id or package.id,
                                      "queue": "priority"})
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
