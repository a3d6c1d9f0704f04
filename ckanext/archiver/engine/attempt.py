"""One HTTP attempt at a resource URL: the archiver's download engine.

:func:`fetch` checks a URL and (unless in check-only mode) streams its body to
a temporary file, and always returns an :class:`Outcome` carrying a status id
from :mod:`ckanext.archiver.status` and a reason a publisher can read. It never
raises for anything a URL or a server can do.

What it does, in order:

* normalises the URL (:func:`netguard.normalise_url`); only http(s);
* skips the request while the previous response is still fresh
  (``Previous.fresh_for``, the one rule) unless ``force``; such an outcome
  has ``fresh_skip`` set (no contact was made);
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

import logging
import os
import time
from datetime import timezone
from typing import Any, Optional
from urllib.parse import urljoin

import requests
import urllib3

from ckanext.archiver import status
from ckanext.archiver.engine import errors, netguard
from ckanext.archiver.engine.deadline import Deadline
from ckanext.archiver.engine.download import Download
from ckanext.archiver.engine.errors import READ_TIMEOUTS, Done, find
from ckanext.archiver.engine.headers import (
    content_length,
    fix_latin1,
    fresh_until,
    header_safe,
    mb,
    media_type,
    parse_retry_after,
    status_line,
    suggest_filename,
)
from ckanext.archiver.engine.netguard import BlockedAddress
from ckanext.archiver.engine.outcome import (
    FetchSettings,
    Outcome,
    Previous,
    cache_file_ok,
    now_utc,
)
from ckanext.archiver.engine.session import get_session
from ckanext.archiver.engine.sink import Sink, SinkFactory, StoreError
from ckanext.archiver.engine.sniff import HTML_TYPES
from ckanext.archiver.engine.urlnorm import InvalidURL, normalise_url

__all__ = ["PASS_THROUGH", "REDIRECT_CODES", "TRANSIENT_CODES", "fetch"]

log = logging.getLogger(__name__)

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
PERMANENT_REDIRECT_CODES = frozenset({301, 308})
TRANSIENT_CODES = frozenset({408, 425, 429})


# --------------------------------------------------------------------------
# The attempt


def fetch(
    url: str,
    settings: FetchSettings,
    previous: Optional[Previous] = None,
    *,
    tmp_dir: str,
    force: bool = False,
    session: Optional[requests.Session] = None,
    sink: Optional[SinkFactory] = None,
) -> Outcome:
    """Check (and download) ``url``; see the module docstring.

    On ARCHIVED the body is in ``Outcome.tmp_path`` (in ``tmp_dir``) and the
    caller moves it into place with ``Storage.store``. On every other status
    no temporary file is left behind. With ``sink`` (a factory called with
    the file name once the headers are in) the body is written to the sink
    instead: on ARCHIVED it is in ``Outcome.staged`` for the caller to
    ``complete()`` or ``abort()``; on every other status it was aborted.
    """
    started = time.monotonic()
    attempt = _Attempt(settings, previous, tmp_dir, session, force, sink)
    outcome: Optional[Outcome] = None
    try:
        outcome = attempt.run(url)
    except Exception as e:  # the last resort: never raise for a URL/server...
        if type(e).__name__ in PASS_THROUGH:  # ...but let the worker's time limits through
            raise
        log.exception("Unexpected error while fetching %r", url)
        outcome = attempt.result(
            status.SYSTEM_ERROR, f"Unexpected error during the check ({type(e).__name__})"
        )
    finally:
        attempt.close()
        if outcome is None or (outcome.tmp_path is None and outcome.staged is None):
            attempt.discard_tmp()
    outcome.duration = time.monotonic() - started
    return outcome


# Celery's time limits and shutdown signals (matched by name: no celery import here).
PASS_THROUGH = frozenset({"SoftTimeLimitExceeded", "TimeLimitExceeded", "Terminated"})


class _Attempt(Download):
    def __init__(self, settings, previous, tmp_dir, session, force, sink=None):
        self.settings: FetchSettings = settings
        self.previous: Previous = previous or Previous()
        self.tmp_dir = tmp_dir
        self.session = session
        self.force = force
        self.checked_at = now_utc()
        self.url = self.final_url = ""
        self.info: dict = {}  # header fields of the final response, once known
        self.bytes_received = 0
        self.tmp_path: Optional[str] = None
        self.sink: Optional[SinkFactory] = sink
        self.staged: Optional[Sink] = None
        self.deadline: Optional[Deadline] = None
        self.host_answered: Optional[bool] = None
        self.latency: Optional[float] = None
        self.moved_to: Optional[str] = None

    # -- plumbing ------------------------------------------------------------

    def result(self, status_id: int, reason: str, **fields: Any) -> Outcome:
        redirected = self.final_url if self.final_url and self.final_url != self.url else None
        fields.setdefault("url_redirected_to", redirected)
        fields.setdefault("bytes_received", self.bytes_received)
        fields.setdefault("host_answered", self.host_answered)
        fields.setdefault("latency", self.latency)
        fields.setdefault("moved_to", self.moved_to)
        for key, value in self.info.items():
            fields.setdefault(key, value)
        return Outcome(status_id, reason, self.url, checked_at=self.checked_at, **fields)

    def stop(self, status_id: int, reason: str, fields: Optional[dict] = None,
             **more: Any) -> Done:
        """The exception that ends the attempt with this result (``fields``
        and ``more``: the Outcome's other fields)."""
        return Done(self.result(status_id, reason, **(fields or {}), **more))

    def close(self) -> None:
        if self.deadline is not None:
            self.deadline.stop()

    def discard_tmp(self) -> None:
        if self.staged is not None:
            staged, self.staged = self.staged, None
            try:
                staged.abort()
            except StoreError as e:  # the store drops it by itself (lifecycle rule)
                log.warning("%s", e)
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
        except Done as done:
            return done.outcome

    def _cache_file_ok(self) -> bool:
        return cache_file_ok(self.previous.cache_filepath, self.settings.download)

    def _run(self) -> Outcome:
        prev = self.previous
        use_previous = prev.usable_for(self.url, self.settings.download)
        fresh = None if self.force else prev.fresh_for(
            self.url, self.settings.download, self.checked_at)
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
            if header_safe(prev.etag):
                validators["If-None-Match"] = prev.etag
            if header_safe(prev.last_modified):
                validators["If-Modified-Since"] = prev.last_modified

        if self.session is None:
            self.session = get_session(self.settings)
        self.deadline = Deadline(self.settings.total_timeout)
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
            target = urljoin(self.final_url, fix_latin1(location.strip()))
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
        first_hop = url == self.url
        try:
            try:
                response = self._send(url, validators)
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
                if not errors.stale_connection(e):
                    raise
                # The server was closing the pooled connection as the request
                # went (keep-alive timeout), before any byte of a response:
                # once more, on a new connection (one retry, never counted).
                log.debug("Pooled connection to %s was closed; retrying on a new one", url)
                with netguard.fresh_connections():
                    response = self._send(url, validators)
        except BlockedAddress as e:
            raise self.stop(status.URL_INVALID, e.reason) from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
            timed_out = isinstance(e, requests.Timeout) or find(e, READ_TIMEOUTS)
            if first_hop and (self.deadline.expired or timed_out):
                self.host_answered = False
            raise self._request_error(e, url) from None
        if first_hop:
            self.host_answered = True
            self.latency = response.elapsed.total_seconds()
        return response

    def _send(self, url: str, validators: dict) -> requests.Response:
        s = self.settings
        left = self.deadline.remaining()
        if left is not None and left <= 0:
            raise self._timeout()
        connect = min(s.connect_timeout, left) if left is not None else s.connect_timeout
        read = min(s.read_timeout, left) if left is not None else s.read_timeout
        proxies = {"http": s.proxy, "https": s.proxy} if s.proxy else None
        return self.session.request(
            "GET",
            url,
            headers=validators,
            stream=True,
            allow_redirects=False,
            timeout=(connect, read),
            proxies=proxies,
            verify=s.verify_https,
        )

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
            reason = f"Server returned {status_line(response)}"
            if code in REDIRECT_CODES:
                reason += " without a Location header"
            retry_after = parse_retry_after(headers.get("Retry-After"))
            if retry_after is not None:
                reason += f" (retry after {retry_after:g} s)"
            return self.result(
                status.DOWNLOAD_ERROR,
                reason,
                transient=code >= 500 or code in TRANSIENT_CODES,
                retry_after=retry_after,
            )

        declared_type = media_type(headers.get("Content-Type"))
        length = content_length(headers)
        filename = suggest_filename(headers.get("Content-Disposition"), self.final_url)
        if not self.settings.download:
            response.close()
            return self.result(
                status.CHECKED,
                f"Link works (server returned {status_line(response)}); file not downloaded",
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
                f"File too large: {mb(length)} is over the {mb(cap)} limit",
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
            "fresh_until": fresh_until(headers, self.checked_at, self.settings.max_fresh_seconds),
        }

    # -- errors (mapped by engine.errors) ------------------------------------

    def _timeout(self) -> Done:
        return self.stop(*errors.timeout(self.settings))

    def _too_large(self, cap: int, written: int, response: requests.Response) -> Done:
        encoding = response.headers.get("Content-Encoding", "")
        return self.stop(*errors.too_large(cap, encoding, self.bytes_received))

    def _incomplete(self, length: Optional[int]) -> Done:
        return self.stop(*errors.incomplete(length, self.bytes_received))

    def _body_error(self, e: BaseException, length: Optional[int], response) -> Done:
        encoding = response.headers.get("Content-Encoding", "?")
        return self.stop(*errors.body_error(e, self.settings, self.deadline.expired, length,
                                            self.bytes_received, encoding))

    def _request_error(self, e: BaseException, url: str) -> Done:
        return self.stop(*errors.request_error(e, url, self.settings, self.deadline.expired))
