"""Files and rows of resources that are gone."""

from __future__ import annotations

from typing import Iterable, Sequence

from ckanext.archiver import interfaces
from ckanext.archiver.engine.store_s3 import S3Store
from ckanext.archiver.model import rows
from ckanext.archiver.worker.services import local_storage, storage

__all__ = ["forget"]


def forget(resource_ids: Sequence[str], busy: Iterable[str] = ()) -> int:
    """Deleted resources: remove their archived files and say so on their
    rows (history is kept); then announce their datasets with nothing else
    waiting (``package-archived`` on priority), except those of ``busy``
    (being queued: their round announces them). Returns bytes freed."""
    store = storage()
    freed = sum(store.remove(rid) for rid in resource_ids)
    if isinstance(store, S3Store):  # and files not moved into the store yet
        freed += sum(local_storage().remove(rid) for rid in resource_ids)
    for package_id in sorted(rows.forget(resource_ids, busy)):
        interfaces.notify("package-archived", "priority", package_id=package_id)
    return freed
