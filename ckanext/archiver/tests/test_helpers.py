"""Template helpers."""

from __future__ import annotations

import datetime
import xml.etree.ElementTree as ET

import pytest

from ckanext.archiver import helpers as h

pytestmark = pytest.mark.usefixtures("with_plugins", "with_request_context")


def test_status_words():
    assert [h.archiver_status_class(b) for b in (True, False, None)] == [
        "broken", "ok", "unsure"]
    assert h.archiver_status_text(12) == "Download error"
    assert h.archiver_status_text(None) == ""
    assert h.archiver_is_broken_printable(True) == "Broken"


def test_shorten_url():
    assert h.archiver_shorten_url("http://a.org/x.csv") == "http://a.org/x.csv"
    long = "http://example.org/" + "d/" * 50 + "file.csv"
    short = h.archiver_shorten_url(long, 40)
    assert len(short) == 40
    assert short.startswith("http://example.org/") and short.endswith("file.csv")
    assert "\u2026" in short
    assert h.archiver_shorten_url(None) == ""


def test_cached_copy():
    pkg = {"id": "pid", "name": "clinics"}
    res = {"id": "rid", "archiver": {
        "cache_filepath": "/var/archive/ri/rid/data.csv", "cache_url": None,
        "size": 1234, "mimetype": "text/csv",
        "last_success": "2026-01-01T10:00:00", "first_failure": None}}
    copy = h.archiver_cached_copy(pkg, res)
    assert copy["url"] == "/dataset/clinics/resource/rid/archive/data.csv"
    assert copy["filename"] == "data.csv" and copy["size"] == 1234
    assert copy["date"] == datetime.datetime(2026, 1, 1, 10)
    assert copy["before_failure"] is False

    res["archiver"]["first_failure"] = "2026-02-01T00:00:00"
    assert h.archiver_cached_copy(pkg, res)["before_failure"] is True
    res["archiver"]["cache_url"] = "https://files.example.org/ri/rid/data.csv"
    assert h.archiver_cached_copy(pkg, res)["url"] == res["archiver"]["cache_url"]

    assert h.archiver_cached_copy(pkg, dict(res, url_type="upload")) is None
    assert h.archiver_cached_copy(pkg, {"id": "rid"}) is None
    assert h.archiver_cached_copy(pkg, {"id": "rid", "archiver": {
        "cache_filepath": None, "cache_url": None}}) is None


def test_broken_resources():
    pkg = {"resources": [{"archiver": {"is_broken": True}},
                         {"archiver": {"is_broken": None}}, {},
                         {"archiver": {"is_broken": True}}]}
    assert h.archiver_broken_resources(pkg) == 2
    assert h.archiver_broken_resources({}) == 0


def test_trend_svg_is_valid_svg():
    start = datetime.date(2026, 1, 1)
    trend = [(start + datetime.timedelta(days=n), n % 5) for n in range(90)]
    svg = str(h.archiver_trend_svg(trend))
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    assert root.get("role") == "img"
    assert "2026-01-01" in root.get("aria-label")
    assert len(root.findall(f"{ns}circle")) == 90
    points = root.find(f"{ns}polyline").get("points").split()
    assert len(points) == 90
    ys = [float(p.split(",")[1]) for p in points]
    assert max(ys) > min(ys)  # values are drawn at different heights
    assert "<script" not in svg
    assert str(h.archiver_trend_svg([])) == ""
    flat = str(h.archiver_trend_svg([(start, 0), (start, 0)]))
    assert ET.fromstring(flat) is not None


def test_dataset_url_for_any_type():
    assert h.archiver_dataset_url("dataset", "clinics") == "/dataset/clinics"
    # a type without pages of its own falls back to the dataset pages
    assert h.archiver_dataset_url("no-such-type", "clinics", "rid") == (
        "/dataset/clinics/resource/rid")
    assert h.archiver_dataset_url(None, "clinics", qualified=True) == (
        "http://test.ckan.net/dataset/clinics")
