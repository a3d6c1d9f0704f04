"""Every URL the archiver builds, in one place.

:func:`dataset_url` is the one rule for pages of a dataset of any type: its
type's own pages, or the default type's when the type has none (a type
registered without pages, e.g. by a harvester). The helper
``archiver_dataset_url``, the report's exports, the digest emails, the
webhook, the zips' manifests and the views' redirects all use it.

:func:`cached_copy_url` works without a request (the worker fills
``archival.cache_url`` with it).
"""

from __future__ import annotations

from typing import Any, Optional
from urllib.parse import quote

import ckan.plugins.toolkit as tk

from ckanext.archiver import config
from ckanext.archiver.config import Options

__all__ = ["cached_copy_url", "dataset_url", "package_zip_url", "report_org_url"]


def dataset_url(package_type: Optional[str], name: str, resource_id: Optional[str] = None,
                qualified: bool = False, action: str = "read", **extra: Any) -> str:
    """URL of a dataset page (or one of its resources' pages: ``resource_id``;
    ``action`` "download" with ``filename`` for an uploaded file), for any
    dataset type; "" when no page exists."""
    kwargs: dict[str, Any] = dict(extra, id=name, qualified=qualified)
    if resource_id:
        kwargs["resource_id"] = resource_id
    suffix = f"_resource.{action}" if resource_id else f".{action}"
    for dataset_type in dict.fromkeys((package_type or "dataset", "dataset")):
        try:
            return tk.url_for(dataset_type + suffix, **kwargs)
        except Exception:  # no blueprint for this type (werkzeug BuildError)
            continue
    return ""


def cached_copy_url(package_id: str, resource_id: str, filename: str,
                    options: Optional[Options] = None) -> str:
    """Absolute URL of a cached copy served by CKAN (``archiver.cached_copy``).

    Built from ``ckan.site_url`` and ``ckan.root_path`` only, so that it works
    without a request context (the Celery worker calls it to fill
    ``archival.cache_url`` when ``cache_url_root`` is empty).
    """
    options = options or config.current()
    site = options.site_url.rstrip("/")
    root = options.root_path.replace("{{LANG}}", "")
    root = "".join("/" + part for part in root.split("/") if part)
    return (f"{site}{root}/dataset/{quote(package_id, safe='')}"
            f"/resource/{quote(resource_id, safe='')}"
            f"/archive/{quote(filename, safe='')}")


def package_zip_url(name: str, qualified: bool = True) -> str:
    """URL of a dataset's zip (``archiver_extra.package_zip``)."""
    return tk.url_for("archiver_extra.package_zip", id=name, qualified=qualified)


def report_org_url(org_name: str, qualified: bool = False) -> str:
    """An organization's broken-links page (``archiver.report_org``)."""
    return tk.url_for("archiver.report_org", org=org_name, qualified=qualified)
