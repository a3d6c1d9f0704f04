"""One HTTP attempt at a resource URL: the archiver's download engine.

:func:`fetch` checks a URL and (unless in check-only mode) streams its body to
a temporary file, and always returns an :class:`Outcome` carrying a status id
from :mod:`ckanext.archiver.status` and a reason a publisher can read. It never
raises for anything a URL or a server can do.

What it does, in order:

* normalises the URL (:func:`netguard.normalise_url`); only http(s);
* skips the request while the previous response is still fresh
  (:mod:`ckanext.archiver.engine.freshness`, the one rule) unless
  ``force``; such an outcome has ``fresh_skip`` set (no contact was made);
* sends a GET with ``If-None-Match`` / ``If-Modified-Since`` from the previous
  check, ``Accept-Encoding: identity`` and the configured user agent, through
  a pooled session whose connections are checked by the SSRF guard;
* follows redirects itself (each hop is guarded, loops and too many hops
  are reported), keeping the final URL, and ``moved_to``: where a leading
  run of permanent redirects (301, 308) points;
* maps HTTP and network errors to statuses with precise reasons;
* streams the body in chunks into ``tmp_dir`` while hashing (sha1, sha256)
  and counting the *decoded* bytes against the size cap, under connect/read
  timeouts and a wall-clock deadline that also cuts a blocked read;
* sniffs the mimetype when the server's is missing or generic, suggests a
  file name, and reports an unchanged body (same sha256) as UNCHANGED.

No CKAN imports: standard library, requests/urllib3 and puremagic only.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import itertools
import json
import logging
import mimetypes
import os
import queue
import re
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from http.client import RemoteDisconnected
from http.cookiejar import DefaultCookiePolicy
from typing import Any, Iterator, Optional
from urllib.parse import unquote, urljoin, urlsplit

import puremagic
import requests
import urllib3
from urllib3.exceptions import DecodeError, InsecureRequestWarning, NameResolutionError

from ckanext.archiver import netguard, status
from ckanext.archiver.engine import freshness
from ckanext.archiver.netguard import BlockedAddress, InvalidURL, normalise_url
from ckanext.archiver.storage import clean_filename, sanitise_filename

__all__ = ["FetchSettings", "Outcome", "Previous", "fetch", "get_session", "sniff_mimetype"]

log = logging.getLogger(__name__)

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
PERMANENT_REDIRECT_CODES = frozenset({301, 308})
TRANSIENT_CODES = frozenset({408, 425, 429})
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
GENERIC_TYPES = frozenset(
    {
        "application/octet-stream",
        "binary/octet-stream",
        "text/plain",
        "application/binary",
        "application/unknown",
        "application/download",
        "application/x-download",
        "application/force-download",
        "application/x-unknown",
        "content/unknown",
        "unknown/unknown",
    }
)
ZIP_TYPES = frozenset({"application/zip", "application/x-zip-compressed", "application/x-zip"})
SNIFF_BYTES = 64 * 1024


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


def _utcnow() -> datetime:
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
    checked_at: datetime = field(default_factory=_utcnow)

    @property
    def status(self) -> str:
        return status.text(self.status_id)

    @property
    def is_broken(self) -> Optional[bool]:
        return status.is_broken(self.status_id)


# --------------------------------------------------------------------------
# Session


_sessions: dict = {}
_sessions_lock = threading.Lock()


def get_session(settings: FetchSettings) -> requests.Session:
    """The process's pooled session for ``settings`` (created once, with the
    SSRF guard installed; a forked worker gets its own)."""
    key = (os.getpid(), settings)
    with _sessions_lock:
        session = _sessions.get(key)
        if session is None:
            session = _sessions[key] = _new_session(settings)
        return session


def _new_session(settings: FetchSettings) -> requests.Session:
    session = requests.Session()
    session.trust_env = True  # HTTP(S)_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE
    session.headers.update(
        {
            "User-Agent": settings.user_agent,
            "Accept": "*/*",
            "Accept-Encoding": "identity",
        }
    )
    session.verify = settings.verify_https
    session.max_redirects = settings.max_redirects
    # No cookies kept between resources (nor sent to other sites).
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    if settings.proxy:
        session.proxies = {"http": settings.proxy, "https": settings.proxy}
    if not settings.verify_https:
        urllib3.disable_warnings(InsecureRequestWarning)
    guard = netguard.Guard.build(settings.allow_private_networks, settings.allowed_networks)
    netguard.install_guard(session, guard, pool_connections=100, pool_maxsize=64, max_retries=0)
    return session


# --------------------------------------------------------------------------
# The attempt


class _Done(Exception):
    def __init__(self, outcome: Outcome):
        self.outcome = outcome


class _Watchdog:
    """One daemon thread per process calling ``_Deadline.fire`` when a
    deadline passes (cheaper than a timer thread per attempt)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:  # also in a forked child: no thread there yet
        self._cond = threading.Condition()
        self._heap: list = []
        self._stopped = 0
        self._seq = itertools.count()
        self._running = False

    def arm(self, deadline: _Deadline) -> None:
        with self._cond:
            if not self._running:
                self._running = True
                threading.Thread(target=self._loop, name="fetch-watchdog", daemon=True).start()
            if self._stopped > 64 and 2 * self._stopped > len(self._heap):  # drop finished ones
                for entry in self._heap:
                    entry[2].queued = not entry[2].stopped
                self._heap = [entry for entry in self._heap if entry[2].queued]
                heapq.heapify(self._heap)
                self._stopped = 0
            deadline.queued = True
            heapq.heappush(self._heap, (deadline.at, next(self._seq), deadline))
            self._cond.notify()

    def disarm(self, deadline: _Deadline) -> None:
        with self._cond:
            if deadline.queued:
                self._stopped += 1

    def _loop(self) -> None:
        cond = self._cond
        with cond:
            while cond is self._cond:
                now = time.monotonic()
                while self._heap and (self._heap[0][0] <= now or self._heap[0][2].stopped):
                    deadline = heapq.heappop(self._heap)[2]
                    deadline.queued = False
                    if deadline.stopped:
                        self._stopped = max(self._stopped - 1, 0)
                    else:
                        deadline.fire()
                cond.wait(self._heap[0][0] - now if self._heap else None)


