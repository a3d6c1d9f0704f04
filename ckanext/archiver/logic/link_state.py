"""What a resource page says about a link, from its ``archiver`` dict.

One place decides it, so that the page, the action the page polls and the
tests agree:

* ``kind``: ``ok``, ``moved`` (works, but a permanent redirect points
  elsewhere: update the link), ``web_page`` (works, but gives a web page
  where a file was promised), ``broken``, ``unsure``, or ``unchecked``;
* ``pending``: ``queued`` or ``checking`` while a check waits or runs
  (with ``queued_at``), ``retry`` while a failed attempt waits for its
  retry to be due (``queued_at`` is then when), else None;
* ``not_rechecked_until``: the last check skipped the server because it
  said the file stays fresh until then (no contact was made);
* ``site_fault``: the last check could not be done because of a fault of
  the site (its cause is for sysadmins); the verdict shown is that of the
  last real check, from ``last_checked``.

``short_state`` gives the few words of that state, as message ids for the
caller's gettext: the resource page's verdict and the dataset page's
resource list both show them.

Plain Python: no CKAN imports.
"""

from __future__ import annotations

import datetime
from typing import Any, Optional

from ckanext.archiver import status as st
from ckanext.archiver.engine.reasons import N_, RETRY_SUFFIX

__all__ = ["link_state", "pending", "add_pending", "short_state", "VERDICTS", "PENDING"]

# kind -> (tone, icon, words): what a link's last check found
VERDICTS: dict[str, tuple[str, str, str]] = {
    "ok": ("ok", "fa-check-circle", N_("Link OK")),
    "moved": ("warning", "fa-exclamation-triangle", N_("Link works, but it moved")),
    "web_page": ("warning", "fa-exclamation-triangle",
                 N_("Link works, but goes to a web page, not a file")),
    "broken": ("broken", "fa-times-circle", N_("Link broken")),
    "unsure": ("unsure", "fa-question-circle", N_("Not sure if the link works")),
    "unchecked": ("unchecked", "fa-circle-o", N_("Not checked yet")),
    "unchecked_site_fault": ("unchecked", "fa-circle-o", N_("Could not be checked yet")),
}
# pending -> words: a check on its way
PENDING: dict[str, str] = {
    "queued": N_("Waiting to be checked"),
    "checking": N_("Being checked now"),
    "retry": N_("Waiting to be tried again"),
}

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


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def pending(info: Optional[dict[str, Any]],
            now: Optional[datetime.datetime] = None) -> Optional[str]:
    """``queued`` / ``checking`` while a check of the row waits / runs;
    ``retry`` while its failed attempt waits to be tried again: the row
    then says "(will retry)" and is queued for when the retry is due, still
    to come at ``now`` (naive UTC, default the clock's). Once due, or queued
    again by an edit or "Check link now", it is ``queued``."""
    info = info or {}
    queued, updated = _dt(info.get("queued_at")), _dt(info.get("updated")) or _EPOCH
    if queued is None or queued <= updated:
        return None
    started = _dt(info.get("started_at"))
    if started is not None and started >= queued:
        return "checking"
    if (info.get("reason") or "").endswith(RETRY_SUFFIX) and queued > (now or _utcnow()):
        return "retry"
    return "queued"


def add_pending(pkg_dict: dict[str, Any]) -> None:
    """Give each resource's ``archiver`` dict of a ``package_show`` dict its
    ``pending`` (in place; from the row's own times, no other look-up)."""
    for res in pkg_dict.get("resources") or []:
        info = res.get("archiver") if isinstance(res, dict) else None
        if isinstance(info, dict):
            info["pending"] = pending(info)


def link_state(info: Optional[dict[str, Any]],
               now: Optional[datetime.datetime] = None) -> dict[str, Any]:
    """See the module docstring (``now`` as for ``pending``)."""
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
        "pending": pending(info, now),
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


def short_state(state: dict[str, Any]) -> dict[str, Any]:
    """The few words of a ``link_state``: ``verdict`` (``kind``, ``tone``,
    ``icon``, ``words``; while a first check is on its way, None) and
    ``pending`` (``state``, ``words``, ``since``: when queued, or when the
    retry is due; None when no check is on its way). Words are message ids
    for the caller's gettext."""
    kind = state["kind"]
    verdict = None
    if kind != "unchecked" or not state["pending"]:
        key = "unchecked_site_fault" if kind == "unchecked" and state["site_fault"] else kind
        tone, icon, words = VERDICTS[key]
        verdict = {"kind": kind, "tone": tone, "icon": icon, "words": words}
    on_its_way = None
    if state["pending"]:
        on_its_way = {"state": state["pending"], "words": PENDING[state["pending"]],
                      "since": state["queued_at"]}
    return {"verdict": verdict, "pending": on_its_way}
