"""The older archiver's task functions, served by this archiver's queues
(re-exported by ``ckanext.archiver.tasks``).

* ``update_resource(resource_id, queue)`` / ``update_package(package_id,
  queue)`` queue the resource (the dataset's active resources) on the
  archiver's Celery queue ``queue`` ("priority" or "bulk"), de-duplicated
  like every other queuing; they return how many were queued. The older
  ones were RQ jobs that archived in the calling process.
* ``notify_resource`` / ``notify_package`` send the ``archived`` /
  ``package-archived`` events to ``IPipe`` plugins and signal listeners.
* ``link_checker(context_json, data_json)``: see ``compat.link_checker``.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import ckan.plugins as p
from ckan import model

from ckanext.archiver import config, interfaces
from ckanext.archiver.compat import link_checker as _link
from ckanext.archiver.compat.link_checker import (  # noqa: F401  (re-exported)
    ArchiveError,
    ArchiverError,
    ArchiverErrorAfterDownloadStarted,
    ArchiverErrorBeforeDownloadStarted,
    ChooseNotToDownload,
    CkanError,
    DownloadError,
    DownloadException,
    LinkCheckerError,
    LinkHeadMethodNotSupported,
    LinkHeadRequestError,
    LinkInvalidError,
    NotChanged,
    tidy_url,
)
from ckanext.archiver.worker import dispatch, services

log = logging.getLogger(__name__)

NAMES = (
    "update_resource", "update_package", "notify_resource", "notify_package",
    "get_plugins_waiting_on_ipipe", "link_checker", "tidy_url",
    "ArchiverError", "ArchiverErrorBeforeDownloadStarted", "DownloadException",
    "ArchiverErrorAfterDownloadStarted", "DownloadError", "ArchiveError",
    "ChooseNotToDownload", "NotChanged", "LinkCheckerError", "LinkInvalidError",
    "LinkHeadRequestError", "LinkHeadMethodNotSupported", "CkanError",
)
__all__ = list(NAMES)


def _id(obj: Any) -> str:
    """The id of a dict from the API or of a model object."""
    return obj["id"] if isinstance(obj, dict) else obj.id


def update_resource(resource_id: str, queue: str = "bulk") -> int:
    """Queue one resource for archiving on ``queue``."""
    resource = model.Resource.get(resource_id)
    if resource is None or resource.state != "active":
        log.warning("update_resource: no active resource %s", resource_id)
        return 0
    return dispatch.enqueue([(resource.id, resource.package_id)], queue)


def update_package(package_id: str, queue: str = "bulk") -> int:
    """Queue every active resource of a dataset (id or name) on ``queue``."""
    package = model.Package.get(package_id)
    if package is None:
        log.warning("update_package: no dataset %s", package_id)
        return 0
    rows = model.Session.query(model.Resource.id).filter(
        model.Resource.package_id == package.id, model.Resource.state == "active").all()
    return dispatch.enqueue([(rid, package.id) for (rid,) in rows], queue)


def notify_resource(resource: Any, queue: str, cache_filepath: Optional[str]) -> None:
    """Send ``archived`` for ``resource`` (a dict or a Resource)."""
    interfaces.notify("archived", queue, resource_id=_id(resource),
                      cache_filepath=cache_filepath)


def notify_package(package: Any, queue: str) -> None:
    """Send ``package-archived`` for ``package`` (a dict or a Package)."""
    interfaces.notify("package-archived", queue, package_id=_id(package))


def get_plugins_waiting_on_ipipe() -> list[str]:
    return [plugin.name for plugin in p.PluginImplementations(interfaces.IPipe)]


def link_checker(context: str, data: str) -> str:
    """HEAD a link; the headers as JSON (see ``compat.link_checker``)."""
    return _link.check(context, data, services.fetch_settings(config.current(), download=False))
