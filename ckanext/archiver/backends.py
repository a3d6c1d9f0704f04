"""Which archive store this site uses (``storage_backend``), built once per
process from the configuration, and what a row's ``cache_filepath`` means.

``cache_filepath`` of an archival row is either

* an absolute path: a file on the archive disk (``local`` backend, the older
  archiver's layout ``<archive_dir>/<rid[:2]>/<rid>/<filename>``; what
  ckanext-qa opens), or CKAN's own storage for an uploaded resource;
* a relative key ``<rid[:2]>/<rid>/<version>/<filename>``: an object of the
  S3-compatible store, named ``<s3_prefix><key>`` in ``s3_bucket``.

A row names its store by its own shape, so switching backends rewrites no
row: rows keep working while ``ckan archiver migrate-storage`` copies the
local files into the bucket and switches each row once its object is
verified.
"""

from __future__ import annotations

import functools
import os
from typing import Optional, Union

import ckan.plugins.toolkit as tk
import sqlalchemy as sa
from ckan import model

from ckanext.archiver.engine.store_s3 import S3Store, StoreError, check_key
from ckanext.archiver.model import Archival
from ckanext.archiver.storage import Storage

__all__ = ["archive_dir", "local_store", "store", "is_s3", "store_key", "local_path",
           "StoreError", "S3Store"]

AnyStore = Union[Storage, S3Store]


def archive_dir() -> str:
    return tk.config.get("ckanext.archiver.archive_dir") or os.path.join(
        tk.config.get("ckan.storage_path") or "/var/lib/ckan", "archiver")


def local_store() -> Storage:
    """The archive folder (the local backend; in S3 mode, where rows not yet
    migrated have their files, and where dataset zips are built)."""
    return _local(archive_dir(), tk.config.get("ckanext.archiver.cache_url_root"),
                  int(tk.config.get("ckanext.archiver.max_archive_bytes") or 0))


@functools.lru_cache(maxsize=8)
def _local(path: str, cache_url_root: Optional[str], max_archive_bytes: int) -> Storage:
    return Storage(path, cache_url_root, max_archive_bytes)


def is_s3() -> bool:
    return tk.config.get("ckanext.archiver.storage_backend") == "s3"


def store() -> AnyStore:
    """The process's store, kept (its count of used bytes for the quota is
    not rebuilt for every batch)."""
    if not is_s3():
        return local_store()
    c = tk.config
    return _s3(c.get("ckanext.archiver.s3_bucket") or "", c.get("ckanext.archiver.s3_prefix") or "",
               c.get("ckanext.archiver.s3_endpoint_url") or None,
               c.get("ckanext.archiver.s3_region") or None,
               c.get("ckanext.archiver.s3_access_key_id") or None,
               c.get("ckanext.archiver.s3_secret_access_key") or None,
               c.get("ckanext.archiver.s3_addressing_style") or "auto",
               int(c.get("ckanext.archiver.s3_part_size")),
               int(c.get("ckanext.archiver.s3_presign_seconds")),
               int(c.get("ckanext.archiver.max_archive_bytes") or 0))


@functools.lru_cache(maxsize=8)
def _s3(bucket: str, prefix: str, endpoint_url: Optional[str], region: Optional[str],
        access_key_id: Optional[str], secret_access_key: Optional[str],
        addressing_style: str, part_size: int, presign_seconds: int,
        max_archive_bytes: int) -> S3Store:
    return S3Store(bucket, prefix, endpoint_url=endpoint_url, region=region,
                   access_key_id=access_key_id, secret_access_key=secret_access_key,
                   addressing_style=addressing_style, part_size=part_size,
                   presign_seconds=presign_seconds, max_archive_bytes=max_archive_bytes,
                   used_bytes=used_bytes_in_store)


def used_bytes_in_store() -> int:
    """Bytes of the copies kept in the object store, as the rows say (the
    quota in S3 mode: listing a large bucket per check would be too slow)."""
    a = Archival.__table__
    with model.meta.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(a.c.size), 0)).where(
            a.c.cache_filepath.isnot(None), ~a.c.cache_filepath.startswith("/"))).scalar())


def store_key(cache_filepath: Optional[str]) -> Optional[str]:
    """The object-store key a row names, None when it names a local file."""
    if not cache_filepath or os.path.isabs(cache_filepath):
        return None
    try:
        return check_key(cache_filepath)
    except ValueError:
        return None


def local_key(cache_filepath: Optional[str]) -> Optional[str]:
    """A local file's path relative to ``archive_dir`` (the key it gets in
    the store), None when it is not inside the archive."""
    if not cache_filepath or not os.path.isabs(cache_filepath):
        return None
    root = os.path.realpath(archive_dir())
    path = os.path.realpath(cache_filepath)
    if path == root or os.path.commonpath([path, root]) != root:
        return None
    key = os.path.relpath(path, root).replace(os.sep, "/")
    try:
        return check_key(key)
    except ValueError:
        return None


def local_path(cache_filepath: Optional[str]) -> Optional[str]:
    """The absolute path of a local copy (None for a key of the store)."""
    return cache_filepath if cache_filepath and os.path.isabs(cache_filepath) else None
