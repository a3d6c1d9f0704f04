"""URL normalisation: whatever a publisher typed, as an absolute http(s) URL
with a plain-ASCII host (IDNA) and a percent-encoded path, or
:class:`InvalidURL` with a reason a publisher understands. No CKAN imports.

The politeness host of a URL is :func:`host_of` of its normalised form: the
host actually contacted (``netguard`` and ``fetch`` use the same rule).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

import idna
from requests.utils import requote_uri

__all__ = ["ALLOWED_SCHEMES", "InvalidURL", "host_of", "normalise_url", "url_host"]

ALLOWED_SCHEMES = ("http", "https")


class InvalidURL(ValueError):
    """The URL cannot be checked; ``reason`` is meant for the publisher."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------
# URL normalisation


def normalise_url(url: Optional[str]) -> str:
    """Return ``url`` as an absolute, normalised http(s) URL.

    Surrounding whitespace (and tabs/newlines anywhere, as browsers do) is
    removed, the scheme and host are lower-cased, the host is IDNA-encoded,
    spaces and non-ASCII characters in the path and query are percent-encoded
    (existing escapes are kept), and the fragment is dropped.

    :raises InvalidURL: with a publisher-readable ``reason``.
    """
    if url is None:
        raise InvalidURL("URL is empty")
    url = "".join(ch for ch in str(url) if ch not in "\t\r\n").strip()
    if not url:
        raise InvalidURL("URL is empty")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise InvalidURL("URL contains control characters")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise InvalidURL("URL is not valid") from None
    scheme = parts.scheme.lower()
    if len(scheme) == 1:  # C:\data\file.csv
        raise InvalidURL("URL looks like a file on a computer, not a web address")
    if not scheme or (
        scheme not in ALLOWED_SCHEMES
        and not parts.netloc
        and ("." in scheme or parts.path[:1].isdigit())  # example.org/x, localhost:8080/x
    ):
        raise InvalidURL(
            "URL is not complete: it must be absolute and start with http:// or https://"
        )
    if scheme not in ALLOWED_SCHEMES:
        raise InvalidURL(
            f'"{scheme}:" links cannot be checked: only http:// and https:// URLs are supported'
        )
    if not parts.netloc or not parts.hostname:
        raise InvalidURL("URL has no host name")
    try:
        port = parts.port
    except ValueError:
        raise InvalidURL("URL has an invalid port number") from None
    host = normalise_host(parts.hostname)
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = (userinfo + "@" if userinfo else "") + host
    if port is not None:
        netloc += f":{port}"
    path = _quote(parts.path) if parts.path else "/"
    query = _quote(parts.query)
    return urlunsplit((scheme, netloc, path, query, ""))


_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _quote(value: str) -> str:
    """Percent-encode what must be (spaces, non-ASCII, a lone ``%``), keep
    existing escapes and reserved characters."""
    return requote_uri(_LONE_PERCENT.sub("%25", value))


def normalise_host(host: str) -> str:
    if "%" in host:  # IPv6 zone ids, percent-encoded host names
        raise InvalidURL("URL has an invalid host name")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return f"[{address.compressed}]" if address.version == 6 else address.compressed
    try:
        ascii_host = idna.encode(host, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        try:  # lenient fallback (IDNA 2003), e.g. for underscores in labels
            ascii_host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidURL("URL has an invalid host name") from None
    ascii_host = ascii_host.lower()
    if not ascii_host.strip(".") or not all(ch.isalnum() or ch in "-._" for ch in ascii_host):
        raise InvalidURL("URL has an invalid host name")
    return ascii_host


def host_of(url: str) -> str:
    """The host of a normalised URL, without brackets, lower-case."""
    return (urlsplit(url).hostname or "").lower()


def url_host(url: Optional[str]) -> Optional[str]:
    """The host a URL would be fetched from (IDNA, lower-case, no brackets),
    None when the URL is not valid: the one rule for per-host politeness."""
    try:
        return host_of(normalise_url(url)) or None
    except InvalidURL:
        return None
