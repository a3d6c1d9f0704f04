"""The engine's objects as this site's options make them: the archive's
store (:class:`Storage` or :class:`S3Store`, ``storage_backend``), the
:class:`FetchSettings` of a download and the per-host :class:`HostLimiter`.

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

from ckanext.archiver import config, keys
from ckanext.archiver.engine.outcome import FetchSettings
from ckanext.archiver.engine.politeness import HostLimiter
from ckanext.archiver.engine.storage import Storage
from ckanext.archiver.engine.store_s3 import S3Store, check_key
from ckanext.archiver.model import rows

__all__ = ["storage", "local_storage", "fetch_settings", "limiter", "store_key",
           "local_key", "local_path", "AnyStore"]

AnyStore = Union[Storage, S3Store]


def storage(options: Optional[config.Options] = None) -> AnyStore:
    """The process's store (``storage_backend``), kept, so that its count
    of used bytes for the quota is not rebuilt for every batch."""
    options = options or config.current()
    if not options.is_s3:
        return local_storage(options)
    return _s3(options.s3_bucket, options.s3_prefix, options.s3_endpoint_url,
               options.s3_region, options.s3_access_key_id, options.s3_secret_access_key,
               options.s3_addressing_style, options.s3_part_size, options.s3_presign_seconds,
               options.max_archive_bytes)


def local_storage(options: Optional[config.Options] = None) -> Storage:
    """The archive folder (the local backend; in S3 mode, where rows not yet
    migrated have their files)."""
    options = options or config.current()
    return _storage(options.archive_dir, options.cache_url_root, options.max_archive_bytes)


@functools.lru_cache(maxsize=8)
def _storage(path: str, cache_url_root: Optional[str], max_archive_bytes: int) -> Storage:
    return Storage(path, cache_url_root, max_archive_bytes)


@functools.lru_cache(maxsize=8)
def _s3(bucket: str, prefix: str, endpoint_url: Optional[str], region: Optional[str],
        access_key_id: Optional[str], secret_access_key: Optional[str],
        addressing_style: str, part_size: int, presign_seconds: int,
        max_archive_bytes: int) -> S3Store:
    return S3Store(bucket, prefix, endpoint_url=endpoint_url, region=region,
                   access_key_id=access_key_id, secret_access_key=secret_access_key,
                   addressing_style=addressing_style, part_size=part_size,
                   presign_seconds=presign_seconds, max_archive_bytes=max_archive_bytes,
                   used_bytes=rows.store_bytes)


def store_key(cache_filepath: Optional[str]) -> Optional[str]:
    """The object-store key a row names, None when it names a local file."""
    if not cache_filepath or os.path.isabs(cache_filepath):
        return None
    try:
        return check_key(cache_filepath)
    except ValueError:
        return None


def local_key(cache_filepath: Optional[str],
              options: Optional[config.Options] = None) -> Optional[str]:
    """A local file's path relative to ``archive_dir`` (the key it gets in
    the store), None when it is not inside the archive."""
    if not cache_filepath or not os.path.isabs(cache_filepath):
        return None
    root = os.path.realpath((options or config.current()).archive_dir)
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


def fetch_settings(options: config.Options, download: bool = True) -> FetchSettings:
    """How to fetch (``download`` False: check the link only)."""
    return FetchSettings(
        user_agent=options.user_agent,
        max_content_length=options.max_content_length,
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
        total_timeout=options.total_timeout,
        max_redirects=options.max_redirects,
        verify_https=options.verify_https,
        allow_private_networks=options.allow_private_networks,
        allowed_networks=options.allowed_networks,
        proxy=options.proxy,
        download=download and options.download,
        max_fresh_seconds=options.max_fresh_seconds,
    )


def limiter(options: config.Options) -> HostLimiter:
    """Per-host politeness shared by every worker of the site (Redis)."""
    return HostLimiter(
        keys.client(options), keys.hosts_prefix(options), options.per_host_concurrency,
        options.per_host_min_interval, lease=options.host_lease,
        down_after=options.host_down_after)
