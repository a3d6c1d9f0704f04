"""Dataset zips in the S3-compatible store (``storage_backend = s3``), so
that any web node can serve them without the disk of the host that built
them. Layout, under the store's prefix, beside the resources' objects::

    packages/<package_id>/<version>/<dataset name>.zip
    packages/<package_id>/package.json     the record: which zip, fingerprint, size

The zip is written by ``engine.zipper.write_members`` straight into a
streamed multipart upload (:class:`~engine.s3_upload.S3Upload`: one part in
memory, no temp file; zipfile writes data descriptors on a stream it cannot
seek). A build that fails or is stopped aborts its upload: neither an object
nor an unfinished upload is left. Each build writes a new ``<version>``
key; the record then names it, and only after that are the dataset's other
zips deleted (:func:`drop_others`), so a reader always finds the zip the
record names. No ACL is set: zips are served through presigned GETs.

No ckan / flask / celery / sqlalchemy imports.
"""

from __future__ import annotations

import datetime
import io
import json
import secrets
import time
from typing import Any, Callable, Iterable, Optional, Sequence

from ckanext.archiver.engine.s3_upload import PACKAGES, package_of
from ckanext.archiver.engine.storage import sanitise_filename
from ckanext.archiver.engine.store_s3 import S3Store
from ckanext.archiver.engine.zipper import (
    META_NAME,
    DatasetZip,
    Member,
    valid_package_id,
    write_members,
)

__all__ = ["current", "write", "copy_in", "record", "drop_others", "clean", "package_ids",
           "UPLOAD_MAX_SECONDS"]

# a build may run this long (worker.tasks.build_package's hard time limit is
# 6 h 5 min): an unfinished zip upload younger than this may still be going
UPLOAD_MAX_SECONDS = 7 * 3600
STALE_SECONDS = 3600  # an unrecorded zip this old is left by a killed build


def _folder(package_id: str) -> str:
    return f"{PACKAGES}/{valid_package_id(package_id)}/"


def record_key(package_id: str) -> str:
    return _folder(package_id) + META_NAME


class _Stream:
    """What zipfile writes into: the upload (``write`` and ``flush`` only)."""

    def __init__(self, upload: Any):
        self.upload = upload

    def write(self, data: bytes) -> int:
        self.upload.write(data)
        return len(data)

    def flush(self) -> None:
        pass


def write(store: S3Store, package_id: str, filename: str, members: Sequence[Member],
          manifest: Callable[[dict[str, str]], bytes], compresslevel: int = 0
          ) -> tuple[str, int]:
    """Stream the zip into a new key of the dataset; returns ``(key, size)``.
    Nothing names it yet (:func:`record`); on any error the upload is
    aborted and the exception raised."""
    upload = store.open_upload(_new_key(package_id, filename))
    try:
        write_members(_Stream(upload), members, manifest, compresslevel)
        upload.complete()
    except BaseException:
        upload.abort()
        raise
    # the store's quota counts the rows' files (the database's sum), not zips
    store._adjust_used(-upload.size)
    return upload.key, upload.size


def _new_key(package_id: str, filename: str) -> str:
    version = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)
    return f"{_folder(package_id)}{version}/{sanitise_filename(filename, default='package')}"


def copy_in(store: S3Store, package_id: str, filename: str, fileobj: Any) -> tuple[str, int]:
    """Stream a zip built on disk (an open binary file) into a new key of
    the dataset (``migrate-storage``); returns ``(key, size)``, not yet
    recorded."""
    upload = store.upload_file(_new_key(package_id, filename), fileobj)
    store._adjust_used(-upload.size)
    return upload.key, upload.size


def record(store: S3Store, package_id: str, meta: dict[str, Any]) -> None:
    """Write the dataset's record (``meta`` names its zip by ``key``): one
    PUT, so readers see the old record or the new one."""
    body = json.dumps(meta, indent=2).encode("utf-8")
    upload = store.upload_file(record_key(package_id), io.BytesIO(body))
    store._adjust_used(-upload.size)  # the quota counts archived files only


def _read_record(store: S3Store, package_id: str) -> Optional[dict[str, Any]]:
    """The dataset's record, None when there is none (or not a record);
    :class:`StoreError` when the store fails."""
    body = store.read_bytes(record_key(package_id))
    try:
        meta = json.loads(body) if body is not None else None
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


def current(store: S3Store, package_id: str) -> Optional[DatasetZip]:
    """The zip the dataset's record names, if any (whether up to date or
    not); ``consistent`` when the object is there with the recorded size."""
    meta = _read_record(store, package_id)
    key = meta.get("key") if meta else None
    if not isinstance(key, str) or package_of(key) != package_id \
            or not key.startswith(_folder(package_id)) or not key.endswith(".zip"):
        return None
    head = store.head(key)
    if head is None:
        return None
    return DatasetZip(package_id, f"s3://{store.bucket}/{store.object_name(key)}",
                      str(meta.get("fingerprint") or ""), head["size"],
                      int(meta.get("members") or 0), str(meta.get("built_at") or ""),
                      head["size"] == meta.get("size"), key=key)


def drop_others(store: S3Store, package_id: str, keep: str) -> int:
    """Delete the dataset's zips other than ``keep`` (the one its record
    now names); returns the bytes freed."""
    doomed = [(k, size) for k, size, _ in store.objects(_folder(package_id))
              if k != keep and k != record_key(package_id)]
    store.delete_many([k for k, _ in doomed])
    return sum(size for _, size in doomed)


def package_ids(store: S3Store) -> list[str]:
    """Ids of the datasets with anything under ``packages/`` in the store."""
    return sorted({pid for k, _, _ in store.objects(PACKAGES + "/")
                   if (pid := package_of(k)) is not None})


def clean(store: S3Store, active: Callable[[Iterable[str]], set], dry_run: bool = False,
          min_age: float = STALE_SECONDS) -> tuple[int, int]:
    """Delete the zips (and records) of datasets not in ``active(ids)``, the
    zips of active datasets that their record does not name (older than
    ``min_age``: left by a build killed between its upload and its record)
    and abort zip uploads older than :data:`UPLOAD_MAX_SECONDS`.

    :returns: ``(objects removed, bytes freed)`` (what would be, when ``dry_run``)
    """
    found: dict[str, list[tuple[str, int, datetime.datetime]]] = {}
    for key, size, modified in store.objects(PACKAGES + "/"):
        pid = package_of(key)
        if pid is not None:
            found.setdefault(pid, []).append((key, size, modified))
    keep = active(list(found)) if found else set()
    now = datetime.datetime.now(datetime.timezone.utc)
    doomed: list[tuple[str, int]] = []
    for pid, objects in found.items():
        if pid not in keep:
            doomed += [(k, size) for k, size, _ in objects]
            continue
        named = (_read_record(store, pid) or {}).get("key")
        doomed += [(k, size) for k, size, modified in objects
                   if k not in (named, record_key(pid))
                   and (now - modified).total_seconds() > min_age]
    stale = [(k, u) for k, u, started in store.unfinished_uploads()
             if package_of(k) is not None
             and (now - started).total_seconds() > UPLOAD_MAX_SECONDS]
    if not dry_run:
        store.delete_many([k for k, _ in doomed])
        for key, upload_id in stale:
            store._abort(key, upload_id)
    return len(doomed), sum(size for _, size in doomed)
