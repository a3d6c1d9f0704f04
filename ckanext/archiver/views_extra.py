"""Blueprint ``archiver_extra``: dataset packages and metrics.

* ``archiver_extra.package_zip``      ``/dataset/<id>/archive.zip``
* ``archiver_extra.package_request``  ``POST /dataset/<id>/archive.zip/request``
* ``archiver_extra.metrics``          ``/archiver/metrics`` (Prometheus text)

The zip follows the dataset's read permission. When it is missing or out of
date it is built while the reader waits if the dataset is small
(``package_sync_max_bytes``); for a larger one the last zip built is served,
and when there is none a page offers to mail a link once it is built in the
background (``archiver_package_request``).

``/archiver/metrics`` answers 404 unless ``metrics_enabled``, and 403
without ``X-Archiver-Metrics-Token: <metrics_token>`` (or ``Authorization:
Bearer <metrics_token>``, which CKAN also tries, and fails, as an API
token: it logs an error on every scrape).
"""

from __future__ import annotations

import errno
import hmac
import logging
from typing import Any

import ckan.plugins.toolkit as tk
from ckan import model
from flask import Blueprint, Response, request

from ckanext.archiver import packages, stats

log = logging.getLogger(__name__)

archiver_extra = Blueprint("archiver_extra", __name__)

__all__ = ["archiver_extra"]


def _context() -> dict[str, Any]:
    # imported here: views.py imports this module at its end
    from ckanext.archiver.views import request_context

    return request_context()


def _readable_package_or_abort(id: str) -> model.Package:
    from ckanext.archiver.views import require_access

    require_access("package_show", _context(), id, tk._("Dataset not found"),
                   tk._("Not authorized to see this dataset"))
    package = model.Package.get(id)
    if package is None or package.state == "deleted":
        tk.abort(404, tk._("Dataset not found"))
    return package


# -- packages ----------------------------------------------------------------

def package_zip(id: str):
    """The dataset's archived files and manifest as one zip."""
    package = _readable_package_or_abort(id)
    if package.private:
        request.environ["__no_cache__"] = True
    try:
        wanted = packages.plan(package)
    except ValueError:
        tk.abort(404, tk._("No archived files for this dataset"))
    if not wanted.members:
        tk.abort(404, tk._("No archived files for this dataset"))
    existing = packages.current(package.id)
    fresh = (existing is not None and existing.consistent
             and existing.fingerprint == wanted.fingerprint)
    small = wanted.total_bytes <= int(tk.config.get("ckanext.archiver.package_sync_max_bytes"))
    if not fresh and (small or existing is None):
        if not small:
            return _request_page(package, wanted), 404
        try:
            existing = packages.build(package.id).package
        except packages.NothingToPackage:
            tk.abort(404, tk._("No archived files for this dataset"))
        except OSError as e:
            log.error("Could not build the package of %s: %s", package.name, e)
            if e.errno == errno.ENOSPC:
                tk.abort(503, tk._("The archive is full: the zip cannot be made now"))
            raise
    from ckanext.archiver.views import serve_archive_file

    return serve_archive_file(existing.path, "application/zip", existing.etag or True,
                              f"{package.name}.zip")


def _request_page(package: model.Package, wanted: packages.Plan) -> str:
    user = tk.current_user
    return tk.render("archiver/extra/package_request.html", {
        "pkg": package, "size": wanted.total_bytes, "files": len(wanted.members),
        "logged_in": bool(user and user.is_authenticated),
        "has_email": bool(user and user.is_authenticated and user.email),
    })


def package_request(id: str):
    """Form of the request page: queue the build, mail a link when ready."""
    from ckanext.archiver.views import require_csrf_token

    require_csrf_token()
    package = _readable_package_or_abort(id)
    try:
        tk.get_action("archiver_package_request")(_context(), {"id": package.id})
    except tk.NotAuthorized:
        tk.abort(403, tk._("Log in, with an email address in your profile, to ask for it"))
    except tk.ObjectNotFound:
        tk.abort(404, tk._("Dataset not found"))
    except tk.ValidationError as e:
        tk.h.flash_error(tk._("Could not ask for the zip: {error}").format(
            error="; ".join(str(v) for v in (e.error_dict or {}).values()) or str(e)))
    except Exception:  # the broker is down
        log.exception("archiver_package_request failed for %s", package.name)
        tk.h.flash_error(tk._("Could not ask for the zip, please try again later"))
    else:
        tk.h.flash_success(tk._("The zip is being prepared: we will email you a link "
                                "when it is ready."))
    return tk.redirect_to(f"{package.type or 'dataset'}.read", id=package.name)


# -- metrics ---------------------------------------------------------------

METRICS_TOKEN_HEADER = "X-Archiver-Metrics-Token"


def _token_ok(expected: str) -> bool:
    given = request.headers.get(METRICS_TOKEN_HEADER)
    if given is None:
        scheme, _, given = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
    return bool(expected) and hmac.compare_digest(given.strip().encode("utf-8"),
                                                  expected.encode("utf-8"))


def metrics():
    """Prometheus text: 404 unless enabled, 403 without the right token."""
    if not tk.config.get("ckanext.archiver.metrics_enabled"):
        tk.abort(404)
    request.environ["__no_cache__"] = True
    if not _token_ok(tk.config.get("ckanext.archiver.metrics_token") or ""):
        return Response("Forbidden\n", status=403, mimetype="text/plain")
    response = Response(stats.prometheus_text(), status=200)
    response.headers["Content-Type"] = stats.PROMETHEUS_CONTENT_TYPE
    response.headers["Cache-Control"] = "no-store"
    return response


archiver_extra.add_url_rule("/dataset/<id>/archive.zip", view_func=package_zip,
                            endpoint="package_zip")
archiver_extra.add_url_rule("/dataset/<id>/archive.zip/request", view_func=package_request,
                            endpoint="package_request", methods=["POST"])
archiver_extra.add_url_rule("/archiver/metrics", view_func=metrics, endpoint="metrics")
