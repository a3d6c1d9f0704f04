"""One resource of a batch: the rules it shares with the engine."""

from __future__ import annotations

import datetime

import pytest
from ckan.tests import factories

from ckanext.archiver import config
from ckanext.archiver import status as st
from ckanext.archiver.engine import netguard
from ckanext.archiver.tests.factories import make_archival
from ckanext.archiver.tests.helpers import archival_row
from ckanext.archiver.worker import batch, services
from ckanext.archiver.worker.resource import politeness_host

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db", "archiver_env")


def _fresh_row(resource, cache_filepath):
    later = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) + \
        datetime.timedelta(days=1)
    make_archival(resource, st.ARCHIVED, url=resource["url"], fresh_until=later,
                  cache_filepath=cache_filepath, sha256="0" * 64)


@pytest.fixture
def busy_host(ckan_config, monkeypatch):
    """The only slot of a host, held by somebody else for the test."""
    monkeypatch.setitem(ckan_config, "ckanext.archiver.per_host_concurrency", 1)
    monkeypatch.setitem(ckan_config, "ckanext.archiver.host_wait", 0.3)
    held = []

    def hold(url):
        limiter = services.limiter(config.current())
        host = politeness_host(url)
        held.append((limiter, host, limiter.acquire(host, timeout=1)))
        assert held[-1][2] is not None

    yield hold
    for limiter, host, token in held:
        limiter.release(host, token)


def test_fresh_row_whose_file_is_gone_waits_for_its_host(httpserver, busy_host, tmp_path):
    """Where they disagreed: the worker called such a row fresh (raw URL,
    file not looked at) and skipped the host's slot, while the engine did
    not (its file is gone) and downloaded it: a download past politeness."""
    httpserver.expect_request("/data.csv").respond_with_data("a,b\n1,2\n")
    res = factories.Resource(url=httpserver.url_for("/data.csv"))
    _fresh_row(res, str(tmp_path / "gone.csv"))
    busy_host(res["url"])
    batch.archive_batch([res["id"]], polite=True)
    row = archival_row(res["id"])
    assert row.status_id == st.DOWNLOAD_FAILURE
    assert "Host busy" in row.reason
    assert httpserver.log == []


def test_fresh_row_with_its_file_needs_no_slot_and_no_request(httpserver, busy_host,
                                                              tmp_path):
    httpserver.expect_request("/data.csv").respond_with_data("a,b\n1,2\n")
    res = factories.Resource(url=httpserver.url_for("/data.csv"))
    kept = tmp_path / "kept.csv"
    kept.write_text("a,b\n1,2\n")
    _fresh_row(res, str(kept))
    busy_host(res["url"])
    batch.archive_batch([res["id"]], polite=True)
    row = archival_row(res["id"])
    # a freshness skip is recorded as a skip: the verdict of the last real
    # check stays (issue 13)
    assert row.status_id == st.ARCHIVED and row.fresh_skip_at is not None
    assert httpserver.log == []


@pytest.mark.parametrize("url, host", [
    ("http://ＬＯＣＡＬＨＯＳＴ:8080/x", "localhost"),  # full-width: raw hostname differs
    ("http://Bücher.Example/a.csv", "xn--bcher-kva.example"),
    (" https://EXAMPLE.org./x ", "example.org."),
    ("ftp://example.org/x", None),
    ("not a url", None),
])
def test_politeness_host_is_the_host_the_engine_contacts(url, host):
    """Where they disagreed: the slot was taken on ``urlsplit().hostname`` of
    the raw URL, the request went to the IDNA-normalised host."""
    assert politeness_host(url) == host
    if host is not None:
        assert netguard.host_of(netguard.normalise_url(url)) == host
