"""One rule for dataset pages of any type (five builders had no fallback)."""

from __future__ import annotations

import datetime

import ckan.plugins.toolkit as tk
import pytest

from ckanext.archiver import urls
from ckanext.archiver.model.org_notify import Change

pytestmark = pytest.mark.usefixtures("with_plugins", "with_request_context")


def test_a_type_without_pages_falls_back_to_the_dataset_pages():
    assert urls.dataset_url("no-pages", "abc") == tk.url_for("dataset.read", id="abc")
    assert urls.dataset_url("no-pages", "abc", "r1") == tk.url_for(
        "dataset_resource.read", id="abc", resource_id="r1")
    assert urls.dataset_url(None, "abc", qualified=True).startswith("http")


def test_digest_rows_of_a_type_without_pages_have_links():
    """The digest and webhook built ``<type>.read`` directly: a dataset type
    without pages raised while a digest was sent."""
    change = Change(broken=True, resource_id="r1", resource_name=None, url="http://x",
                    format=None, package_id="p1", package_name="abc", package_title=None,
                    package_type="no-pages", private=False, maintainer_email=None,
                    status_id=12, reason="Server returned 404 Not Found",
                    checked_at=datetime.datetime(2026, 1, 1), first_failure=None)
    assert change.dataset_url == urls.dataset_url("dataset", "abc", qualified=True)
    assert change.as_dict()["resource_url"].endswith("/dataset/abc/resource/r1")


def test_cached_copy_url_needs_no_request(ckan_config, monkeypatch):
    monkeypatch.setitem(ckan_config, "ckan.root_path", "/data/{{LANG}}")
    url = urls.cached_copy_url("p 1", "r/1", "a b.csv")
    assert url.endswith("/data/dataset/p%201/resource/r%2F1/archive/a%20b.csv")