_watchdog = _Watchdog()
os.register_at_fork(after_in_child=_watchdog._reset)


class _Deadline:
    """Wall-clock limit for the whole attempt. When time is up the watchdog
    shuts down the socket in use, which unblocks a read stuck on a server
    that drips bytes (or header lines) just under the read timeout."""

    def __init__(self, seconds: Optional[float]):
        self.seconds = seconds or 0
        self.at = time.monotonic() + self.seconds if self.seconds else None
        self.expired = False
        self.stopped = False
        self.queued = False  # in the watchdog's heap (guarded by the watchdog's lock)
        self._lock = threading.Lock()
        self._conn: Any = None
        self._sock: Optional[socket.socket] = None
        if self.at is not None:
            _watchdog.arm(self)

    def remaining(self) -> Optional[float]:
        if self.at is None:
            return None
        left = self.at - time.monotonic()
        if left <= 0:
            self.expired = True
        return left

    def observe(self, conn: Any, sock: Optional[socket.socket]) -> None:
        """Remember the connection in use (``observe(None, None)`` as soon as
        it may go back to the pool, where another attempt could pick it up)."""
        with self._lock:
            self._conn, self._sock = conn, sock

    def fire(self) -> None:
        with self._lock:
            if self.stopped:
                return
            self.expired = True
            for sock in (getattr(self._conn, "sock", None), self._sock):
                if sock is not None:
                    try:  # the base method: safe on an SSLSocket used by another thread
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)
                    except OSError:
                        pass

    def stop(self) -> None:
        with self._lock:
            if self.stopped:
                return
            self.stopped = True
            self._conn = self._sock = None
        if self.at is not None:
            _watchdog.disarm(self)


def fetch(
    url: str,
    settings: FetchSettings,
    previous: Optional[Previous] = None,
    *,
    tmp_dir: str,
    force: bool = False,
    session: Optional[requests.Session] = None,
) -> Outcome:
    """Check (and download) ``url``; see the module docstring.

    On ARCHIVED the body is in ``Outcome.tmp_path`` (in ``tmp_dir``) and the
    caller moves it into place with ``Storage.store``. On every other status
    no temporary file is left behind.
    """
    started = time.monotonic()
    attempt = _Attempt(settings, previous, tmp_dir, session, force)
    outcome: Optional[Outcome] = None
    try:
        outcome = attempt.run(url)
    except Exception as e:  # the last resort: never raise for a URL/server...
        if type(e).__name__ in _PASS_THROUGH:  # ...but let the worker's time limits through
            raise
        log.exception("Unexpected error while fetching %r", url)
        outcome = attempt.result(
            status.SYSTEM_ERROR, f"Unexpected error during the check ({type(e).__name__})"
        )
    finally:
        attempt.close()
        if outcome is None or outcome.tmp_path is None:
            attempt.discard_tmp()
    outcome.duration = time.monotonic() - started
    return outcome


# Celery's time limits and shutdown signals (matched by name: no celery import here).
_PASS_THROUGH = frozenset({"SoftTimeLimitExceeded", "TimeLimitExceeded", "Terminated"})


