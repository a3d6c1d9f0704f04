"""The older archiver's ``ckanext.archiver.lib``: queue a resource or a
dataset for archiving (on this archiver's Celery queues), read an extra."""

from __future__ import annotations

import logging
from typing import Any

from ckanext.archiver.compat import legacy_tasks

log = logging.getLogger(__name__)

__all__ = ["create_archiver_resource_task", "create_archiver_package_task",
           "get_extra_from_pkg_dict"]


def create_archiver_resource_task(resource: Any, queue: str) -> int:
    """Queue ``resource`` (a Resource) on ``queue``."""
    return legacy_tasks.update_resource(resource.id, queue)


def create_archiver_package_task(package: Any, queue: str) -> int:
    """Queue the active resources of ``package`` (a Package) on ``queue``."""
    return legacy_tasks.update_package(package.id, queue)


def get_extra_from_pkg_dict(pkg_dict: dict[str, Any], key: str, default: Any = None) -> Any:
    for extra in pkg_dict.get("extras") or []:
        if extra.get("key") == key:
            return extra.get("value")
    return default
