"""archive_batch against a real HTTP server on 127.0.0.1 and real PostgreSQL."""

import os

import pytest
from ckan import model
from ckan.tests import factories
from ckan.tests.helpers import call_action

from ckanext.archiver import interfaces
from ckanext.archiver import status as st
from ckanext.archiver.model import Archival, ArchivalHistory
from ckanext.archiver.worker import batch, retry

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db", "archiver_env")


def _row(resource_id):
    model.Session.expire_all()
    return Archival.get_for_resource(resource_id)


def _files(archive_dir):
    return sorted(str(p.relative_to(archive_dir)) for p in archive_dir.rglob("*")
                  if p.is_file())


def test_statuses_and_files(httpserver, archive_dir):
    httpserver.expect_request("/data.csv").respond_with_data(
        "a,b\n1,2\n", content_type="text/csv", headers={"ETag": '"v1"'})
    httpserver.expect_request("/gone").respond_with_data("no", status=404)
    dataset = factories.Dataset()
    ok = factories.Resource(package_id=dataset["id"], url=httpserver.url_for("/data.csv"))
    bad = factories.Resource(package_id=dataset["id"], url=httpserver.url_for("/gone"))
    invalid = factories.Resource(package_id=dataset["id"], url="ftp://example.com/x")

    result = batch.archive_batch([ok["id"], bad["id"], invalid["id"]])
    assert result.counts() == {"archived": 1, "unchanged": 0, "broken": 2, "not sure": 0}

    row = _row(ok["id"])
    assert (row.status_id, row.is_broken, row.etag, row.size) == (0, False, '"v1"', 8)
    assert row.mimetype == "text/csv" and len(row.sha256) == 64
    assert open(row.cache_filepath, "rb").read() == b"a,b\n1,2\n"
    assert row.cache_filepath.startswith(str(archive_dir))
    assert row.cache_url.endswith(f"/dataset/{dataset['id']}/resource/{ok['id']}/archive/data.csv")
    assert row.last_success and row.failure_count == 0 and row.first_failure is None

    gone = _row(bad["id"])
    assert (gone.status_id, gone.is_broken, gone.http_status) == (12, True, 404)
    assert "404" in gone.reason and gone.failure_count == 1 and gone.first_failure
    assert _row(invalid["id"]).status_id == st.URL_INVALID
    assert _files(archive_dir) == [f"{ok['id'][:2]}/{ok['id']}/data.csv"]
    assert model.Session.query(ArchivalHistory).count() == 3


def test_unchanged_rerun_sends_no_body_and_keeps_file(httpserver):
    body = b"x" * 1000
    sent = []

    def handler(request):
        from werkzeug import Response
        if request.headers.get("If-None-Match") == '"same"':
            sent.append(0)
            return Response(status=304, headers={"ETag": '"same"'})
        sent.append(len(body))
        return Response(body, headers={"ETag": '"same"'}, content_type="text/plain")

    httpserver.expect_request("/f.txt").respond_with_handler(handler)
    res = factories.Resource(url=httpserver.url_for("/f.txt"))
    batch.archive_batch([res["id"]])
    first = _row(res["id"])
    path, mtime = first.cache_filepath, os.stat(first.cache_filepath).st_mtime_ns
    batch.archive_batch([res["id"]])
    second = _row(res["id"])
    assert sent == [1000, 0]
    assert second.status_id == st.UNCHANGED
    assert second.cache_filepath == path and os.stat(path).st_mtime_ns == mtime
    assert second.sha256 == first.sha256 and second.last_success >= first.last_success


def test_failures_count_up_then_reset_and_keep_cached_copy(httpserver):
    state = {"up": True}

    def handler(request):
        from werkzeug import Response
        return Response("ok") if state["up"] else Response("down", status=500)

    httpserver.expect_request("/flaky").respond_with_handler(handler)
    res = factories.Resource(url=httpserver.url_for("/flaky"))
    batch.archive_batch([res["id"]])
    cached = _row(res["id"]).cache_filepath
    state["up"] = False
    batch.archive_batch([res["id"]], force=True)
    batch.archive_batch([res["id"]], force=True)
    row = _row(res["id"])
    assert (row.status_id, row.failure_count, row.cache_filepath) == (12, 2, cached)
    assert "500" in row.reason and row.first_failure < row.updated
    assert os.path.exists(cached)
    state["up"] = True
    batch.archive_batch([res["id"]], force=True)
    row = _row(res["id"])
    assert (row.is_broken, row.failure_count, row.first_failure) == (False, 0, None)


def test_url_change_rearchives_and_removes_old_file(httpserver, archive_dir):
    httpserver.expect_request("/one.csv").respond_with_data("1", content_type="text/csv")
    httpserver.expect_request("/two.json").respond_with_data("{}", content_type="application/json")
    res = factories.Resource(url=httpserver.url_for("/one.csv"))
    batch.archive_batch([res["id"]])
    old = _row(res["id"]).cache_filepath
    call_action("resource_patch", id=res["id"], url=httpserver.url_for("/two.json"))
    batch.archive_batch([res["id"]])
    row = _row(res["id"])
    assert row.cache_filepath.endswith("two.json") and not os.path.exists(old)
    assert row.url == httpserver.url_for("/two.json")
    assert _files(archive_dir) == [f"{res['id'][:2]}/{res['id']}/two.json"]


