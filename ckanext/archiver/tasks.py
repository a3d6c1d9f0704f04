"""Old import path of the worker: the Celery tasks are in ``worker.tasks``, a
batch in ``worker.batch``, one resource in ``worker.resource``, the rows in
``model.checks``, the retry policy in ``worker.retry`` (see
``docs/architecture.rst``); the older archiver's task functions and
exceptions (ckanext-qa imports them from here) in ``compat.legacy_tasks``.
Importing this module loads Celery."""

from __future__ import annotations

from ckanext.archiver import config
from ckanext.archiver.compat import legacy_tasks
from ckanext.archiver.compat.legacy_tasks import *  # noqa: F403 (the older archiver's names)
from ckanext.archiver.engine.outcome import FetchSettings
from ckanext.archiver.engine.storage import Storage
from ckanext.archiver.engine.store_s3 import S3Store
from ckanext.archiver.model.checks import Job
from ckanext.archiver.worker import services
from ckanext.archiver.worker.batch import BatchResult, archive_batch
from ckanext.archiver.worker.housekeeping import forget
from ckanext.archiver.worker.retry import MAX_DELIVERIES, backoff, late_check_delay
from ckanext.archiver.worker.tasks import (
    _record_system_error,
    _too_many_deliveries,
    archive_resources,
    build_package,
)

__all__ = ["archive_resources", "build_package", "archive_batch", "BatchResult", "Job",
           "backoff", "late_check_delay", "MAX_DELIVERIES", "forget", "storage",
           "archive_dir", "user_agent", "fetch_settings", "_too_many_deliveries",
           "_record_system_error", *legacy_tasks.NAMES]


def archive_dir() -> str:
    return config.current().archive_dir


def storage() -> Storage | S3Store:
    return services.storage()


def user_agent() -> str:
    return config.current().user_agent


def fetch_settings(download: bool = True) -> FetchSettings:
    return services.fetch_settings(config.current(), download)
