"""Parsing of response header fields: lengths, media types, Retry-After,
freshness (Cache-Control / Expires), Content-Disposition file names. No
CKAN imports."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any, Optional
from urllib.parse import unquote, urlsplit

import requests

from ckanext.archiver.engine.outcome import now_utc
from ckanext.archiver.engine.storage import clean_filename, sanitise_filename


def header_safe(value: Optional[str]) -> bool:
    if not value or not value.isprintable():
        return False
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def fix_latin1(value: str) -> str:
    """http.client decodes headers as latin-1; undo it for UTF-8 values."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def status_line(response: requests.Response) -> str:
    code = response.status_code
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = (response.reason or "").strip()
    return f"{code} {phrase}".strip()


def media_type(content_type: Optional[str]) -> Optional[str]:
    value = (content_type or "").split(";", 1)[0].strip().lower()
    return value if value and "/" in value else None


def content_length(headers: Any) -> Optional[int]:
    value = headers.get("Content-Length")
    if value is None or "chunked" in headers.get("Transfer-Encoding", "").lower():
        return None
    try:
        # http.client accepts "a, a" duplicates; take the first value
        length = int(value.split(",")[0].strip())
    except ValueError:
        return None
    return length if length >= 0 else None


def mb(nbytes: int) -> str:
    return f"{nbytes / 1_000_000:.1f} MB"


def human(nbytes: int) -> str:
    if nbytes < 1000:
        return f"{nbytes} bytes"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def parse_retry_after(value: Optional[str], now: Optional[datetime] = None) -> Optional[float]:
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
    return max(0.0, round((when - (now or now_utc())).total_seconds()))


def _cache_directives(value: Optional[str]) -> dict:
    directives = {}
    for part in (value or "").split(","):
        name, _, arg = part.strip().partition("=")
        if name:
            directives[name.strip().lower()] = arg.strip().strip('"')
    return directives


def fresh_until(headers: Any, now: datetime, max_seconds: float) -> Optional[datetime]:
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


def filename_from_disposition(value: Optional[str]) -> Optional[str]:
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
    return fix_latin1(plain) if plain else None


def suggest_filename(disposition: Optional[str], url: str) -> str:
    name = filename_from_disposition(disposition)
    if not clean_filename(name):
        segment = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
        name = unquote(segment, errors="replace")
    return sanitise_filename(name)
