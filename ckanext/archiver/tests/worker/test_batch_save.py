"""One bad response never costs another resource its row or its file:
hostile header bytes, rows the database refuses, files that follow their
rows (real server on 127.0.0.1, real PostgreSQL)."""

import os
import time

import pytest
from ckan import model
from ckan.cli.cli import ckan
from ckan.tests import factories

from ckanext.archiver import interfaces
from ckanext.archiver import status as st
from ckanext.archiver.engine import storage as storage_module
from ckanext.archiver.model import Archival, ArchivalHistory, checks
from ckanext.archiver.tests.http_fixtures import KEEP_ALIVE, serve_bytes
from ckanext.archiver.worker import batch

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db", "archiver_env")


def _row(resource_id):
    model.Session.remove()
    return Archival.get_for_resource(resource_id)


def _files(archive_dir):
    return sorted(str(p.relative_to(archive_dir)) for p in archive_dir.rglob("*")
                  if p.is_file() and ".tmp" not in p.parts)


def _raw(head: bytes, body: bytes = b"a,b\n"):
    """A route sending ``head`` (status line and headers, raw bytes)."""
    def handler(request, conn):
        conn.sendall(head + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                     + body)
    return handler


HOSTILE = (b"HTTP/1.1 200 O\x00K\r\nContent-Type: text/c\x00sv\r\nETag: \"e\x00t\"\r\n"
           b"Last-Modified: Tue, 01 Dec 2026 10:00:00 G\x00MT\r\n"
           b"Cache-Control: max-age=0\x00\r\nX-Other: \xff\xfe")


@pytest.fixture
def events(monkeypatch):
    seen = []
    monkeypatch.setattr(interfaces, "notify",
                        lambda operation, queue, **params: seen.append((operation, params)))
    return seen


def test_nul_in_headers_costs_no_other_row(raw_server, archive_dir, events):
    raw_server.route("/hostile.csv", _raw(HOSTILE))
    dataset = factories.Dataset()
    good = [factories.Resource(package_id=dataset["id"],
                               url=raw_server.route(f"/good{i}.csv", serve_bytes(
                                   b"x,y\n%d\n" % i, "text/csv",
                                   headers={"ETag": f'"g{i}"'}))) for i in range(3)]
    bad = factories.Resource(package_id=dataset["id"], url=raw_server.url("/hostile.csv"))

    batch.archive_batch([r["id"] for r in good] + [bad["id"]])

    for i, res in enumerate(good):
        row = _row(res["id"])
        assert (row.status_id, row.etag) == (st.ARCHIVED, f'"g{i}"')
        assert open(row.cache_filepath, "rb").read() == b"x,y\n%d\n" % i
    row = _row(bad["id"])
    assert row.status_id == st.ARCHIVED and os.path.exists(row.cache_filepath)
    assert row.etag is None and row.last_modified is None  # not kept altered
    assert row.cache_control == "max-age=0" and row.mimetype == "text/csv"
    assert row.reason == ("Downloaded 4 bytes (the server sent an invalid ETag, Last-Modified, "
                          "Cache-Control, Content-Type: they were not kept as sent)")
    assert model.Session.query(ArchivalHistory).count() == 4
    assert sorted(p["resource_id"] for op, p in events if op == "archived") == sorted(
        [r["id"] for r in good] + [bad["id"]])
    assert ("package-archived", {"package_id": dataset["id"]}) in events

    # the next check sends back only validators that arrived intact
    batch.archive_batch([good[0]["id"], bad["id"]], force=True)
    sent = {r.path: r.header("if-none-match") for r in raw_server.requests[-2:]}
    assert sent == {"/good0.csv": '"g0"', "/hostile.csv": None}


def test_odd_reason_phrase_with_nul(raw_server):
    raw_server.route("/odd", _raw(b"HTTP/1.1 599 Bad\x00\x1b[31m phrase\xff"))
    res = factories.Resource(url=raw_server.url("/odd"))
    batch.archive_batch([res["id"]])
    row = _row(res["id"])
    assert row.status_id == st.DOWNLOAD_ERROR
    assert row.reason.startswith("Server returned 599 Bad[31m phrase")
    assert "\x00" not in row.reason and "\x1b" not in row.reason


