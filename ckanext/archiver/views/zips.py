"""Dataset zips: ``archiver_extra.package_zip`` (``/dataset/<id>/archive.zip``)
and ``archiver_extra.package_request`` (``POST /dataset/<id>/archive.zip/request``).

The zip follows the dataset's read permission. When it is missing or out of
date it is built while the reader waits if the dataset is small
(``package_sync_max_bytes``); for a larger one the last zip built is served,
and when there is none a page offers to mail a link once it is built in the
background (``archiver_package_request``). In S3 mode the zip is an object
of the bucket: the answer is a 302 to a short-lived presigned GET of it.
"""

from __future__ import annotations

import errno
import logging

import ckan.plugins.toolkit as tk
from ckan import model
from flask import request

from ckanext.archiver import config, urls
from ckanext.archiver.engine.sink import StoreError
from ckanext.archiver.views.common import (
    readable_package_or_abort,
    redirect_to_object,
    request_context,
    require_csrf_token,
    serve_archive_file,
)
from ckanext.archiver.worker import zips
from ckanext.archiver.worker.services import storage

__all__ = ["package_zip", "package_request"]

log = logging.getLogger(__name__)


def package_zip(id: str):
    """The dataset's archived files and manifest as one zip."""
    package = readable_package_or_abort(id)
    if package.private:
        request.environ["__no_cache__"] = True
    try:
        wanted = zips.plan(package)
    except ValueError:
        tk.abort(404, tk._("No archived files for this dataset"))
    if not wanted.members:
        tk.abort(404, tk._("No archived files for this dataset"))
    try:
        existing = zips.built_zip(package.id)
    except StoreError as e:
        log.error("Could not read the package of %s: %s", package.name, e)
        tk.abort(503, tk._("The archive store is not available, please try again later"))
    fresh = (existing is not None and existing.consistent
             and existing.fingerprint == wanted.fingerprint)
    small = wanted.total_bytes <= config.current().package_sync_max_bytes
    if not fresh and (small or existing is None):
        if not small:
            return _request_page(package, wanted), 404
        try:
            existing = zips.build(package.id).package
        except zips.NothingToPackage:
            tk.abort(404, tk._("No archived files for this dataset"))
        except OSError as e:
            log.error("Could not build the package of %s: %s", package.name, e)
            if e.errno == errno.ENOSPC:
                tk.abort(503, tk._("The archive is full: the zip cannot be made now"))
            raise
        except StoreError as e:
            log.error("Could not build the package of %s: %s", package.name, e)
            tk.abort(503, tk._("The archive store is not available, please try again later"))
    if existing.key is not None:  # S3 mode: any web node, no archive disk
        return redirect_to_object(storage(), existing.key, f"{package.name}.zip",
                                  "application/zip")
    return serve_archive_file(existing.path, "application/zip", existing.etag or True,
                              f"{package.name}.zip")


def _request_page(package: model.Package, wanted: zips.Plan) -> str:
    user = tk.current_user
    return tk.render("archiver/extra/package_request.html", {
        "pkg": package, "size": wanted.total_bytes, "files": len(wanted.members),
        "logged_in": bool(user and user.is_authenticated),
        "has_email": bool(user and user.is_authenticated and user.email),
    })


def package_request(id: str):
    """Form of the request page: queue the build, mail a link when ready."""
    require_csrf_token()
    package = readable_package_or_abort(id)
    try:
        tk.get_action("archiver_package_request")(request_context(), {"id": package.id})
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
    return tk.redirect_to(urls.dataset_url(package.type, package.name))
