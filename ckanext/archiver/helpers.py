"""Template helpers (``archiver_*``)."""

from __future__ import annotations

import datetime
import os
import urllib.parse
from typing import Any, Optional, Sequence

import ckan.plugins.toolkit as tk
from markupsafe import Markup, escape

from ckanext.archiver import status as st
from ckanext.archiver import urls
from ckanext.archiver.engine import reasons
from ckanext.archiver.logic import link_state


def archiver_is_broken_printable(is_broken: Optional[bool]) -> str:
    """Translated "Broken" / "Downloaded OK" / "Not sure if broken"."""
    return tk._(st.is_broken_printable(is_broken))


def archiver_reason(reason: Optional[str]) -> str:
    """A stored reason in the reader's language (unknown text unchanged)."""
    return reasons.translate(reason, tk._)


def archiver_status_text(status_id: Optional[int]) -> str:
    """Translated text of a status id ('' for None)."""
    text = st.text(status_id)
    return tk._(text) if text else ""


def archiver_status_class(is_broken: Optional[bool]) -> str:
    """``ok``, ``broken`` or ``unsure``: the CSS suffix of a status."""
    if is_broken is None:
        return "unsure"
    return "broken" if is_broken else "ok"


def _as_datetime(value: Any) -> Optional[datetime.datetime]:
    if isinstance(value, datetime.datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def archiver_datetime(value: Any) -> str:
    """A stored (naive UTC) time for a page: date, hours and the time zone
    (``ckan.display_timezone``), in the reader's language; '' for None."""
    when = _as_datetime(value)
    if when is None:
        return ""
    return tk.h.render_datetime(when, with_hours=True)


def archiver_cached_copy(pkg: dict[str, Any], res: dict[str, Any],
                         info: Optional[dict[str, Any]] = None,
                         ) -> Optional[dict[str, Any]]:
    """The cached copy of a resource (from its ``archiver`` dict, or
    ``info``), or None.

    :returns: ``url``, ``filename``, ``size``, ``mimetype``, ``date`` (when
        the copy was last known to match the link) and ``before_failure``
        (True when the copy dates from before the link broke).
    """
    info = info or res.get("archiver") or {}
    if res.get("url_type") == "upload":
        return None  # the "copy" of an uploaded file is the file itself
    # cache_filepath for sysadmins, cache_filename for other readers
    path = info.get("cache_filepath") or info.get("cache_filename")
    url = info.get("cache_url")
    if not path and not url:
        return None
    filename = os.path.basename(path) if path else urllib.parse.unquote(
        url.rstrip("/").rsplit("/", 1)[-1])
    if not url:
        url = tk.h.url_for("archiver.cached_copy", id=pkg.get("name") or
                           pkg["id"], resource_id=res["id"], filename=filename)
    date = _as_datetime(info.get("last_success")) or _as_datetime(
        info.get("updated"))
    first_failure = _as_datetime(info.get("first_failure"))
    return {
        "url": url, "filename": filename, "size": info.get("size"),
        "mimetype": info.get("mimetype"), "date": date,
        "before_failure": bool(first_failure and date and date < first_failure),
    }


def archiver_dataset_url(package_type: Optional[str], name: str,
                         resource_id: Optional[str] = None,
                         qualified: bool = False) -> str:
    """URL of a dataset (or one of its resources) page, for any dataset
    type; the default type's pages when the type has no pages of its own."""
    return urls.dataset_url(package_type, name, resource_id, qualified=qualified)


def archiver_without_status(res: Any) -> Any:
    """A copy of a resource dict without its ``archiver`` dict (for tables
    that print every key)."""
    if isinstance(res, dict) and "archiver" in res:
        return {k: v for k, v in res.items() if k != "archiver"}
    return res


def archiver_broken_resources(pkg: dict[str, Any]) -> int:
    """How many of a dataset's resources were found broken."""
    return sum(1 for res in pkg.get("resources") or []
               if (res.get("archiver") or {}).get("is_broken"))


def archiver_cached_resources(pkg: dict[str, Any]) -> int:
    """How many of a dataset's resources have a cached copy (what its zip
    at ``/dataset/<id>/archive.zip`` holds)."""
    # cache_filepath for sysadmins, cache_filename for other readers
    return sum(1 for res in pkg.get("resources") or []
               if (res.get("archiver") or {}).get("cache_filepath")
               or (res.get("archiver") or {}).get("cache_filename"))


def archiver_report_url_for_user() -> Optional[str]:
    """For an editor or admin of organizations: the report to link from the
    user menu (their organization's, or the index when they have several);
    None for other users."""
    user = tk.current_user
    if not user or not user.is_authenticated:
        return None
    orgs = tk.h.organizations_available("create_dataset", include_dataset_count=False)
    if not orgs:
        return None
    if len(orgs) == 1:
        return tk.h.url_for("archiver.report_org", org=orgs[0]["name"])
    return tk.h.url_for("archiver.report_index")


def archiver_shorten_url(url: Optional[str], length: int = 60) -> str:
    """A long URL cut in the middle (``https://host/pa...ile.csv``)."""
    url = url or ""
    if len(url) <= length:
        return url
    keep = max(length - 1, 2)
    head = keep * 2 // 3
    return url[:head] + "\u2026" + url[len(url) - (keep - head):]


def archiver_trend_svg(trend: Sequence[tuple[datetime.date, int]],
                       width: int = 640, height: int = 140) -> Markup:
    """A small line chart (inline SVG, no script) of ``[(date, count)]``."""
    if not trend:
        return Markup("")
    left, right, top, bottom = 40, 12, 12, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(count for _day, count in trend)
    scale = max(peak, 1)
    step = plot_w / max(len(trend) - 1, 1)

    def xy(i: int, count: int) -> tuple[float, float]:
        return left + i * step, top + plot_h - plot_h * count / scale

    points = [xy(i, count) for i, (_day, count) in enumerate(trend)]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    base = top + plot_h
    area = f"{left:.1f},{base:.1f} {line} {points[-1][0]:.1f},{base:.1f}"
    first_day, last_day = trend[0][0], trend[-1][0]
    title = tk._("Broken links per day, {start} to {end}: now {now}, "
                 "at most {peak}").format(
        start=first_day.isoformat(), end=last_day.isoformat(),
        now=trend[-1][1], peak=peak)
    marks = []
    for (day, count), (x, y) in zip(trend, points):
        marks.append(
            f'<circle class="archiver-trend-point" cx="{x:.1f}" cy="{y:.1f}" '
            f'r="3"><title>{escape(day.isoformat())}: {count}</title></circle>')
    svg = f"""<svg class="archiver-trend" xmlns="http://www.w3.org/2000/svg"
 viewBox="0 0 {width} {height}" width="100%" role="img"
 aria-label="{escape(title)}" preserveAspectRatio="xMidYMid meet">
<title>{escape(title)}</title>
<line class="archiver-trend-axis" x1="{left}" y1="{base}" x2="{width - right}" y2="{base}"/>
<line class="archiver-trend-grid" x1="{left}" y1="{top}" x2="{width - right}" y2="{top}"/>
<text class="archiver-trend-label" x="{left - 6}" y="{top + 4}" text-anchor="end">{scale}</text>
<text class="archiver-trend-label" x="{left - 6}" y="{base + 4}" text-anchor="end">0</text>
<text class="archiver-trend-label" x="{left}" y="{height - 6}">{first_day.isoformat()}</text>
<text class="archiver-trend-label" x="{width - right}" y="{height - 6}"
 text-anchor="end">{last_day.isoformat()}</text>
<polygon class="archiver-trend-area" points="{area}"/>
<polyline class="archiver-trend-line" points="{line}"/>
{"".join(marks)}
</svg>"""
    return Markup(svg)


def archiver_link_state(info: Optional[dict[str, Any]]) -> dict[str, Any]:
    """What the resource page says about a link (``link_state.link_state``)."""
    return link_state.link_state(info)


def archiver_short_state(info: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The few words of a link's state in the reader's language
    (``link_state.short_state``): the resource page's verdict and the
    dataset page's resource list."""
    short = link_state.short_state(link_state.link_state(info))
    for part in short.values():
        if part:
            words = part["words"]  # a message id of link_state (no literal here to extract)
            part["words"] = tk._(words)
    return short
