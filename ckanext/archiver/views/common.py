"""What the archiver's views share: who is reading (an action context, the
report's :class:`~ckanext.archiver.model.report.Viewer`), access checks that
answer 404/403, our own CSRF check for POST views, cache headers, and
serving a file of the archive (or, S3 mode, a redirect to a presigned GET
of its object)."""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import quote

import ckan.plugins.toolkit as tk
from ckan import model
from flask import Response, current_app, redirect, request, send_file
from flask_wtf.csrf import validate_csrf
from wtforms import ValidationError

from ckanext.archiver import config
from ckanext.archiver.engine.sink import StoreError
from ckanext.archiver.engine.store_s3 import S3Store
from ckanext.archiver.model import active_dataset, report

__all__ = ["request_context", "require_access", "require_csrf_token", "viewer",
           "no_shared_cache", "content_disposition", "readable_package_or_abort",
           "serve_archive_file", "redirect_to_object"]

log = logging.getLogger(__name__)


def request_context() -> dict[str, Any]:
    """An action context for the user of this request."""
    user = tk.current_user
    name = user.name if user and user.is_authenticated else None
    return {"user": name, "auth_user_obj": user if name else None}


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


def readable_package_or_abort(id: str) -> model.Package:
    require_access("package_show", request_context(), id, tk._("Dataset not found"),
                   tk._("Not authorized to see this dataset"))
    package = active_dataset(id)
    if package is None:
        tk.abort(404, tk._("Dataset not found"))
    return package


def viewer() -> report.Viewer:
    user = tk.current_user
    if not user or not user.is_authenticated:
        return report.ANONYMOUS
    if user.sysadmin:
        return report.Viewer(sysadmin=True)
    orgs = tk.get_action("organization_list_for_user")(
        request_context(), {"id": user.id, "permission": "read",
                     "include_dataset_count": False})
    return report.Viewer(
        org_ids=tuple(sorted(o["id"] for o in orgs)), user_id=user.id,
        collaborators=config.current().allow_dataset_collaborators)


def no_shared_cache() -> None:
    """What a reader sees depends on who they are: keep shared caches out
    (CKAN marks responses public unless told otherwise)."""
    request.environ["__limit_cache_by_cookie__"] = True
    if tk.current_user and tk.current_user.is_authenticated:
        request.environ["__no_cache__"] = True


def require_csrf_token() -> None:
    """Check a browser form's CSRF token ourselves: CKAN 2.12 exempts a view
    from its CSRF protection for good once an anonymous or API-token request
    has reached it, which would leave our POST views open."""
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


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    fallback = "".join(
        c if 32 <= ord(c) < 127 and c not in '"\\%' else "_" for c in filename)
    return (f'{disposition}; filename="{fallback}"; '
            f"filename*=UTF-8''{quote(filename, safe='')}")


def serve_archive_file(path: str, mimetype: str, etag: Any, download_name: str) -> Response:
    """A file of ``archive_dir`` as ``serve_with`` says: streamed by Flask
    (Range, ETag, conditional requests) or handed to the front server with
    ``X-Accel-Redirect`` / ``X-Sendfile``."""
    options = config.current()
    serve_with = options.serve_with
    if serve_with in ("x-accel-redirect", "x-sendfile"):
        response = Response(status=200, mimetype=mimetype)
        if serve_with == "x-accel-redirect":
            relative = os.path.relpath(path, os.path.realpath(options.archive_dir))
            prefix = options.x_accel_prefix
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
    response.headers["Content-Disposition"] = content_disposition(download_name)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def redirect_to_object(store: S3Store, key: str, download_name: str,
                       mimetype: str) -> Response:
    """302 to a presigned GET of the object (valid ``s3_presign_seconds``),
    answering with the download name and type; Range goes to the store.
    Call it only after the read-permission check."""
    try:
        url = store.presigned_get(key, content_disposition(download_name), mimetype)
    except StoreError as e:
        log.error("Presigning %s: %s", key, e)
        tk.abort(503, tk._("The archive store is not available, please try again later"))
    response = redirect(url, code=302)
    response.headers["Cache-Control"] = "no-store"  # the URL expires; never cache it
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