class _Attempt:
    def __init__(self, settings, previous, tmp_dir, session, force):
        self.settings: FetchSettings = settings
        self.previous: Previous = previous or Previous()
        self.tmp_dir = tmp_dir
        self.session = session
        self.force = force
        self.checked_at = _utcnow()
        self.url = self.final_url = ""
        self.info: dict = {}  # header fields of the final response, once known
        self.bytes_received = 0
        self.tmp_path: Optional[str] = None
        self.deadline: Optional[_Deadline] = None
        self.host_answered: Optional[bool] = None
        self.moved_to: Optional[str] = None

    # -- plumbing ------------------------------------------------------------

    def result(self, status_id: int, reason: str, **fields: Any) -> Outcome:
        redirected = self.final_url if self.final_url and self.final_url != self.url else None
        fields.setdefault("url_redirected_to", redirected)
        fields.setdefault("bytes_received", self.bytes_received)
        fields.setdefault("host_answered", self.host_answered)
        fields.setdefault("moved_to", self.moved_to)
        for key, value in self.info.items():
            fields.setdefault(key, value)
        return Outcome(status_id, reason, self.url, checked_at=self.checked_at, **fields)

    def stop(self, status_id: int, reason: str, **fields: Any) -> _Done:
        return _Done(self.result(status_id, reason, **fields))

    def close(self) -> None:
        if self.deadline is not None:
            self.deadline.stop()

    def discard_tmp(self) -> None:
        if self.tmp_path:
            try:
                os.unlink(self.tmp_path)
            except FileNotFoundError:
                pass
            self.tmp_path = None

    # -- main flow -----------------------------------------------------------

    def run(self, raw_url: str) -> Outcome:
        self.url = self.final_url = (raw_url or "").strip() if isinstance(raw_url, str) else ""
        try:
            self.url = self.final_url = normalise_url(raw_url)
        except InvalidURL as e:
            return self.result(status.URL_INVALID, e.reason)
        try:
            return self._run()
        except _Done as done:
            return done.outcome

    def _run(self) -> Outcome:
        prev = self.previous
        use_previous = (freshness.same_url(prev.url, self.url)
                        and freshness.cache_file_ok(prev, self.settings.download))
        fresh = freshness.fresh_until(prev, self.url, download=self.settings.download,
                                      force=self.force, now=self.checked_at)
        if fresh is not None:
            return self.result(
                status.UNCHANGED,
                f"Still fresh until {fresh.astimezone(timezone.utc).isoformat()}",
                etag=prev.etag,
                last_modified=prev.last_modified,
                sha256=prev.sha256,
                fresh_until=fresh,
                fresh_skip=True,
            )
        validators = {}
        if use_previous:
            if _header_safe(prev.etag):
                validators["If-None-Match"] = prev.etag
            if _header_safe(prev.last_modified):
                validators["If-Modified-Since"] = prev.last_modified

        if self.session is None:
            self.session = get_session(self.settings)
        self.deadline = _Deadline(self.settings.total_timeout)
        with netguard.observe_sockets(self.deadline.observe):
            response = self._follow_redirects(validators)
            try:
                return self._handle(response, validators)
            finally:
                response.close()

    def _follow_redirects(self, validators: dict) -> requests.Response:
        visited = {self.url}
        permanent = True  # every hop so far was a 301 / 308
        for hop in range(self.settings.max_redirects + 1):
            response = self._request(self.final_url, validators)
            if response.status_code not in REDIRECT_CODES:
                return response
            permanent = permanent and response.status_code in PERMANENT_REDIRECT_CODES
            location = response.headers.get("Location")
            if not location:
                return response  # reported as an HTTP error
            self._discard(response)
            target = urljoin(self.final_url, _fix_latin1(location.strip()))
            try:
                target = normalise_url(target)
            except InvalidURL as e:
                self.final_url = target
                reason = f"Redirected to an invalid URL: {e.reason}"
                raise self.stop(status.URL_INVALID, reason) from None
            if target in visited:  # final_url stays the hop that looped back
                raise self.stop(status.DOWNLOAD_ERROR, "Redirect loop")
            self.final_url = target
            if permanent and target != self.url:
                self.moved_to = target
            if hop == self.settings.max_redirects:
                raise self.stop(
                    status.DOWNLOAD_ERROR,
                    f"Too many redirects (over {self.settings.max_redirects})",
                )
            visited.add(target)
        raise AssertionError("unreachable")

    def _request(self, url: str, validators: dict) -> requests.Response:
        s = self.settings
        left = self.deadline.remaining()
        if left is not None and left <= 0:
            raise self._timeout()
        connect = min(s.connect_timeout, left) if left is not None else s.connect_timeout
        read = min(s.read_timeout, left) if left is not None else s.read_timeout
        proxies = {"http": s.proxy, "https": s.proxy} if s.proxy else None
        first_hop = url == self.url
        try:
            response = self.session.request(
                "GET",
                url,
                headers=validators,
                stream=True,
                allow_redirects=False,
                timeout=(connect, read),
                proxies=proxies,
                verify=s.verify_https,
            )
        except BlockedAddress as e:
            raise self.stop(status.URL_INVALID, e.reason) from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
            timed_out = isinstance(e, requests.Timeout) or _find(e, _READ_TIMEOUTS)
            if first_hop and (self.deadline.expired or timed_out):
                self.host_answered = False
            raise self._request_error(e, url) from None
        if first_hop:
            self.host_answered = True
        return response

    # -- response handling ---------------------------------------------------

    def _handle(self, response: requests.Response, validators: dict) -> Outcome:
        code = response.status_code
        headers = response.headers
        info = self.info = self._header_fields(response)  # result() adds them
        if code == 304 and validators:
            self._discard(response)
            info["etag"] = info["etag"] or self.previous.etag
            info["last_modified"] = info["last_modified"] or self.previous.last_modified
            return self.result(
                status.UNCHANGED, "Content has not changed", sha256=self.previous.sha256
            )
        if not 200 <= code < 300:
            self._discard(response)
            reason = f"Server returned {_status_line(response)}"
            if code in REDIRECT_CODES:
                reason += " without a Location header"
            retry_after = _parse_retry_after(headers.get("Retry-After"))
            if retry_after is not None:
                reason += f" (retry after {retry_after:g} s)"
            return self.result(
                status.DOWNLOAD_ERROR,
                reason,
                transient=code >= 500 or code in TRANSIENT_CODES,
                retry_after=retry_after,
            )

        declared_type = _media_type(headers.get("Content-Type"))
        length = _content_length(headers)
        filename = _suggest_filename(headers.get("Content-Disposition"), self.final_url)
        if not self.settings.download:
            response.close()
            return self.result(
                status.CHECKED,
                f"Link works (server returned {_status_line(response)}); file not downloaded",
                mimetype=declared_type,
                size=length,
                filename=filename,
                is_web_page=declared_type in HTML_TYPES,
            )
        cap = self.settings.max_content_length or 0
        if cap and length is not None and length > cap:
            response.close()
            return self.result(
                status.CHOSE_NOT_TO_DOWNLOAD,
                f"File too large: {_mb(length)} is over the {_mb(cap)} limit",
                size=length,
                mimetype=declared_type,
                filename=filename,
            )
        return self._download(response, declared_type, length, filename)

    def _header_fields(self, response: requests.Response) -> dict:
        headers = response.headers
        return {
            "http_status": response.status_code,
            "etag": headers.get("ETag") or None,
            "last_modified": headers.get("Last-Modified") or None,
            "cache_control": headers.get("Cache-Control") or None,
            "fresh_until": _fresh_until(headers, self.checked_at, self.settings.max_fresh_seconds),
        }

    def _download(self, response, declared_type, length, filename) -> Outcome:
        raw = response.raw
        cap = self.settings.max_content_length or 0
        chunk_size = max(int(self.settings.chunk_size or 0), 1024)
        hasher = _Hasher()
        head = bytearray()
        written = 0
        try:
            os.makedirs(self.tmp_dir, exist_ok=True)
            fd, self.tmp_path = tempfile.mkstemp(dir=self.tmp_dir, prefix="fetch-", suffix=".part")
        except OSError as e:
            reason = f"Could not create a temporary file ({_os_error(e)})"
            raise self.stop(status.SYSTEM_ERROR, reason) from None
        with open(fd, "wb", buffering=0) as out, hasher:
            try:
                for chunk in _chunks(raw, chunk_size, self.deadline):
                    written += len(chunk)
                    self.bytes_received = raw.tell()
                    if cap and written > cap:
                        raise self._too_large(cap, written, response)
                    hasher.update(chunk)
                    if len(head) < SNIFF_BYTES:
                        head += chunk[: SNIFF_BYTES - len(head)]
                    self._write(out, chunk)
                self.deadline.observe(None, None)  # the connection is back in the pool
                self.bytes_received = raw.tell()
                if self.deadline.expired:
                    raise self._timeout()
                if raw.length_remaining:  # belt and braces: urllib3 raises first
                    raise self._incomplete(length)
            except _Done:
                raise
            except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as e:
                self.bytes_received = raw.tell()
                raise self._body_error(e, length, response) from None

        sha1_hex, sha256_hex = hasher.hexdigests()
        mimetype = _decide_mimetype(declared_type, bytes(head), filename)
        is_web_page = mimetype in HTML_TYPES
        fields = dict(
            mimetype=mimetype,
            size=written,
            hash=sha1_hex,
            sha256=sha256_hex,
            filename=filename,
            is_web_page=is_web_page,
        )
        if self.previous.sha256 and self.previous.sha256 == sha256_hex and freshness.cache_file_ok(
                self.previous, self.settings.download):
            self.discard_tmp()
            return self.result(
                status.UNCHANGED,
                "Content has not changed (the server sent the same file again)",
                **fields,
            )
        if written == 0:
            reason = "Empty file (0 bytes)"
        elif is_web_page:
            reason = f"Downloaded {_human(written)}, but the link goes to a web page, not a file"
        else:
            reason = f"Downloaded {_human(written)}"
        return self.result(status.ARCHIVED, reason, tmp_path=self.tmp_path, **fields)

    def _discard(self, response: requests.Response) -> None:
        """Let go of a response whose body is not wanted: read a small rest so
        the connection can be reused, otherwise close it."""
        raw = response.raw
        remaining = getattr(raw, "length_remaining", None)
        try:
            if remaining is not None and remaining <= 64 * 1024:
                raw.drain_conn()  # still under the deadline: a drip cannot hold it
                if not self.deadline.expired:
                    raw.release_conn()
                    return
        except Exception:  # noqa: BLE001 - any failure: just close
            pass
        finally:
            self.deadline.observe(None, None)  # the connection may be back in the pool
        response.close()

    def _write(self, out: Any, chunk: bytes) -> None:
        """Write all of ``chunk`` to the unbuffered file; a disk error (disk
        full...) is a system error."""
        view = memoryview(chunk)
        try:
            while view:
                view = view[out.write(view) :]
        except OSError as e:
            reason = f"Could not save the download ({_os_error(e)})"
            raise self.stop(status.SYSTEM_ERROR, reason) from None

    # -- error mapping -------------------------------------------------------

    def _timeout(self) -> _Done:
        return self.stop(
            status.REQUEST_FAILED,
            f"Timed out after {self.settings.total_timeout:g} s",
            transient=True,
        )

    def _too_large(self, cap: int, written: int, response) -> _Done:
        encoding = response.headers.get("Content-Encoding", "").strip().lower()
        reason = f"File too large: over the {_mb(cap)} limit"
        if encoding and encoding != "identity":
            reason += (
                f" once decompressed (the server sent {_human(self.bytes_received)} "
                f"{encoding}-compressed)"
            )
        else:
            reason += " (the server did not say how large it is)"
        return self.stop(status.CHOSE_NOT_TO_DOWNLOAD, reason)

    def _incomplete(self, length: Optional[int]) -> _Done:
        if length is not None:
            reason = f"Connection closed after {self.bytes_received} of {length} bytes"
        else:
            reason = (
                f"Connection closed before the end of the file (after {self.bytes_received} bytes)"
            )
        return self.stop(status.DOWNLOAD_FAILURE, reason, transient=True)

    def _body_error(self, e: BaseException, length: Optional[int], response) -> _Done:
        if self.deadline.expired:
            return self._timeout()
        if _find(e, _READ_TIMEOUTS):
            return self.stop(
                status.REQUEST_FAILED,
                f"Timed out after {self.settings.read_timeout:g} s waiting for data",
                transient=True,
            )
        if _find(e, (DecodeError,)):
            encoding = response.headers.get("Content-Encoding", "?")
            return self.stop(
                status.DOWNLOAD_FAILURE,
                f"Could not decompress the response (Content-Encoding: {encoding})",
            )
        return self._incomplete(length)

    def _request_error(self, e: BaseException, url: str) -> _Done:
        host = netguard.host_of(url)
        if self.deadline.expired:
            return self._timeout()
        if isinstance(e, requests.exceptions.InvalidURL):
            return self.stop(status.URL_INVALID, "URL is not valid")
        if isinstance(e, requests.ConnectTimeout):
            return self.stop(
                status.REQUEST_FAILED,
                f"Timed out after {self.settings.connect_timeout:g} s connecting to {host}",
                transient=True,
            )
        if isinstance(e, requests.ReadTimeout):
            return self.stop(
                status.REQUEST_FAILED,
                f"Timed out after {self.settings.read_timeout:g} s"
                " waiting for the server to respond",
                transient=True,
            )
        if isinstance(e, requests.exceptions.SSLError) or _find(e, (ssl.SSLError,)):
            return self.stop(status.REQUEST_FAILED, _tls_reason(e, host))
        if isinstance(e, requests.exceptions.ProxyError):
            return self.stop(
                status.REQUEST_FAILED, "Could not connect through the proxy server", transient=True
            )
        resolution = _find(e, (NameResolutionError, socket.gaierror))
        if resolution is not None:
            gai = _find(e, (socket.gaierror,))
            temporary = gai is not None and gai.errno == socket.EAI_AGAIN
            return self.stop(
                status.REQUEST_FAILED, f"Could not resolve host name {host}", transient=temporary
            )
        if _find(e, (RemoteDisconnected,)):
            return self.stop(
                status.REQUEST_FAILED,
                "Server closed the connection without a response",
                transient=True,
            )
        if _find(e, (ConnectionRefusedError,)):
            return self.stop(status.REQUEST_FAILED, "Connection refused", transient=True)
        if _find(e, (ConnectionResetError,)):
            return self.stop(
                status.REQUEST_FAILED, "Connection reset by the server", transient=True
            )
        os_error = _find(e, (OSError,))
        if os_error is not None and getattr(os_error, "strerror", None):
            return self.stop(
                status.REQUEST_FAILED, f"Could not connect ({os_error.strerror})", transient=True
            )
        if _find(e, (urllib3.exceptions.ProtocolError,)) or isinstance(e, requests.ConnectionError):
            return self.stop(
                status.REQUEST_FAILED, "Server sent an invalid HTTP response", transient=True
            )
        return self.stop(status.REQUEST_FAILED, f"Request failed ({type(e).__name__})")


