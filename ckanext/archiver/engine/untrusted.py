"""The one boundary for untrusted text: everything taken from a server or a
URL (header values, the reason phrase, file names, mimetypes, redirect
targets, error text) passes :func:`clean` before it reaches the model.

A cleaned value is valid UTF-8 without NUL or other control characters
(PostgreSQL refuses NUL in text columns: one such byte used to lose a whole
batch), cut to its column's size. The ``archival`` columns are ``TEXT`` in
the migrations, which PostgreSQL does not bound; :data:`LIMITS` gives each
column the size this archiver stores (a megabyte ETag is not an ETag).

:func:`clean_row` cleans a row's values and says which server values had to
be changed, so that the reason can say so. A validator (ETag,
Last-Modified) that had to be changed is dropped, never stored: conditional
requests only send validators that arrived intact.

Standard library only (engine: no ckan / flask / celery / sqlalchemy).
"""

from __future__ import annotations

import unicodedata
from typing import Any, Optional, Union

__all__ = ["HEADERS", "LIMITS", "VALIDATORS", "clean", "clean_row", "is_clean", "note"]

# characters per column (the columns themselves are unbounded TEXT)
LIMITS: dict[str, int] = {
    "reason": 2000,
    "url": 8000,  # the resource's own URL (CKAN stores it unbounded too)
    "url_redirected_to": 8000,
    "moved_to": 8000,  # a permanent redirect's target (Location)
    "cache_filepath": 4096,
    "cache_url": 8000,
    "mimetype": 255,
    "hash": 64,
    "sha256": 64,
    "etag": 1000,
    "last_modified": 100,
    "cache_control": 1000,
}

# the validators sent back to the server (If-None-Match, If-Modified-Since)
VALIDATORS = ("etag", "last_modified")

# columns whose value is a response header as http.client decoded it
HEADERS = frozenset({"etag", "last_modified", "cache_control", "mimetype"})

# what a publisher reads in the reason when a server value was changed
_LABELS = {
    "etag": "ETag",
    "last_modified": "Last-Modified",
    "cache_control": "Cache-Control",
    "mimetype": "Content-Type",
    "url_redirected_to": "redirect target (Location)",
}

_KEEP = frozenset("\t")  # becomes a space; every other control char goes
_DROP = frozenset(("Cc", "Cs", "Zl", "Zp"))


def _as_text(value: Union[str, bytes], header: bool) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if header:
        # http.client decodes header bytes as latin-1: get the bytes back
        # and read them as UTF-8, invalid sequences replaced
        try:
            return value.encode("latin-1").decode("utf-8", "replace")
        except UnicodeEncodeError:
            pass
    # lone surrogates (from a decoder's surrogateescape) cannot be stored
    return value.encode("utf-8", "replace").decode("utf-8")


def clean(value: Optional[Union[str, bytes]], limit: Optional[int] = None,
          header: bool = False) -> Optional[str]:
    """``value`` as valid UTF-8 text without control characters (a tab
    becomes a space), cut to ``limit`` characters. ``None`` stays ``None``;
    so does a value with nothing left. ``header``: the value is a header
    as http.client gives it (its bytes decoded as latin-1)."""
    if value is None:
        return None
    text = _as_text(value, header)
    if not text.isprintable():
        text = "".join(
            " " if ch in _KEEP else ch
            for ch in text
            if ch in _KEEP or (unicodedata.category(ch) not in _DROP and ch not in "\ufffe\uffff")
        )
    if limit is not None and len(text) > limit:
        text = text[:limit]
    return text or None


def is_clean(value: Optional[str], limit: Optional[int] = None, header: bool = False) -> bool:
    """Whether :func:`clean` leaves ``value`` as it is."""
    return value is None or clean(value, limit, header) == value


def clean_row(values: dict[str, Any], from_server: tuple[str, ...] = ()) -> list[str]:
    """Clean the text values of an ``archival`` row in place.

    ``from_server``: the columns whose value the server sent; those that had
    to be changed are returned (as labels for the reason). A changed
    validator is set to None rather than stored altered.
    """
    changed = []
    for name, value in list(values.items()):
        if not isinstance(value, (str, bytes)):
            continue
        cleaned = clean(value, LIMITS.get(name), header=name in HEADERS)
        if cleaned == value:
            continue
        if name in VALIDATORS:
            cleaned = None
        values[name] = cleaned
        if name in from_server:
            changed.append(name)
    return [_LABELS.get(name, name) for name in from_server if name in changed]


def note(changed: list[str]) -> str:
    """The reason's note about ``changed`` values ("" when none)."""
    if not changed:
        return ""
    return " (the server sent an invalid {}: {} not kept as sent)".format(
        ", ".join(changed), "it was" if len(changed) == 1 else "they were")
