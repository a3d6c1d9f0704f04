"""Old import path of dataset zips: ``worker.zips`` (what goes in, builds,
requests), ``engine.zipper`` (on disk), ``worker.tasks.build_package``."""

from __future__ import annotations

from typing import Optional

from ckanext.archiver import config, keys
from ckanext.archiver.engine.storage import Storage
from ckanext.archiver.engine.zipper import DatasetZip, Member, package_dir, write_zip
from ckanext.archiver.worker.tasks import build_package
from ckanext.archiver.worker.zips import (
    BuildResult,
    NothingToPackage,
    Plan,
    build,
    clean,
    on_package_archived,
    plan,
    queue_build,
    request_build,
    signal_subscriptions,
)
from ckanext.archiver.worker.zips import built_zip as _built_zip

Package = DatasetZip

__all__ = ["Member", "Plan", "Package", "DatasetZip", "NothingToPackage", "BuildResult",
           "build", "plan", "current", "write_zip", "queue_build", "request_build",
           "build_package", "on_package_archived", "signal_subscriptions", "clean",
           "package_dir", "_pending_key"]


def current(package_id: str, store: Optional[Storage] = None) -> Optional[DatasetZip]:
    return _built_zip(package_id, store)


def _pending_key(package_id: str) -> str:
    return keys.package_pending(config.current(), package_id)
