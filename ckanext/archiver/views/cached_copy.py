"""Cached copies: ``archiver.cached_copy``
(``/dataset/<id>/resource/<resource_id>/archive/<filename>``), served with
the dataset's read permission: a file of archive_dir, or (S3 mode) a 302 to
a short-lived presigned GET of the object."""

from __future__ import annotations

import logging
import mimetypes
import os
from typing import Optional

import ckan.plugins.toolkit as tk
from ckan import model
from flask import Response, request

from ckanext.archiver import config
from ckanext.archiver.engine.files import inside
from ckanext.archiver.engine.store_s3 import S3Store
from ckanext.archiver.model import Archival, active_dataset
from ckanext.archiver.views.common import (
    redirect_to_object,
    request_context,
    require_access,
    serve_archive_file,
)
from ckanext.archiver.worker.services import storage, store_key

__all__ = ["cached_copy"]

log = logging.getLogger(__name__)


def _cached_file(archival: Archival, filename: str) -> Optional[str]:
    """The real path of the archival's cached file when it is a file inside
    archive_dir named ``filename``; None otherwise."""
    root = config.current().archive_dir
    if not archival.cache_filepath or not root:
        return None
    root = os.path.realpath(root)
    path = archival.cache_filepath
    if not os.path.isabs(path):
        path = os.path.join(root, path)
    path = os.path.realpath(path)
    if not inside(path, root):
        return None
    if os.path.basename(path) != filename or not os.path.isfile(path):
        return None
    return path


def cached_copy(id: str, resource_id: str, filename: str):
    """The cached copy of a resource, with the dataset's read permission
    (404 for a reader who may not see it, as for the dataset page)."""
    require_access("resource_show", request_context(), resource_id, tk._("Resource not found"),
                   tk._("Resource not found"), forbidden_status=404)
    resource = model.Resource.get(resource_id)
    package = active_dataset(id)
    if (resource is None or package is None or resource.state != "active"
            or resource.package_id != package.id):
        tk.abort(404, tk._("Resource not found"))
    archival = Archival.get_for_resource(resource.id)
    key = store_key(archival.cache_filepath) if archival else None
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
    """302 to a presigned GET of the object (``views.common.redirect_to_object``)."""
    store = storage()
    if not isinstance(store, S3Store) or key.rsplit("/", 1)[-1] != filename:
        tk.abort(404, tk._("No cached copy of this resource"))
    return redirect_to_object(store, key, filename, mimetype)