# --------------------------------------------------------------------------
# Helpers


class _Hasher:
    """sha1 + sha256 of a stream. Past the first MB the hashing moves to a
    helper thread (hashlib releases the GIL), overlapping it with the socket
    reads and file writes. Chunks are handed over in batches of about 1 MB
    through a small bounded queue, so memory stays flat (a few MB at most)."""

    INLINE_BYTES = 1 << 20
    BATCH_BYTES = 1 << 20

    def __init__(self) -> None:
        self._hashes = (hashlib.sha1(), hashlib.sha256())
        self._seen = 0
        self._batch: list = []
        self._batch_bytes = 0
        self._queue: Optional[queue.Queue] = None
        self._thread: Optional[threading.Thread] = None

    def update(self, chunk: bytes) -> None:
        self._seen += len(chunk)
        if self._queue is None and self._seen <= self.INLINE_BYTES:
            for h in self._hashes:
                h.update(chunk)
            return
        if self._queue is None:
            self._queue = queue.Queue(maxsize=4)
            self._thread = threading.Thread(target=self._work, name="fetch-hash", daemon=True)
            self._thread.start()
        self._batch.append(chunk)
        self._batch_bytes += len(chunk)
        if self._batch_bytes >= self.BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            self._queue.put(self._batch)
            self._batch, self._batch_bytes = [], 0

    def _work(self) -> None:
        while (batch := self._queue.get()) is not None:
            for chunk in batch:
                for h in self._hashes:
                    h.update(chunk)

    def close(self) -> None:
        if self._thread is not None:
            self._flush()
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def hexdigests(self) -> tuple:
        self.close()
        return tuple(h.hexdigest() for h in self._hashes)

    def __enter__(self) -> _Hasher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _chunks(raw: Any, chunk_size: int, deadline: _Deadline) -> Iterator[bytes]:
    """Decoded body chunks, one socket read at a time (``read1``), checking
    the deadline between reads."""
    while True:
        left = deadline.remaining()
        if left is not None and left <= 0:
            return
        chunk = raw.read1(chunk_size, decode_content=True)
        if not chunk:
            return
        yield chunk