def test_deleted_resource_skipped_and_file_removed(httpserver, archive_dir):
    httpserver.expect_request("/a.csv").respond_with_data("1")
    res = factories.Resource(url=httpserver.url_for("/a.csv"))
    batch.archive_batch([res["id"]])
    assert _files(archive_dir)
    call_action("resource_delete", id=res["id"])
    assert _files(archive_dir) == []
    row = _row(res["id"])
    assert row.cache_filepath is None and row.reason == "Resource deleted"
    assert batch.archive_batch([res["id"]]).skipped[0].skip_reason == \
        "resource deleted or missing"


def test_check_only_format_keeps_no_file(httpserver, archive_dir, ckan_config, monkeypatch):
    monkeypatch.setitem(ckan_config, "ckanext.archiver.check_only_formats", ["api"])
    httpserver.expect_request("/api").respond_with_data("{}", content_type="application/json")
    res = factories.Resource(url=httpserver.url_for("/api"), format="API")
    batch.archive_batch([res["id"]])
    row = _row(res["id"])
    assert row.status_id == st.CHECKED and row.cache_filepath is None
    assert _files(archive_dir) == []


def test_quota_full_keeps_existing_files(httpserver, archive_dir, ckan_config, monkeypatch):
    httpserver.expect_request("/small").respond_with_data("s" * 10)
    httpserver.expect_request("/big").respond_with_data("b" * 5000)
    small = factories.Resource(url=httpserver.url_for("/small"))
    batch.archive_batch([small["id"]])
    monkeypatch.setitem(ckan_config, "ckanext.archiver.max_archive_bytes", 1000)
    big = factories.Resource(url=httpserver.url_for("/big"))
    batch.archive_batch([big["id"]])
    row = _row(big["id"])
    # the quota is the site's: a site fault (first check: "system error")
    assert row.status_id == st.SYSTEM_ERROR and row.is_broken is None
    assert row.site_fault == (f"System error during archival: archive_dir {archive_dir} "
                              "is full (max_archive_bytes 1000 reached)")
    assert _files(archive_dir) == [f"{small['id'][:2]}/{small['id']}/small"]
    assert os.listdir(archive_dir / ".tmp") == []


def test_upload_read_from_storage(ckan_config, tmp_path, monkeypatch):
    monkeypatch.setitem(ckan_config, "ckan.storage_path", str(tmp_path / "storage"))
    res = factories.Resource(url="data.csv", url_type="upload")
    from ckan.lib import uploader
    path = uploader.get_resource_uploader(res).get_path(res["id"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"a,b\n")
    batch.archive_batch([res["id"]])
    row = _row(res["id"])
    assert (row.status_id, row.size, row.cache_filepath) == (0, 4, path)
    assert row.mimetype == "text/csv"


def test_downstream_notified_and_failing_listener_harmless(httpserver, monkeypatch):
    httpserver.expect_request("/x").respond_with_data("1")
    dataset = factories.Dataset()
    res = factories.Resource(package_id=dataset["id"], url=httpserver.url_for("/x"))
    events = []

    def listener(sender, **kw):
        events.append((sender, kw))
        raise RuntimeError("listener bug")

    interfaces.signal("archived").connect(listener)
    interfaces.signal("package-archived").connect(listener)
    try:
        batch.archive_batch([res["id"]], "priority")
    finally:
        interfaces.signal("archived").disconnect(listener)
        interfaces.signal("package-archived").disconnect(listener)
    assert events[0][0] == "archived"
    assert events[0][1]["resource_id"] == res["id"] and events[0][1]["queue"] == "priority"
    assert events[0][1]["cache_filepath"].endswith("/x")
    assert events[1] == ("package-archived", {"queue": "priority", "package_id": dataset["id"]})
    assert _row(res["id"]).status_id == 0


def test_transient_failure_recorded_while_retrying(httpserver, ckan_config, monkeypatch):
    monkeypatch.setitem(ckan_config, "ckanext.archiver.max_retries", 2)
    httpserver.expect_request("/busy").respond_with_data(
        "busy", status=503, headers={"Retry-After": "120"})
    res = factories.Resource(url=httpserver.url_for("/busy"))
    result = batch.archive_batch([res["id"]])
    assert [j.resource_id for j in result.retry] == [res["id"]]
    assert result.retry[0].outcome.retry_after == 120
    row = _row(res["id"])
    assert row.status_id == st.DOWNLOAD_ERROR and row.reason.endswith("(will retry)")
    assert "503" in row.reason
    final = batch.archive_batch([res["id"]], attempt=2)
    assert final.recorded and not final.retry
    assert not _row(res["id"]).reason.endswith("(will retry)")
    monkeypatch.setitem(ckan_config, "ckanext.archiver.retry_delay", 30.0)
    assert 22 <= retry.backoff(0) <= 38  # 30 s with jitter
    assert retry.backoff(0, retry_after=120) == 120
    assert retry.backoff(10) == 900  # capped below the visibility timeout
