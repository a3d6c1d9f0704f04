"""Reasons in the reader's language.

The download engine stores each check's reason as one English sentence
(``archival.reason``; ckanext-qa and the exports read that text). This
module knows every sentence the engine writes, as a template with named
parameters (``"Server returned {status}"``), gives each template a stable
code, and turns a stored sentence back into ``(code, params)`` so that a
page can show it translated. A sentence it does not know (rows written by
the older archiver, or by a future engine) is shown as it is.

It imports nothing from CKAN: :func:`parse` is plain Python, and
:func:`translate` takes the gettext function of the caller.
"""

from __future__ import annotations

import re
from typing import Callable, NamedTuple, Optional


def N_(message: str) -> str:
    """Mark a message for extraction (babel's default keywords include it)."""
    return message


# code -> English template, exactly as the engine formats it. Keep in step
# with fetch.py, netguard.py and tasks.py (tests/test_reasons.py checks the
# engine's own outputs against this table).
TEMPLATES: dict[str, str] = {
    # HTTP answers
    "http_error": N_("Server returned {status}"),
    "http_redirect_no_location": N_("Server returned {status} without a Location header"),
    "http_error_retry_after": N_("Server returned {status} (retry after {seconds} s)"),
    "http_redirect_no_location_retry_after": N_(
        "Server returned {status} without a Location header (retry after {seconds} s)"),
    "redirect_invalid": N_("Redirected to an invalid URL: {reason}"),
    "redirect_loop": N_("Redirect loop"),
    "too_many_redirects": N_("Too many redirects (over {max})"),
    "checked_only": N_("Link works (server returned {status}); file not downloaded"),
    "fresh": N_("Still fresh until {time}"),
    "unchanged": N_("Content has not changed"),
    "unchanged_same_file": N_("Content has not changed (the server sent the same file again)"),
    # downloads
    "downloaded": N_("Downloaded {size}"),
    "downloaded_web_page": N_("Downloaded {size}, but the link goes to a web page, not a file"),
    "empty_file": N_("Empty file (0 bytes)"),
    "too_large": N_("File too large: {size} is over the {limit} limit"),
    "too_large_compressed": N_(
        "File too large: over the {limit} limit once decompressed "
        "(the server sent {size} {encoding}-compressed)"),
    "too_large_unknown": N_(
        "File too large: over the {limit} limit (the server did not say how large it is)"),
    "closed_after": N_("Connection closed after {received} of {length} bytes"),
    "closed_early": N_(
        "Connection closed before the end of the file (after {received} bytes)"),
    "decompress_failed": N_("Could not decompress the response (Content-Encoding: {encoding})"),
    "tmp_file_failed": N_("Could not create a temporary file ({error})"),
    "save_failed": N_("Could not save the download ({error})"),
    # network
    "timeout": N_("Timed out after {seconds} s"),
    "timeout_data": N_("Timed out after {seconds} s waiting for data"),
    "timeout_connect": N_("Timed out after {seconds} s connecting to {host}"),
    "timeout_response": N_("Timed out after {seconds} s waiting for the server to respond"),
    "proxy_failed": N_("Could not connect through the proxy server"),
    "dns_failed": N_("Could not resolve host name {host}"),
    "closed_no_response": N_("Server closed the connection without a response"),
    "refused": N_("Connection refused"),
    "reset": N_("Connection reset by the server"),
    "connect_failed": N_("Could not connect ({error})"),
    "invalid_response": N_("Server sent an invalid HTTP response"),
    "request_failed": N_("Request failed ({error})"),
    "tls_wrong_host": N_("TLS certificate not valid for host {host}"),
    "tls_expired": N_("TLS certificate has expired"),
    "tls_untrusted": N_("TLS certificate is self-signed / not trusted"),
    "tls_unverified": N_("TLS certificate could not be verified ({error})"),
    "tls_not_https": N_(
        "TLS handshake failed (the server does not seem to speak HTTPS on this port)"),
    "tls_failed": N_("TLS handshake failed ({error})"),
    # URLs (netguard)
    "url_empty": N_("URL is empty"),
    "url_control_chars": N_("URL contains control characters"),
    "url_invalid": N_("URL is not valid"),
    "url_local_file": N_("URL looks like a file on a computer, not a web address"),
    "url_incomplete": N_(
        "URL is not complete: it must be absolute and start with http:// or https://"),
    "url_scheme": N_(
        '"{scheme}:" links cannot be checked: only http:// and https:// URLs are supported'),
    "url_no_host": N_("URL has no host name"),
    "url_bad_port": N_("URL has an invalid port number"),
    "url_bad_host": N_("URL has an invalid host name"),
    "url_private": N_(
        "URL points to a private or local network address ({address}), "
        "which the archiver may not fetch"),
    # the worker
    "upload_missing": N_("The uploaded file is missing from CKAN's storage"),
    "upload": N_("Uploaded file"),
    "host_busy": N_("Host busy: waited too long for a free slot"),
    "broker_unavailable": N_("Queue broker unavailable (per-host limits)"),
    "host_down": N_(
        "Not tried: {host} timed out on its last {count} requests or more "
        "(it is tried again once a minute)"),
    "archive_full": N_("Chose not to download: archive full"),
    "archive_unusable": N_(
        "System error during archival: the archive folder is not usable ({error})"),
    "archive_dir_not_dir": N_(
        "System error during archival: archive_dir {path} is not a directory"),
    "archive_dir_parent_not_dir": N_(
        "System error during archival: archive_dir {path} cannot be created: "
        "{parent} is not a directory"),
    "archive_dir_cannot_create": N_(
        "System error during archival: archive_dir {path} cannot be created ({error})"),
    "archive_dir_not_writable": N_(
        "System error during archival: archive_dir {path} is not writable by the worker"),
    "archive_dir_not_writable_error": N_(
        "System error during archival: archive_dir {path} is not writable ({error})"),
    "archive_dir_quota_full": N_(
        "System error during archival: archive_dir {path} is full "
        "(max_archive_bytes {limit} reached)"),
    "archive_dir_full": N_("System error during archival: archive_dir {path} is full ({error})"),
    "archive_dir_unusable": N_(
        "System error during archival: archive_dir {path} is not usable ({error})"),
    "worker_stopped": N_(
        "System error during archival: the worker stopped every time it archived this"),
    "save_row_failed": N_(
        "System error during archival: the result could not be saved ({error})"),
    "system_error": N_("System error during archival: {error}"),
    "resource_deleted": N_("Resource deleted"),
}