# (not urllib3's TimeoutError: its NewConnectionError, a refused connection, is one)
_READ_TIMEOUTS = (urllib3.exceptions.ReadTimeoutError, requests.ReadTimeout, socket.timeout)


def _find(exc: BaseException, types: tuple) -> Optional[BaseException]:
    """The first exception of ``types`` in ``exc``'s chain: causes, contexts,
    ``args`` and urllib3's ``reason``."""
    seen, todo = set(), [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, types):
            return current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        linked.extend(getattr(current, "args", ()))
        todo.extend(item for item in linked if isinstance(item, BaseException))
    return None


_UNTRUSTED_CODES = {2, 18, 19, 20, 21, 27}  # unknown issuer, self-signed, untrusted...


def _tls_reason(e: BaseException, host: str) -> str:
    verify = _find(e, (ssl.SSLCertVerificationError,))
    if verify is not None:
        code = getattr(verify, "verify_code", None)
        message = str(getattr(verify, "verify_message", "") or verify)
        if code in (62, 64) or "mismatch" in message.lower() or "doesn't match" in message:
            return f"TLS certificate not valid for host {host}"
        if code == 10 or "expired" in message.lower():
            return "TLS certificate has expired"
        if code in _UNTRUSTED_CODES or "self" in message.lower() or "issuer" in message.lower():
            return "TLS certificate is self-signed / not trusted"
        return f"TLS certificate could not be verified ({message})"
    ssl_error = _find(e, (ssl.SSLError,))
    detail = getattr(ssl_error, "reason", None) if ssl_error is not None else None
    if detail == "WRONG_VERSION_NUMBER":
        return "TLS handshake failed (the server does not seem to speak HTTPS on this port)"
    return f"TLS handshake failed ({detail or type(e).__name__})"


