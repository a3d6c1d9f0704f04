"""The engine's objects as this site's options make them: the archive's
:class:`Storage`, the :class:`FetchSettings` of a download and the per-host
:class:`HostLimiter`."""

from __future__ import annotations

import functools
from typing import Optional

from ckanext.archiver import config, keys
from ckanext.archiver.engine.outcome import FetchSettings
from ckanext.archiver.engine.politeness import HostLimiter
from ckanext.archiver.engine.storage import Storage

__all__ = ["storage", "fetch_settings", "limiter"]


def storage(options: Optional[config.Options] = None) -> Storage:
    """The process's Storage (kept, so that its count of used bytes for the
    quota is not rebuilt by walking the archive for every batch)."""
    options = options or config.current()
    return _storage(options.archive_dir, options.cache_url_root, options.max_archive_bytes)


@functools.lru_cache(maxsize=8)
def _storage(path: str, cache_url_root: Optional[str], max_archive_bytes: int) -> Storage:
    return Storage(path, cache_url_root, max_archive_bytes)


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