#: suffix the worker appends to a reason when the check is retried
RETRY_SUFFIX = " (will retry)"
RETRY_TEMPLATE = N_("{reason} (will retry)")

#: parameters that are themselves a reason (translated in turn)
_NESTED = {"reason"}


class Parsed(NamedTuple):
    code: str
    params: dict[str, str]
    retry: bool = False


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>.+?)"
                    for i, part in enumerate(parts))
    return re.compile(regex, re.DOTALL)


def _literal_length(template: str) -> int:
    return len(re.sub(r"\{\w+\}", "", template))


# most specific first: a template with more fixed text wins over one whose
# parameter could swallow that text
_MATCHERS: list[tuple[str, re.Pattern]] = [
    (code, _pattern(template)) for code, template in sorted(
        TEMPLATES.items(), key=lambda item: -_literal_length(item[1]))]


def parse(reason: Optional[str]) -> Optional[Parsed]:
    """``(code, params, retry)`` of a stored reason, or None if unknown."""
    if not reason:
        return None
    retry = reason.endswith(RETRY_SUFFIX)
    text = reason[:-len(RETRY_SUFFIX)] if retry else reason
    for code, pattern in _MATCHERS:
        match = pattern.fullmatch(text)
        if match:
            return Parsed(code, match.groupdict(), retry)
    return None


def format_reason(code: str, **params: str) -> str:
    """The English sentence of a code (what the engine stores)."""
    return TEMPLATES[code].format(**params)


def translate(reason: Optional[str], gettext: Callable[[str], str]) -> str:
    """``reason`` in the language of ``gettext`` (unknown text unchanged)."""
    if not reason:
        return ""
    parsed = parse(reason)
    if parsed is None:
        return reason
    params = {key: translate(value, gettext) if key in _NESTED else value
              for key, value in parsed.params.items()}
    try:
        text = gettext(TEMPLATES[parsed.code]).format(**params)
    except (KeyError, IndexError, ValueError):  # a broken translation
        text = TEMPLATES[parsed.code].format(**params)
    if parsed.retry:
        try:
            text = gettext(RETRY_TEMPLATE).format(reason=text)
        except (KeyError, IndexError, ValueError):
            text += RETRY_SUFFIX
    return text