def _os_error(e: OSError) -> str:
    return e.strerror or type(e).__name__  # never the file path


def _header_safe(value: Optional[str]) -> bool:
    if not value or not value.isprintable():
        return False
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _fix_latin1(value: str) -> str:
    """http.client decodes headers as latin-1; undo it for UTF-8 values."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def _status_line(response: requests.Response) -> str:
    code = response.status_code
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = (response.reason or "").strip()
    return f"{code} {phrase}".strip()


def _media_type(content_type: Optional[str]) -> Optional[str]:
    value = (content_type or "").split(";", 1)[0].strip().lower()
    return value if value and "/" in value else None


def _content_length(headers: Any) -> Optional[int]:
    value = headers.get("Content-Length")
    if value is None or "chunked" in headers.get("Transfer-Encoding", "").lower():
        return None
    try:
        # http.client accepts "a, a" duplicates; take the first value
        length = int(value.split(",")[0].strip())
    except ValueError:
        return None
    return length if length >= 0 else None


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1_000_000:.1f} MB"


def _human(nbytes: int) -> str:
    if nbytes < 1000:
        return f"{nbytes} bytes"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def _parse_retry_after(value: Optional[str], now: Optional[datetime] = None) -> Optional[float]:
    """Seconds to wait, from delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, round((when - (now or _utcnow())).total_seconds()))


