"""The one freshness rule: may a check skip the request to the server?

A check may skip it while the previous response is still fresh (its
``Cache-Control: max-age`` / ``Expires``, capped by ``max_fresh_seconds``),
for the same URL (compared after normalisation) and, when files are
downloaded, while the cached copy the previous check kept still exists. An
explicit check (``force``) never skips. Both the worker (which then takes no
per-host slot) and the download engine ask this module, so they always agree.

No CKAN imports.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any, Optional

from ckanext.archiver.netguard import InvalidURL, normalise_url

__all__ = ["fresh_until", "same_url", "cache_file_ok"]


def _aware(value: Optional[datetime]) -> Optional[datetime]:
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value


def same_url(previous_url: Optional[str], url: Optional[str]) -> bool:
    """The URL checked last time is this one (after normalisation; no
    previous URL counts as the same)."""
    if not previous_url:
        return True
    try:
        return normalise_url(previous_url) == normalise_url(url or "")
    except InvalidURL:
        return False


def cache_file_ok(previous: Any, download: bool) -> bool:
    """The previous cached copy is still there (or none is needed)."""
    path = getattr(previous, "cache_filepath", None)
    return not path or not download or os.path.exists(path)


def fresh_until(previous: Any, url: Optional[str], *, download: bool, force: bool = False,
                now: Optional[datetime] = None) -> Optional[datetime]:
    """The time (tz-aware UTC) until which the previous response of ``url``
    stays fresh, when a check may skip the server; else None.

    ``previous`` is a ``fetch.Previous`` (or anything with ``url``,
    ``fresh_until`` and ``cache_filepath``) or None."""
    if force or previous is None:
        return None
    until = _aware(getattr(previous, "fresh_until", None))
    now = now or datetime.now(timezone.utc)
    if until is None or until <= now:
        return None
    if not same_url(getattr(previous, "url", None), url):
        return None
    if not cache_file_ok(previous, download):
        return None
    return until
