"""Files and rows of resources that are gone."""

from __future__ import annotations

from typing import Sequence

from ckanext.archiver.engine.store_s3 import S3Store
from ckanext.archiver.model import rows
from ckanext.archiver.worker.services import local_storage, storage

__all__ = ["forget"]


def forget(resource_ids: Sequence[str]) -> int:
    """Deleted resources: remove their archived files and say so on their
    rows (history is kept). Returns bytes freed."""
    store = storage()
    freed = sum(store.remove(rid) for rid in resource_ids)
    if isinstance(store, S3Store):  # and files not moved into the store yet
        freed += sum(local_storage().remove(rid) for rid in resource_ids)
    rows.forget(resource_ids)
    return freed
