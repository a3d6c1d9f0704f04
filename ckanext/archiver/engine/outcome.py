"""What one attempt at a URL is given (``FetchSettings``, ``Previous``) and
what it returns (``Outcome``). No CKAN imports."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

from ckanext.archiver import status
from ckanext.archiver.engine.urlnorm import InvalidURL, normalise_url


@dataclass(frozen=True)
class FetchSettings:
    """How to fetch. Hashable: one pooled session is kept per settings."""

    user_agent: str = "ckanext-archiver"
    max_content_length: Optional[int] = 50_000_000  # bytes; 0/None = no cap
    connect_timeout: float = 10
    read_timeout: float = 30
    total_timeout: float = 300  # wall-clock deadline for the whole attempt
    max_redirects: int = 10
    verify_https: bool = True
    allow_private_networks: bool = False
    allowed_networks: tuple = ()  # host names or CIDRs exempt from the guard
    proxy: Optional[str] = None  # besides the standard *_PROXY env variables
    download: bool = True  # False = check-only: GET, stop after the headers
    chunk_size: int = 64 * 1024
    max_fresh_seconds: float = 7 * 24 * 3600  # cap on a server's max-age/Expires; 0 = never skip

    def __post_init__(self) -> None:
        allowed = self.allowed_networks or ()
        if isinstance(allowed, str):  # "10.0.0.0/8 files.intranet" from a config file
            allowed = allowed.replace(",", " ").split()
        object.__setattr__(self, "allowed_networks", tuple(allowed))  # keep it hashable


@dataclass(frozen=True)
class Previous:
    """What the last check stored (all optional)."""

    url: Optional[str] = None
    etag: Optional[str] = None
    last_modified: Optional[str] = None
    sha256: Optional[str] = None
    fresh_until: Optional[datetime] = None  # tz-aware UTC
    cache_filepath: Optional[str] = None

    def usable_for(self, url: str, download: bool) -> bool:
        """Whether this describes ``url`` (the same URL once normalised) and,
        when downloading, its kept file is still there: only then are its
        validators sent and its freshness trusted."""
        if self.url:
            try:
                if normalise_url(self.url) != normalise_url(url):
                    return False
            except InvalidURL:
                return False
        return cache_file_ok(self.cache_filepath, download)

    def fresh_for(self, url: str, download: bool, now: datetime) -> Optional[datetime]:
        """Until when the previous response may be reused for ``url`` without
        asking the server again (tz-aware), None when it may not: the one
        "still fresh, skip" rule (the worker skips the host's politeness
        slot exactly when the engine skips the request)."""
        fresh = self.fresh_until
        if fresh is None or not self.usable_for(url, download):
            return None
        if fresh.tzinfo is None:
            fresh = fresh.replace(tzinfo=timezone.utc)
        return fresh if fresh > now else None


def cache_file_ok(path: Optional[str], download: bool) -> bool:
    """Whether the previous check's kept file is still there. A relative
    path is a key of the object store: trusted, not looked up on disk."""
    return not path or not download or not os.path.isabs(path) or os.path.exists(path)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Outcome:
    """The result of one attempt (see the module docstring)."""

    status_id: int
    reason: str
    url: str
    url_redirected_to: Optional[str] = None
    http_status: Optional[int] = None
    etag: Optional[str] = None
    last_modified: Optional[str] = None
    cache_control: Optional[str] = None
    fresh_until: Optional[datetime] = None
    mimetype: Optional[str] = None
    size: Optional[int] = None
    hash: Optional[str] = None  # sha1 hex (legacy column)
    sha256: Optional[str] = None
    tmp_path: Optional[str] = None
    # with fetch(sink=...): the written, not yet completed upload (engine.sink.Sink)
    staged: Any = None
    filename: Optional[str] = None
    is_web_page: bool = False
    # the server was not contacted: the previous response is still fresh
    fresh_skip: bool = False
    # the URL moved for good: target of the 301/308 redirects it starts with
    moved_to: Optional[str] = None
    transient: bool = False
    retry_after: Optional[float] = None
    bytes_received: int = 0
    duration: float = 0.0
    # the URL's own host: True once it sent a response, False when it timed
    # out before sending one, None when neither is known
    host_answered: Optional[bool] = None
    # seconds from the URL's own request to its response's headers (None:
    # no response): what the host's pace follows (engine.hostqueue), as
    # Scrapy's AutoThrottle does, without the client's own work around it
    latency: Optional[float] = None
    checked_at: datetime = field(default_factory=now_utc)

    @property
    def status(self) -> str:
        return status.text(self.status_id)

    @property
    def is_broken(self) -> Optional[bool]:
        return status.is_broken(self.status_id)