def _refuse(monkeypatch, resource_id, always=False):
    """Make the database refuse the row of ``resource_id`` (an integer out
    of range): as long as it has its real outcome, or ``always``."""
    real = checks.row_values

    def row_values(job, now, recheck_days):
        values = real(job, now, recheck_days)
        if job.resource_id == resource_id and (
                always or job.outcome.status_id != st.SYSTEM_ERROR):
            values["http_status"] = 10 ** 12
        return values

    monkeypatch.setattr(checks, "row_values", row_values)


def test_a_row_the_database_refuses_is_a_system_error(raw_server, monkeypatch, events):
    dataset = factories.Dataset()
    res = [factories.Resource(package_id=dataset["id"], url=raw_server.route(
        f"/{i}.csv", serve_bytes(b"%d" % i, "text/csv"))) for i in range(3)]
    _refuse(monkeypatch, res[1]["id"])

    batch.archive_batch([r["id"] for r in res])

    assert [_row(r["id"]).status_id for r in (res[0], res[2])] == [st.ARCHIVED, st.ARCHIVED]
    row = _row(res[1]["id"])
    # never checked before: "system error" in public, the cause for sysadmins
    assert row.status_id == st.SYSTEM_ERROR and row.is_broken is None
    assert row.reason == "System error during archival"
    assert row.site_fault == ("System error during archival: the result could not be saved "
                              "(NumericValueOutOfRange: integer out of range)")
    assert row.site_fault_at is not None and row.last_checked is None
    assert row.failure_count == 0  # the site's fault, not the link's
    assert row.cache_filepath is None  # its new file is not kept
    assert model.Session.query(ArchivalHistory).count() == 3
    assert len([op for op, _p in events if op == "archived"]) == 3


def test_a_batch_that_fails_once_keeps_every_real_outcome(raw_server, monkeypatch):
    res = [factories.Resource(url=raw_server.route(
        f"/{i}.csv", serve_bytes(b"%d" % i, "text/csv"))) for i in range(3)]
    real, calls = checks.write_rows, []

    def write_rows(jobs, now, recheck_days):
        calls.append(len(jobs))
        if len(calls) == 1:
            raise ValueError("A string literal cannot contain NUL (0x00) characters.")
        return real(jobs, now, recheck_days)

    monkeypatch.setattr(checks, "write_rows", write_rows)
    batch.archive_batch([r["id"] for r in res])
    assert calls == [3, 1, 1, 1]  # the batch, then row by row
    assert [_row(r["id"]).status_id for r in res] == [st.ARCHIVED] * 3
    assert model.Session.query(ArchivalHistory).count() == 3


def test_only_committed_rows_are_announced(raw_server, monkeypatch, events):
    dataset = factories.Dataset()
    other = factories.Dataset()
    res = [factories.Resource(package_id=dataset["id"], url=raw_server.route(
        f"/{i}.csv", serve_bytes(b"%d" % i, "text/csv"))) for i in range(2)]
    alone = factories.Resource(package_id=other["id"], url=raw_server.url("/0.csv"))
    _refuse(monkeypatch, res[1]["id"], always=True)

    batch.archive_batch([r["id"] for r in res] + [alone["id"]])

    assert _row(res[0]["id"]).status_id == st.ARCHIVED
    assert _row(alone["id"]).status_id == st.ARCHIVED
    archived = {p["resource_id"] for op, p in events if op == "archived"}
    assert archived == {res[0]["id"], alone["id"]}
    packages = {p["package_id"] for op, p in events if op == "package-archived"}
    assert packages == {other["id"]}  # the dataset with an unsaved row is not complete