def _cache_directives(value: Optional[str]) -> dict:
    directives = {}
    for part in (value or "").split(","):
        name, _, arg = part.strip().partition("=")
        if name:
            directives[name.strip().lower()] = arg.strip().strip('"')
    return directives


def _fresh_until(headers: Any, now: datetime, max_seconds: float) -> Optional[datetime]:
    """Until when the response may be reused without asking again
    (Cache-Control max-age, else Expires), capped at ``max_seconds``."""
    if not max_seconds or max_seconds <= 0:
        return None
    cc = _cache_directives(headers.get("Cache-Control"))
    if "no-store" in cc or "no-cache" in cc:
        return None
    try:
        age = max(int(headers.get("Age", "0")), 0)
    except ValueError:
        age = 0
    seconds: Optional[float] = None
    if "max-age" in cc:
        try:
            seconds = int(cc["max-age"]) - age
        except ValueError:
            return None
    elif headers.get("Expires"):
        try:
            expires = parsedate_to_datetime(headers["Expires"])
            date = parsedate_to_datetime(headers["Date"]) if headers.get("Date") else now
        except (TypeError, ValueError, IndexError):
            return None
        if expires.tzinfo is None or date.tzinfo is None:
            return None
        seconds = (expires - date).total_seconds() - age
    if seconds is None or seconds <= 0:
        return None
    return now + timedelta(seconds=min(seconds, max_seconds))


_CD_PARAM = re.compile(
    r"""(?:^|;)\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)"""
)


def _filename_from_disposition(value: Optional[str]) -> Optional[str]:
    """``filename*`` (RFC 5987/6266) first, then ``filename``."""
    if not value:
        return None
    params = {}
    for name, raw in _CD_PARAM.findall(value):
        raw = raw.strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params.setdefault(name.lower(), raw)
    extended = params.get("filename*")
    if extended:
        charset, _, rest = extended.partition("'")
        _lang, _, encoded = rest.partition("'")
        if not _:
            encoded = extended
        try:
            return unquote(encoded, encoding=charset or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError):
            return unquote(encoded, encoding="utf-8", errors="replace")
    plain = params.get("filename")
    return _fix_latin1(plain) if plain else None


def _suggest_filename(disposition: Optional[str], url: str) -> str:
    name = _filename_from_disposition(disposition)
    if not clean_filename(name):
        segment = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
        name = unquote(segment, errors="replace")
    return sanitise_filename(name)


# -- mimetype sniffing -----------------------------------------------------

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
XLS = "application/vnd.ms-excel"
OLE_SIGNATURE = bytes.fromhex("D0CF11E0A1B11AE1")
_GEOJSON = re.compile(
    r'"type"\s*:\s*"(FeatureCollection|Feature|Point|MultiPoint|LineString|MultiLineString'
    r'|Polygon|MultiPolygon|GeometryCollection)"'
)
_HTML_START = re.compile(r"<(!doctype\s+html|html|head|body|title|meta|script|div|p|table)[\s>/]")


