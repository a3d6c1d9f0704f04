"""What a resource page says about a link, from its ``archiver`` dict.

One place decides it, so that the page, the action the page polls and the
tests agree:

* ``kind``: ``ok``, ``moved`` (works, but a permanent redirect points
  elsewhere: update the link), ``web_page`` (works, but gives a web page
  where a file was promised), ``broken``, ``unsure``, or ``unchecked``;
* ``pending``: ``queued`` or ``checking`` while a check waits or runs
  (with ``queued_at``), else None;
* ``not_rechecked_until``: the last check skipped the server because it
  said the file stays fresh until then (no contact was made);
* ``site_fault``: the last check could not be done because of a fault of
  the site (its cause is for sysadmins); the verdict shown is that of the
  last real check, from ``last_checked``.

Plain Python: no CKAN imports.
"""

from __future__ import annotations

import datetime
from typing import Any, Optional

from ckanext.archiver import status as st

__all__ = ["link_state", "pending"]

_EPOCH = datetime.datetime(1970, 1, 1)


def _dt(value: Any) -> Optional[datetime.datetime]:
    if isinstance(value, datetime.datetime):
        return value.replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, str) and value:
        try:
            return _dt(datetime.datetime.fromisoformat(value))
        except ValueError:
            return None
    return None


def pending(info: Optional[dict[str, Any]]) -> Optional[str]:
    """``queued`` / ``checking`` while a check of the row waits / runs."""
    info = info or {}
    queued, updated = _dt(info.get("queued_at")), _dt(info.get("updated")) or _EPOCH
    if queued is None or queued <= updated:
        return None
    started = _dt(info.get("started_at"))
    if started is not None and started >= queued:
        return "checking"
    return "queued"


def link_state(info: Optional[dict[str, Any]]) -> dict[str, Any]:
    """See the module docstring."""
    info = info or {}
    status_id = info.get("status_id")
    last_checked = _dt(info.get("last_checked"))
    if last_checked is None and status_id is not None and status_id != st.SYSTEM_ERROR:
        last_checked = _dt(info.get("updated"))  # rows written before last_checked
    site_fault_at = _dt(info.get("site_fault_at"))
    site_fault = bool(site_fault_at and site_fault_at >= (last_checked or _EPOCH))
    skip_at = _dt(info.get("fresh_skip_at"))
    not_rechecked_until = None
    if skip_at and skip_at >= (last_checked or _EPOCH) and info.get("fresh_until"):
        not_rechecked_until = _dt(info.get("fresh_until"))
    broken = info.get("is_broken")
    if status_id is None or (status_id == st.SYSTEM_ERROR and last_checked is None):
        kind = "unchecked"
    elif broken:
        kind = "broken"
    elif broken is None:
        kind = "unsure"
    elif info.get("moved_to") and info.get("moved_to") != info.get("url"):
        kind = "moved"
    elif info.get("is_web_page"):
        kind = "web_page"
    else:
        kind = "ok"
    count = int(info.get("failure_count") or 0)
    return {
        "kind": kind,
        "pending": pending(info),
        "queued_at": _dt(info.get("queued_at")),
        "last_checked": last_checked,
        "not_rechecked_until": not_rechecked_until,
        "site_fault": site_fault,
        "site_fault_at": site_fault_at if site_fault else None,
        "site_fault_reason": info.get("site_fault") if site_fault else None,
        "moved_to": info.get("moved_to") if kind == "moved" else None,
        "failure_count": count,
        "one_off": kind in ("broken", "unsure") and count <= 1,
        "retries": int(info.get("retries") or 0),
    }