@pytest.mark.parametrize("same_name", [True, False])
def test_files_follow_rows_on_a_failed_commit(raw_server, archive_dir, monkeypatch, same_name):
    content = {"body": b"old", "name": "data.csv"}

    def handler(request, conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nContent-Disposition: "
                     b"attachment; filename=" + content["name"].encode()
                     + b"\r\nContent-Length: %d\r\n\r\n" % len(content["body"])
                     + content["body"])
        return KEEP_ALIVE

    res = factories.Resource(url=raw_server.route("/data", handler))
    batch.archive_batch([res["id"]])
    before = _row(res["id"])
    old_path, old_sha256, old_checked = before.cache_filepath, before.sha256, before.last_checked
    assert open(old_path, "rb").read() == b"old"

    content.update(body=b"new content", name="data.csv" if same_name else "other.csv")
    real = checks.row_values
    _refuse(monkeypatch, res["id"])
    batch.archive_batch([res["id"]], force=True)

    row = _row(res["id"])
    # a fault of the site: the link keeps its verdict and the cached copy
    # of the last success
    assert (row.status_id, row.cache_filepath, row.sha256) == (
        st.ARCHIVED, old_path, old_sha256)
    assert "could not be saved" in row.site_fault and row.failure_count == 0
    assert row.last_checked == old_checked
    assert open(old_path, "rb").read() == b"old"  # the file it names is still there
    assert _files(archive_dir) == [f"{res['id'][:2]}/{res['id']}/data.csv"]

    monkeypatch.setattr(checks, "row_values", real)
    batch.archive_batch([res["id"]], force=True)  # a commit that works replaces it
    row = _row(res["id"])
    assert open(row.cache_filepath, "rb").read() == b"new content"
    assert _files(archive_dir) == [f"{res['id'][:2]}/{res['id']}/{content['name']}"]


def test_crash_between_commit_and_clean_up_leaves_an_orphan_clean_cached_removes(
        raw_server, archive_dir, monkeypatch, cli, make_ini):
    names = iter(["first.csv", "second.csv"])

    def handler(request, conn):
        name = next(names).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nContent-Disposition: "
                     b"attachment; filename=" + name + b"\r\nContent-Length: 2\r\n\r\n"
                     + name[:2])
        return KEEP_ALIVE

    res = factories.Resource(url=raw_server.route("/data", handler))
    batch.archive_batch([res["id"]])
    first = _row(res["id"]).cache_filepath
    # the worker "dies" after the commit, before removing the replaced file
    monkeypatch.setattr(storage_module.Storage, "keep", lambda self, staged: None)
    batch.archive_batch([res["id"]], force=True)
    row = _row(res["id"])
    assert row.cache_filepath.endswith("second.csv") and os.path.exists(first)
    old = time.time() - 2 * 3600
    os.utime(first, (old, old))
    os.utime(row.cache_filepath, (old, old))

    result = cli.invoke(ckan, ["-c", make_ini(), "archiver", "clean-cached"])
    assert result.exit_code == 0, result.output
    assert "Removed 1 file, 2 bytes" in result.output
    assert not os.path.exists(first) and os.path.exists(row.cache_filepath)
    assert _row(res["id"]).cache_filepath == row.cache_filepath


def test_update_now_dataset_with_nul_headers(raw_server, cli, make_ini):
    """Done when: `ckan archiver update <dataset> --now` records every other
    resource correctly, and the hostile one with a clear status."""
    raw_server.route("/nul", _raw(b"HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\n"
                                  b"ETag: \"\x00\"\r\nX-Nul: \x00\x00"))
    resources = [{"url": raw_server.route(f"/r{i}.csv", serve_bytes(b"%02d" % i, "text/csv"))}
                 for i in range(20)]
    resources.insert(7, {"url": raw_server.url("/nul")})
    dataset = factories.Dataset(resources=resources)

    result = cli.invoke(ckan, ["-c", make_ini(), "archiver", "update", dataset["name"], "--now"])
    assert result.exit_code == 0, result.output

    rows = {r.resource_id: r for r in Archival.get_for_package(dataset["id"])}
    ids = [r["id"] for r in dataset["resources"]]
    assert set(rows) == set(ids)
    for i, rid in enumerate(ids):
        row = rows[rid]
        assert row.status_id == st.ARCHIVED and os.path.exists(row.cache_filepath)
        if i == 7:
            assert row.etag is None
            assert row.reason == ("Downloaded 4 bytes (the server sent an invalid ETag: "
                                  "it was not kept as sent)")
        else:
            assert row.reason == "Downloaded 2 bytes"
    assert model.Session.query(ArchivalHistory).filter(
        ArchivalHistory.package_id == dataset["id"]).count() == 21