def sniff_mimetype(head: bytes, filename: Optional[str] = None) -> Optional[str]:
    """Guess a mimetype from the first bytes of a file (None when empty).

    Office formats are told apart by the names inside the ZIP / OLE2
    container, binary formats by puremagic, and CSV, JSON, GeoJSON, HTML and
    XML by small text heuristics; ``filename``'s extension is the last hint.
    """
    if not head:
        return None
    found = _sniff_container(head, filename)
    if found:
        return found
    text = _as_text(head)
    if text is None:
        try:
            found = puremagic.from_string(head, mime=True)
        except (puremagic.PureError, ValueError):
            found = None
        return found or _guess_from_name(filename) or "application/octet-stream"
    return _sniff_text(text, truncated=len(head) >= SNIFF_BYTES) or "text/plain"


def _sniff_container(head: bytes, filename: Optional[str]) -> Optional[str]:
    if head.startswith(b"PK\x03\x04"):
        if b"xl/" in head:
            return XLSX
        if b"word/" in head:
            return DOCX
        if b"ppt/" in head:
            return PPTX
        match = re.match(rb"PK\x03\x04.{26}mimetype(application/vnd\.oasis\.[a-z.-]+)", head, re.S)
        if match:
            return match.group(1).decode("ascii")
        return "application/zip"
    if head.startswith(OLE_SIGNATURE):
        if "Workbook".encode("utf-16-le") in head or "Book\x00".encode("utf-16-le") in head:
            return XLS
        if "WordDocument".encode("utf-16-le") in head:
            return "application/msword"
        if "PowerPoint Document".encode("utf-16-le") in head:
            return "application/vnd.ms-powerpoint"
        return _guess_from_name(filename) or XLS  # on data portals, most OLE2 files are XLS
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    return None


def _as_text(head: bytes) -> Optional[str]:
    if b"\x00" in head[:8192]:
        if head.startswith((b"\xff\xfe", b"\xfe\xff")):
            try:
                return head.decode("utf-16")[:SNIFF_BYTES]
            except UnicodeDecodeError:
                return None
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a character cut at the end
            text = head.decode("latin-1")
            if sum(not (ch.isprintable() or ch in "\r\n\t\f") for ch in text[:4096]) > 40:
                return None
        else:
            text = head[: e.start].decode("utf-8")
    return text.lstrip("\ufeff")


def _sniff_text(text: str, truncated: bool) -> Optional[str]:
    stripped = text.lstrip()
    low = stripped[:2048].lower()
    if _HTML_START.match(low) or (
        low.startswith("<?xml") and re.search(r"<(!doctype\s+)?html", low)
    ):
        return "text/html"
    if low.startswith("<"):
        return "application/xml"
    if stripped[:1] in ("{", "["):
        if _GEOJSON.search(stripped[:SNIFF_BYTES]):
            return "application/geo+json"
        if not truncated:
            try:
                json.loads(stripped)
                return "application/json"
            except ValueError:
                return None
        if re.match(r'[\[{]\s*(["{\[\]}0-9-]|true|false|null)', stripped):
            return "application/json"
        return None
    return _sniff_csv(text, truncated)


def _sniff_csv(text: str, truncated: bool) -> Optional[str]:
    lines = text.splitlines()
    if truncated and len(lines) > 1:
        lines = lines[:-1]  # probably cut in the middle
    lines = [line for line in lines[:50] if line.strip()]
    if len(lines) < 2:
        return None
    for delimiter, mimetype in (
        (",", "text/csv"),
        (";", "text/csv"),
        ("\t", "text/tab-separated-values"),
        ("|", "text/csv"),
    ):
        if delimiter not in lines[0]:
            continue
        try:
            widths = [len(row) for row in csv.reader(lines, delimiter=delimiter)]
        except csv.Error:
            continue
        if widths[0] >= 2 and sum(w == widths[0] for w in widths) >= 0.9 * len(widths):
            return mimetype
    return None


def _guess_from_name(filename: Optional[str]) -> Optional[str]:
    if not filename:
        return None
    guessed, _ = mimetypes.guess_type(filename, strict=False)
    return guessed


def _decide_mimetype(
    declared: Optional[str], head: bytes, filename: Optional[str]
) -> Optional[str]:
    if declared and declared not in GENERIC_TYPES and declared not in ZIP_TYPES:
        return declared
    sniffed = sniff_mimetype(head, filename)
    if declared in ZIP_TYPES:
        return (
            sniffed
            if sniffed and sniffed != "application/zip" and "zip" not in sniffed
            else declared
        )
    if declared == "text/plain" and sniffed in (None, "application/octet-stream"):
        return declared
    return sniffed or declared or _guess_from_name(filename)
