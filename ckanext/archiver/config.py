"""Every option of the archiver, read in one place and typed.

``current()`` reads the ``ckanext.archiver.*`` options (and the few core
options the archiver uses) from CKAN's config into one frozen
:class:`Options`. Defaults live once, in ``config_declaration.yaml``: a bare
``tk.config.get(key)`` returns them already converted for the options
declared ``int``, ``bool`` or ``list``. Options with a fraction are declared
untyped ("float" options need CKAN 2.12) and converted here, once.

A snapshot is cheap (a dict lookup per option): take one per batch,
request or command, not per resource. Tests that change an option with
``ckan_config`` see it in the next snapshot.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from importlib import metadata
from typing import Any, Optional

import ckan.plugins.toolkit as tk

__all__ = ["Options", "current", "freeze", "PREFIX", "QUEUES"]

PREFIX = "ckanext.archiver."
QUEUES = ("priority", "bulk")


def _float(value: Any) -> float:
    return float(value) if value not in (None, "") else 0.0


@dataclasses.dataclass(frozen=True)
class Options:
    # storage
    archive_dir: str
    cache_url_root: Optional[str]
    max_content_length: int
    max_archive_bytes: int
    download: bool
    check_only_formats: frozenset
    storage_backend: str
    s3_bucket: str
    s3_prefix: str
    s3_endpoint_url: Optional[str]
    s3_region: Optional[str]
    s3_access_key_id: Optional[str]
    s3_secret_access_key: Optional[str]
    s3_addressing_style: str
    s3_part_size: int
    s3_presign_seconds: int
    # fetching
    user_agent: str
    verify_https: bool
    connect_timeout: float
    read_timeout: float
    total_timeout: float
    max_redirects: int
    allow_private_networks: bool
    allowed_networks: tuple
    proxy: Optional[str]
    max_fresh_seconds: int
    recheck_days: int
    history_retention_days: int
    # queues and workers
    broker_url: str
    priority_queue: str
    bulk_queue: str
    batch_size: int
    batch_wait: float
    per_host_concurrency: int
    per_host_min_interval: float
    per_host_start_interval: float
    per_host_max_interval: float
    host_wait: float
    host_down_after: int
    max_retries: int
    retry_delay: float
    visibility_timeout: int
    # serving and pages
    serve_with: str
    x_accel_prefix: str
    report_page_size: int
    report_trend_days: int
    # packages
    package_on_archived: bool
    package_sync_max_bytes: int
    package_compresslevel: int
    # notifications
    notify_maintainers: bool
    notify_first_days: int
    webhook_url: Optional[str]
    webhook_secret: Optional[str]
    webhook_retries: int
    webhook_retry_delay: float
    webhook_timeout: float
    # statistics
    stats_hours: int
    metrics_enabled: bool
    metrics_token: str
    # who sees what
    show_cache_filepath: bool
    # core options the archiver uses
    site_id: str
    site_url: str
    site_title: Optional[str]
    root_path: str
    allow_dataset_collaborators: bool
    smtp_mail_from: Optional[str]

    # -- derived values ------------------------------------------------------

    @property
    def is_s3(self) -> bool:
        """Copies are kept in the S3-compatible store, not in archive_dir."""
        return self.storage_backend == "s3"

    @property
    def redis_prefix(self) -> str:
        """Prefix of every Redis key of this site (see ``keys.py``)."""
        return f"archiver:{self.site_id}"

    def queue_name(self, name: str) -> str:
        """The Celery queue of ``priority`` or ``bulk``: ``<site_id>:<name>``."""
        option = {"priority": self.priority_queue, "bulk": self.bulk_queue}[name]
        return f"{self.site_id}:{option}"

    @property
    def download_time_max(self) -> float:
        """Longest one download can take: its wait for a free slot on its
        host, then its deadline."""
        return self.host_wait + self.total_timeout

    @property
    def time_limits(self) -> tuple[int, int]:
        """(soft, hard) time limits of one task, from the download deadline."""
        soft = int(self.download_time_max) + 60
        return soft, soft + 60

    @property
    def host_lease(self) -> float:
        """How long a per-host slot is held at most (a dead worker's too)."""
        return self.total_timeout + 30


_frozen: list[Options] = []


def freeze() -> None:
    """From now on this process reads CKAN's config once, not at every
    ``current()`` (a worker: its ini does not change under it, a change
    takes a restart, as for CKAN itself; reading every option costs about
    as much as a check's own work on a busy host's backlog)."""
    _frozen[:] = []
    _frozen.append(current())


def current(cfg: Any = None) -> Options:
    """The options now (``cfg``: CKAN's config, by default ``tk.config``;
    read once in a worker, ``freeze``)."""
    if cfg is None and _frozen:
        return _frozen[0]
    c = cfg if cfg is not None else tk.config

    def get(name: str) -> Any:
        return c.get(PREFIX + name)

    archive_dir = get("archive_dir") or os.path.join(
        c.get("ckan.storage_path") or "/var/lib/ckan", "archiver")
    return Options(
        archive_dir=archive_dir,
        cache_url_root=get("cache_url_root") or None,
        max_content_length=int(get("max_content_length") or 0),
        max_archive_bytes=int(get("max_archive_bytes") or 0),
        download=bool(get("download")),
        check_only_formats=frozenset(f.lower() for f in get("check_only_formats") or ()),
        storage_backend=get("storage_backend") or "local",
        s3_bucket=get("s3_bucket") or "",
        s3_prefix=get("s3_prefix") or "",
        s3_endpoint_url=get("s3_endpoint_url") or None,
        s3_region=get("s3_region") or None,
        s3_access_key_id=get("s3_access_key_id") or None,
        s3_secret_access_key=get("s3_secret_access_key") or None,
        s3_addressing_style=get("s3_addressing_style") or "auto",
        s3_part_size=int(get("s3_part_size") or 0),
        s3_presign_seconds=int(get("s3_presign_seconds") or 0),
        user_agent=get("user_agent") or default_user_agent(c.get("ckan.site_url")),
        verify_https=bool(get("verify_https")),
        connect_timeout=_float(get("connect_timeout")),
        read_timeout=_float(get("read_timeout")),
        total_timeout=_float(get("total_timeout")),
        max_redirects=int(get("max_redirects")),
        allow_private_networks=bool(get("allow_private_networks")),
        allowed_networks=tuple(get("allowed_networks") or ()),
        proxy=get("proxy") or None,
        max_fresh_seconds=int(get("max_fresh_seconds")),
        recheck_days=int(get("recheck_days")),
        history_retention_days=int(get("history_retention_days")),
        broker_url=get("broker_url") or c.get("ckan.redis.url"),
        priority_queue=get("priority_queue"),
        bulk_queue=get("bulk_queue"),
        batch_size=int(get("batch_size")),
        batch_wait=_float(get("batch_wait")),
        per_host_concurrency=int(get("per_host_concurrency")),
        per_host_min_interval=_float(get("per_host_min_interval")),
        per_host_start_interval=_float(get("per_host_start_interval")),
        per_host_max_interval=_float(get("per_host_max_interval")),
        host_wait=_float(get("host_wait")),
        host_down_after=int(get("host_down_after")),
        max_retries=int(get("max_retries")),
        retry_delay=_float(get("retry_delay")),
        visibility_timeout=int(get("visibility_timeout") or 0),
        serve_with=get("serve_with"),
        x_accel_prefix=get("x_accel_prefix") or "",
        report_page_size=max(int(get("report_page_size")), 1),
        report_trend_days=int(get("report_trend_days")),
        package_on_archived=bool(get("package_on_archived")),
        package_sync_max_bytes=int(get("package_sync_max_bytes")),
        package_compresslevel=min(max(int(get("package_compresslevel") or 0), 0), 9),
        notify_maintainers=bool(get("notify_maintainers")),
        notify_first_days=int(get("notify_first_days")),
        webhook_url=get("webhook_url") or None,
        webhook_secret=get("webhook_secret") or None,
        webhook_retries=max(int(get("webhook_retries")), 0),
        webhook_retry_delay=max(_float(get("webhook_retry_delay")), 0.0),
        webhook_timeout=_float(get("webhook_timeout")),
        stats_hours=int(get("stats_hours")),
        metrics_enabled=bool(get("metrics_enabled")),
        metrics_token=get("metrics_token") or "",
        show_cache_filepath=bool(get("show_cache_filepath")),
        site_id=c.get("ckan.site_id"),
        site_url=c.get("ckan.site_url") or "",
        site_title=c.get("ckan.site_title"),
        root_path=c.get("ckan.root_path") or "",
        allow_dataset_collaborators=bool(c.get("ckan.auth.allow_dataset_collaborators")),
        smtp_mail_from=c.get("smtp.mail_from") or None,
    )


def default_user_agent(site_url: Optional[str]) -> str:
    """``ckanext-archiver/<version> (+<site_url>)``: a publisher can tell
    which portal checks their links."""
    return f"ckanext-archiver/{_version()} (+{site_url})"


@functools.lru_cache(maxsize=1)
def _version() -> str:
    try:
        return metadata.version("ckanext-archiver")
    except metadata.PackageNotFoundError:
        return "dev"
