"""Tests for fetch.py against real servers on 127.0.0.1 (no mocked HTTP).

Every call goes through the ``run`` fixture, which also checks that no
temporary file is left behind unless the outcome hands one over.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import socket
import time
import zipfile
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
import requests

from ckanext.archiver import status
from ckanext.archiver.fetch import FetchSettings, Previous, fetch, get_session, sniff_mimetype
from ckanext.archiver.tests.http_fixtures import (
    KEEP_ALIVE,
    drip,
    redirect,
    respond,
    serve_bytes,
)

CSV = b"name,count\nalpha,1\nbeta,2\n"


@pytest.fixture
def run(fetch_settings, fetch_tmp_dir):
    """``run(url, previous=None, force=False, session=None, **settings)``.

    Returns the Outcome with ``.body`` (the downloaded bytes or None) and
    asserts the temp dir holds exactly ``outcome.tmp_path`` or nothing.
    """

    def _run(url, previous=None, force=False, session=None, **overrides):
        settings = dataclasses.replace(fetch_settings, **overrides)
        outcome = fetch(
            url, settings, previous, tmp_dir=fetch_tmp_dir, force=force, session=session
        )
        left = sorted(os.listdir(fetch_tmp_dir))
        outcome.body = None
        if outcome.tmp_path:
            assert outcome.status_id == status.ARCHIVED
            assert left == [os.path.basename(outcome.tmp_path)]
            with open(outcome.tmp_path, "rb") as f:
                outcome.body = f.read()
            os.unlink(outcome.tmp_path)
        else:
            assert left == [], f"temp files left behind: {left}"
        return outcome

    return _run


def _etag_handler(body, etag=None, last_modified=None, content_type="text/csv", extra=None):
    """A route honouring If-None-Match / If-Modified-Since."""

    def handler(request, conn):
        headers = {"Content-Type": content_type, **(extra or {})}
        if etag:
            headers["ETag"] = etag
        if last_modified:
            headers["Last-Modified"] = last_modified
        if (etag and request.header("if-none-match") == etag) or (
            last_modified and request.header("if-modified-since") == last_modified
        ):
            respond(conn, 304, b"", headers, content_length=None, keep_alive=True)
        else:
            respond(conn, 200, body, headers, keep_alive=True)
        return KEEP_ALIVE

    return handler


# --------------------------------------------------------------------------
# Basics


def test_archives_a_csv(run, raw_server):
    url = raw_server.route("/data/file.csv", serve_bytes(CSV, "text/csv; charset=utf-8"))
    outcome = run(url)
    assert outcome.status_id == status.ARCHIVED
    assert outcome.reason == "Downloaded 26 bytes"
    assert outcome.body == CSV
    assert outcome.size == len(CSV) == outcome.bytes_received
    assert outcome.hash == hashlib.sha1(CSV).hexdigest()
    assert outcome.sha256 == hashlib.sha256(CSV).hexdigest()
    assert outcome.mimetype == "text/csv"
    assert outcome.filename == "file.csv"
    assert outcome.http_status == 200
    assert outcome.url == url and outcome.url_redirected_to is None
    assert not outcome.is_web_page and not outcome.transient
    assert outcome.checked_at.tzinfo is not None and outcome.duration > 0
    request = raw_server.requests[0]
    assert request.header("user-agent") == "ckanext-archiver-tests"
    assert request.header("accept-encoding") == "identity"
    assert request.header("if-none-match") is None


def test_latency_is_the_time_to_the_headers_not_the_whole_attempt(run, raw_server):
    """What the host's pace follows (engine.hostqueue): a body that takes
    long to arrive does not make the host look slow to answer."""
    url = raw_server.route("/slow-body.csv", drip(b"a,b\n1,2\n", 0.05))
    outcome = run(url)
    assert outcome.status_id == status.ARCHIVED
    assert outcome.duration >= 0.35
    assert 0 < outcome.latency < 0.2
    refused = run("http://127.0.0.1:9/x.csv")
    assert refused.latency is None, "no response: no latency"


def test_empty_body(run, raw_server):
    outcome = run(raw_server.route("/empty.csv", serve_bytes(b"", "text/csv")))
    assert outcome.status_id == status.ARCHIVED
    assert outcome.reason == "Empty file (0 bytes)"
    assert outcome.size == 0 and outcome.body == b""


def test_html_page_instead_of_a_file(run, raw_server):
    page = b"<!DOCTYPE html><html><head><title>Data</title></head><body>Hi</body></html>"
    outcome = run(raw_server.route("/data.csv", serve_bytes(page, "text/html; charset=utf-8")))
    assert outcome.status_id == status.ARCHIVED
    assert outcome.is_web_page and outcome.mimetype == "text/html"
    assert "web page, not a file" in outcome.reason
    # the same page served as octet-stream is sniffed
    outcome = run(raw_server.route("/page", serve_bytes(page, "application/octet-stream")))
    assert outcome.is_web_page and outcome.mimetype == "text/html"


def _xlsx() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/workbook.xml", "<workbook/>")
    return buffer.getvalue()


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("readme.txt", "hello")
    return buffer.getvalue()


def _xls() -> bytes:
    return (
        bytes.fromhex("D0CF11E0A1B11AE1")
        + b"\0" * 500
        + "Workbook".encode("utf-16-le")
        + b"\0" * 100
    )


SAMPLES = {
    "text/csv": CSV,
    "application/json": json.dumps({"a": [1, 2, 3]}).encode(),
    "application/geo+json": json.dumps(
        {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": None}]}
    ).encode(),
    "application/xml": b'<?xml version="1.0"?><root><a>1</a></root>',
    "text/html": b"<html><body>hello</body></html>",
    "application/pdf": b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n",
    "application/zip": _zip(),
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": _xlsx(),
    "application/vnd.ms-excel": _xls(),
    "text/plain": b"just some words\nand more words\n",
}


@pytest.mark.parametrize("expected", sorted(SAMPLES))
@pytest.mark.parametrize("served_as", ["application/octet-stream", None])
def test_mimetype_sniffed_when_generic_or_missing(run, raw_server, expected, served_as):
    headers = {"Content-Type": served_as} if served_as else {}

    def handler(request, conn):
        respond(conn, 200, SAMPLES[expected], headers, keep_alive=True)
        return KEEP_ALIVE

    outcome = run(raw_server.route("/download", handler))
    assert outcome.status_id == status.ARCHIVED
    assert outcome.mimetype == expected


def test_text_plain_csv_is_sniffed_and_specific_types_are_kept(run, raw_server):
    assert run(raw_server.route("/a", serve_bytes(CSV, "text/plain"))).mimetype == "text/csv"
    assert run(raw_server.route("/b", serve_bytes(CSV, "application/x-custom"))).mimetype == (
        "application/x-custom"
    )
    xlsx = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    assert run(raw_server.route("/c", serve_bytes(_xlsx(), "application/zip"))).mimetype == xlsx


def test_sniff_mimetype_unit():
    assert sniff_mimetype(b"") is None
    assert sniff_mimetype(b"\xef\xbb\xbfa;b;c\n1;2;3\n4;5;6\n") == "text/csv"
    assert sniff_mimetype(b"a\tb\n1\t2\n") == "text/tab-separated-values"
    assert sniff_mimetype(b"\x89PNG\r\n\x1a\n" + b"\0" * 30) == "image/png"
    assert sniff_mimetype(b'[{"x": 1}') == "text/plain"  # broken JSON
    assert sniff_mimetype(b"\x00\x01\x02garbage", "x.bin") == "application/octet-stream"


# --------------------------------------------------------------------------
# Filenames


@pytest.mark.parametrize(
    "disposition, expected",
    [
        ('attachment; filename="../../etc/passwd"', "passwd"),
        ("attachment; filename=..", "download"),
        ("attachment; filename*=UTF-8''%C3%A9t%C3%A9%20donn%C3%A9es.csv", "été données.csv"),
        ("attachment; filename=\"fallback.csv\"; filename*=UTF-8''na%C3%AFve.csv", "naïve.csv"),
        ('attachment; filename="a\\"b.csv"', "a_b.csv"),
        ('attachment; filename="evil\x01\x7f.csv"', "evil.csv"),
        ("inline", "download"),
    ],
)
def test_filename_from_content_disposition(run, raw_server, disposition, expected):
    def handler(request, conn):
        raw = (
            "HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nContent-Length: 26\r\n"
            "Connection: close\r\nContent-Disposition: "
        )
        conn.sendall(raw.encode("latin-1") + disposition.encode("latin-1") + b"\r\n\r\n" + CSV)

    outcome = run(raw_server.route("/download", handler))
    assert outcome.status_id == status.ARCHIVED
    assert outcome.filename == expected


def test_raw_utf8_filename_in_content_disposition(run, raw_server):
    def handler(request, conn):
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Length: 26\r\nConnection: close\r\n"
            b'Content-Disposition: attachment; filename="r\xc3\xa9sum\xc3\xa9.csv"\r\n\r\n' + CSV
        )

    assert run(raw_server.route("/x", handler)).filename == "résumé.csv"


def test_url_with_spaces_and_unicode(run, raw_server):
    raw_server.route("/my%20data/caf%C3%A9.csv", serve_bytes(CSV, "text/csv"))
    outcome = run(f"  {raw_server.base_url}/my data/café.csv?q=a b#frag \n")
    assert outcome.status_id == status.ARCHIVED, outcome.reason
    assert outcome.url == f"{raw_server.base_url}/my%20data/caf%C3%A9.csv?q=a%20b"
    assert raw_server.requests[0].target == "/my%20data/caf%C3%A9.csv?q=a%20b"
    assert outcome.filename == "café.csv"


def test_idna_host_is_encoded_and_fetched(run, raw_server, monkeypatch):
    real = socket.getaddrinfo

    def fake_getaddrinfo(host, *args, **kwargs):
        if host == "xn--bcher-kva.test":
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    raw_server.route("/x.csv", serve_bytes(CSV, "text/csv"))
    outcome = run(f"http://BÜCHER.test:{raw_server.port}/x.csv")
    assert outcome.status_id == status.ARCHIVED, outcome.reason
    assert outcome.url == f"http://xn--bcher-kva.test:{raw_server.port}/x.csv"
    assert raw_server.requests[0].header("host") == f"xn--bcher-kva.test:{raw_server.port}"


# --------------------------------------------------------------------------
# Invalid URLs


@pytest.mark.parametrize(
    "url, words",
    [
        ("ftp://{host}/data.csv", '"ftp:" links cannot be checked'),
        ("file:///etc/passwd", '"file:" links cannot be checked'),
        ("data:text/csv,a,b", '"data:" links cannot be checked'),
        ("javascript:alert(1)", '"javascript:" links cannot be checked'),
        ("mailto:someone@example.org", '"mailto:" links cannot be checked'),
        ("/relative/data.csv", "must be absolute"),
        ("{host}/data.csv", "must be absolute"),
        ("", "URL is empty"),
        ("   \n", "URL is empty"),
        (None, "URL is empty"),
        ("http://", "no host name"),
        ("http://exa mple.org/", "invalid host name"),
        ("http://127.0.0.1:99999/", "invalid port"),
        ("C:\\data\\file.csv", "file on a computer"),
    ],
)
def test_invalid_urls(run, raw_server, url, words):
    host = f"127.0.0.1:{raw_server.port}"
    outcome = run(url.format(host=host) if url else url)
    assert outcome.status_id == status.URL_INVALID
    assert words in outcome.reason
    assert status.is_broken(outcome.status_id)
    assert raw_server.connections == 0


# --------------------------------------------------------------------------
# Conditional requests and freshness


def test_etag_304(run, raw_server):
    url = raw_server.route("/e.csv", _etag_handler(CSV, etag='"v1"'))
    first = run(url)
    assert first.status_id == status.ARCHIVED and first.etag == '"v1"'
    previous = Previous(url=url, etag=first.etag, sha256=first.sha256)
    second = run(url, previous)
    assert raw_server.requests[1].header("if-none-match") == '"v1"'
    assert second.status_id == status.UNCHANGED
    assert second.reason == "Content has not changed"
    assert second.http_status == 304 and second.tmp_path is None
    assert second.etag == '"v1"' and second.sha256 == first.sha256
    assert second.bytes_received == 0


def test_last_modified_304_and_validators_kept_when_omitted(run, raw_server):
    lm = "Wed, 21 Oct 2015 07:28:00 GMT"

    def handler(request, conn):
        if request.header("if-modified-since") == lm:
            respond(conn, 304, b"", {}, content_length=None, keep_alive=True)  # no validators
        else:
            respond(conn, 200, CSV, {"Last-Modified": lm, "ETag": '"abc"'}, keep_alive=True)
        return KEEP_ALIVE

    url = raw_server.route("/lm.csv", handler)
    first = run(url)
    assert first.last_modified == lm
    second = run(url, Previous(url=url, etag='"abc"', last_modified=lm, sha256=first.sha256))
    assert raw_server.requests[1].header("if-modified-since") == lm
    assert second.status_id == status.UNCHANGED
    assert (second.etag, second.last_modified) == ('"abc"', lm)


def test_304_refreshes_validators(run, raw_server):
    def handler(request, conn):
        respond(
            conn,
            304,
            b"",
            {"ETag": '"v2"', "Cache-Control": "max-age=60"},
            content_length=None,
            keep_alive=True,
        )
        return KEEP_ALIVE

    url = raw_server.route("/r.csv", handler)
    outcome = run(url, Previous(url=url, etag='"v1"'))
    assert outcome.status_id == status.UNCHANGED
    assert outcome.etag == '"v2"' and outcome.cache_control == "max-age=60"
    assert outcome.fresh_until is not None


def test_weak_etag_sent_back_verbatim(run, raw_server):
    url = raw_server.route("/w.csv", _etag_handler(CSV, etag='W/"weak-1"'))
    first = run(url)
    assert first.etag == 'W/"weak-1"'
    second = run(url, Previous(url=url, etag=first.etag))
    assert raw_server.requests[1].header("if-none-match") == 'W/"weak-1"'
    assert second.status_id == status.UNCHANGED


def test_server_ignoring_validators_same_body_is_unchanged(run, raw_server):
    url = raw_server.route("/same.csv", serve_bytes(CSV, "text/csv", headers={"ETag": '"x"'}))
    first = run(url)
    second = run(url, Previous(url=url, etag='"x"', sha256=first.sha256))
    assert second.status_id == status.UNCHANGED
    assert "same file" in second.reason
    assert second.tmp_path is None and second.sha256 == first.sha256
    assert second.size == len(CSV)  # the fixture asserted the temp file is gone


def test_changed_body_is_archived_again(run, raw_server):
    url = raw_server.route("/c.csv", serve_bytes(CSV + b"gamma,3\n", "text/csv"))
    outcome = run(url, Previous(url=url, sha256=hashlib.sha256(CSV).hexdigest()))
    assert outcome.status_id == status.ARCHIVED


def test_url_change_ignores_validators_and_freshness(run, raw_server):
    url = raw_server.route("/new.csv", _etag_handler(CSV, etag='"v1"'))
    previous = Previous(
        url=raw_server.url("/old.csv"),
        etag='"v1"',
        fresh_until=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    outcome = run(url, previous)
    assert outcome.status_id == status.ARCHIVED
    assert raw_server.requests[0].header("if-none-match") is None


def test_missing_cache_file_means_full_download(run, raw_server, tmp_path):
    url = raw_server.route("/m.csv", _etag_handler(CSV, etag='"v1"'))
    previous = Previous(url=url, etag='"v1"', cache_filepath=str(tmp_path / "gone.csv"))
    outcome = run(url, previous)
    assert outcome.status_id == status.ARCHIVED
    assert raw_server.requests[0].header("if-none-match") is None


def test_freshness_skips_the_request_unless_forced(run, raw_server):
    url = raw_server.route("/f.csv", _etag_handler(CSV, etag='"v1"'))
    until = datetime.now(timezone.utc) + timedelta(minutes=10)
    previous = Previous(url=url, etag='"v1"', sha256="abc", fresh_until=until)
    skipped = run(url, previous)
    assert skipped.status_id == status.UNCHANGED
    assert skipped.reason == f"Still fresh until {until.isoformat()}"
    assert skipped.etag == '"v1"' and skipped.fresh_until == until
    assert raw_server.connections == 0
    forced = run(url, previous, force=True)
    assert forced.status_id == status.UNCHANGED and forced.http_status == 304
    assert len(raw_server.requests) == 1
    expired = dataclasses.replace(previous, fresh_until=datetime.now(timezone.utc) - timedelta(1))
    assert run(url, expired).http_status == 304


def test_fresh_until_from_response_headers(run, raw_server):
    def with_headers(headers):
        return serve_bytes(CSV, "text/csv", headers=headers)

    now = datetime.now(timezone.utc)
    max_age = run(raw_server.route("/a", with_headers({"Cache-Control": "public, max-age=600"})))
    assert timedelta(seconds=590) < max_age.fresh_until - now < timedelta(seconds=610)
    capped = run(
        raw_server.route("/b", with_headers({"Cache-Control": "max-age=99999999"})),
        max_fresh_seconds=3600,
    )
    assert capped.fresh_until - now < timedelta(seconds=3610)
    no_cache = run(raw_server.route("/c", with_headers({"Cache-Control": "no-cache, max-age=60"})))
    assert no_cache.fresh_until is None
    expires = run(
        raw_server.route(
            "/d",
            with_headers(
                {
                    "Date": format_datetime(now, usegmt=True),
                    "Expires": format_datetime(now + timedelta(seconds=300), usegmt=True),
                }
            ),
        )
    )
    assert timedelta(seconds=280) < expires.fresh_until - now < timedelta(seconds=310)
    assert run(raw_server.route("/e", with_headers({"Expires": "0"}))).fresh_until is None


# --------------------------------------------------------------------------
# Size caps


def test_content_length_over_the_cap_is_refused_early(run, raw_server):
    body = b"x" * 2_000_000
    outcome = run(raw_server.route("/big.bin", serve_bytes(body)), max_content_length=1_000_000)
    assert outcome.status_id == status.CHOSE_NOT_TO_DOWNLOAD
    assert outcome.reason == "File too large: 2.0 MB is over the 1.0 MB limit"
    assert outcome.size == 2_000_000 and outcome.bytes_received == 0
    assert status.is_broken(outcome.status_id) is None


def test_no_cap(run, raw_server):
    body = os.urandom(1_000_000) * 2
    outcome = run(raw_server.route("/big.bin", serve_bytes(body)), max_content_length=0)
    assert outcome.status_id == status.ARCHIVED and outcome.size == 2_000_000
    # past the first MB the hashes are computed in a helper thread: still exact
    assert outcome.sha256 == hashlib.sha256(body).hexdigest()
    assert outcome.hash == hashlib.sha1(body).hexdigest()


def test_missing_content_length_over_the_cap(run, raw_server):
    def close_delimited(request, conn):
        respond(conn, 200, b"y" * 3_000_000, {"Content-Type": "text/plain"}, content_length=None)

    outcome = run(raw_server.route("/nolength", close_delimited), max_content_length=1_000_000)
    assert outcome.status_id == status.CHOSE_NOT_TO_DOWNLOAD
    assert outcome.reason == (
        "File too large: over the 1.0 MB limit (the server did not say how large it is)"
    )
    assert 1_000_000 < outcome.bytes_received < 1_200_000


def test_endless_chunked_stream_is_cut_at_the_cap(run, raw_server):
    def endless(request, conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        frame = b"10000\r\n" + b"z" * 0x10000 + b"\r\n"
        while True:
            conn.sendall(frame)

    outcome = run(raw_server.route("/endless", endless), max_content_length=500_000)
    assert outcome.status_id == status.CHOSE_NOT_TO_DOWNLOAD
    assert outcome.bytes_received < 700_000


def test_content_length_lying_long(run, raw_server):
    def short_body(request, conn):
        respond(conn, 200, b"a" * 400, {"Content-Type": "text/csv"}, content_length=1000)

    outcome = run(raw_server.route("/liar", short_body))
    assert outcome.status_id == status.DOWNLOAD_FAILURE
    assert outcome.reason == "Connection closed after 400 of 1000 bytes"
    assert outcome.transient and outcome.http_status == 200


def test_content_length_lying_short_cannot_pass_the_cap(run, raw_server):
    def long_body(request, conn):
        respond(
            conn,
            200,
            b"b" * 300_000,
            {"Content-Type": "text/plain"},
            content_length=10,
            keep_alive=True,
        )
        return KEEP_ALIVE

    url = raw_server.route("/liar", long_body)
    raw_server.route("/next.csv", serve_bytes(CSV, "text/csv"))
    outcome = run(url, max_content_length=100_000)
    assert outcome.status_id == status.ARCHIVED
    assert outcome.size == 10 and outcome.body == b"b" * 10  # HTTP: the message ends there
    # the extra bytes do not poison the pooled connection for the next request
    after = run(raw_server.url("/next.csv"), max_content_length=100_000)
    assert after.status_id == status.ARCHIVED and after.body == CSV


def test_chunked_stream_closed_mid_body(run, raw_server):
    def broken(request, conn):
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100\r\n" + b"c" * 256 + b"\r\n"
        )

    outcome = run(raw_server.route("/broken", broken))
    assert outcome.status_id == status.DOWNLOAD_FAILURE
    assert outcome.reason.startswith("Connection closed before the end of the file")
    assert outcome.transient


def _gzip_bomb(size: int) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9) as f:
        chunk = b"\0" * 1_000_000
        for _ in range(size // len(chunk)):
            f.write(chunk)
    return buffer.getvalue()


def test_gzip_bomb_cannot_pass_the_cap(run, raw_server):
    bomb = _gzip_bomb(20_000_000)
    assert len(bomb) < 100_000
    headers = {"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"}

    def handler(request, conn):
        respond(conn, 200, bomb, headers)

    outcome = run(raw_server.route("/bomb", handler), max_content_length=1_000_000)
    assert outcome.status_id == status.CHOSE_NOT_TO_DOWNLOAD
    assert "over the 1.0 MB limit once decompressed" in outcome.reason
    assert outcome.bytes_received <= len(bomb)


def test_gzip_encoded_response_is_decoded(run, raw_server):
    def handler(request, conn):
        respond(
            conn, 200, gzip.compress(CSV), {"Content-Type": "text/csv", "Content-Encoding": "gzip"}
        )

    outcome = run(raw_server.route("/gz.csv", handler))
    assert outcome.status_id == status.ARCHIVED and outcome.body == CSV
    assert outcome.sha256 == hashlib.sha256(CSV).hexdigest()


def test_brotli_bomb_cannot_pass_the_cap(run, raw_server):
    brotli = pytest.importorskip("brotli")
    bomb = brotli.compress(b"\0" * 20_000_000)

    def handler(request, conn):
        respond(conn, 200, bomb, {"Content-Encoding": "br"})

    outcome = run(raw_server.route("/br", handler), max_content_length=1_000_000)
    assert outcome.status_id == status.CHOSE_NOT_TO_DOWNLOAD


# --------------------------------------------------------------------------
# Time caps


def test_slow_drip_stops_at_the_total_deadline(run, raw_server):
    url = raw_server.route("/drip", drip(b"x" * 50, 0.5))
    started = time.monotonic()
    outcome = run(url, read_timeout=1, total_timeout=1.5)
    elapsed = time.monotonic() - started
    assert outcome.status_id == status.REQUEST_FAILED
    assert outcome.reason == "Timed out after 1.5 s"
    assert outcome.transient
    assert 1.4 < elapsed < 3.5  # not the 25 s the drip would take


def test_dripping_headers_stop_at_the_total_deadline(run, raw_server):
    url = raw_server.route("/drip-head", drip(b"y" * 50, 0.2, in_headers=True))
    started = time.monotonic()
    outcome = run(url, read_timeout=1, total_timeout=1.5)
    assert outcome.reason == "Timed out after 1.5 s"
    assert time.monotonic() - started < 3.5
    assert outcome.host_answered is False, "no whole response: counts as not answering"


def test_dripping_redirect_body_stops_at_the_total_deadline(run, raw_server):
    def handler(request, conn):
        conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: /next\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            conn.sendall(b"x")
            time.sleep(0.3)

    started = time.monotonic()
    outcome = run(raw_server.route("/slow-redirect", handler), read_timeout=1, total_timeout=1.5)
    assert outcome.reason == "Timed out after 1.5 s"
    assert time.monotonic() - started < 3.5
    assert raw_server.paths() == ["/slow-redirect"]
    assert outcome.host_answered is True, "it sent a response: slow, not dead"


def test_read_timeout_waiting_for_the_response(run, raw_server):
    def silent(request, conn):
        time.sleep(2)

    outcome = run(raw_server.route("/silent", silent), read_timeout=0.3)
    assert outcome.status_id == status.REQUEST_FAILED
    assert outcome.reason == "Timed out after 0.3 s waiting for the server to respond"
    assert outcome.transient
    assert outcome.host_answered is False


def test_timeout_after_a_redirect_is_not_the_first_hosts(run, raw_server_factory):
    first, second = raw_server_factory(), raw_server_factory()

    def silent(request, conn):
        time.sleep(2)

    first.route("/moved", redirect(second.route("/silent", silent)))
    outcome = run(first.url("/moved"), read_timeout=0.3)
    assert outcome.reason == "Timed out after 0.3 s waiting for the server to respond"
    assert outcome.host_answered is True


def test_read_timeout_in_the_body(run, raw_server):
    def stall(request, conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"s" * 10)
        time.sleep(2)

    outcome = run(raw_server.route("/stall", stall), read_timeout=0.3)
    assert outcome.status_id == status.REQUEST_FAILED
    assert outcome.reason == "Timed out after 0.3 s waiting for data"
    assert outcome.host_answered is True


# --------------------------------------------------------------------------
# Redirects


def test_redirect_chain(run, raw_server):
    raw_server.route("/a", redirect("/b", 301))
    raw_server.route("/b", redirect(raw_server.url("/files/c.csv"), 307))
    raw_server.route("/files/c.csv", serve_bytes(CSV, "text/csv"))
    outcome = run(raw_server.url("/a"))
    assert outcome.status_id == status.ARCHIVED
    assert outcome.url == raw_server.url("/a")
    assert outcome.url_redirected_to == raw_server.url("/files/c.csv")
    assert outcome.filename == "c.csv"
    assert outcome.host_answered is True
    assert raw_server.paths() == ["/a", "/b", "/files/c.csv"]


def test_redirect_to_an_error_keeps_the_final_url(run, raw_server):
    raw_server.route("/moved", redirect("gone.csv", 302))
    outcome = run(raw_server.url("/moved"))
    assert outcome.status_id == status.DOWNLOAD_ERROR
    assert outcome.url_redirected_to == raw_server.url("/gone.csv")


def test_redirect_loop(run, raw_server):
    raw_server.route("/a", redirect("/b"))
    raw_server.route("/b", redirect("/a"))
    outcome = run(raw_server.url("/a"))
    assert outcome.status_id == status.DOWNLOAD_ERROR
    assert outcome.reason == "Redirect loop"
    assert outcome.url_redirected_to == raw_server.url("/b")
    assert raw_server.paths() == ["/a", "/b"]


def test_too_many_redirects(run, raw_server):
    for i in range(10):
        raw_server.route(f"/r{i}", redirect(f"/r{i + 1}"))
    outcome = run(raw_server.url("/r0"), max_redirects=3)
    assert outcome.status_id == status.DOWNLOAD_ERROR
    assert outcome.reason == "Too many redirects (over 3)"
    assert outcome.url_redirected_to == raw_server.url("/r4")
    assert raw_server.paths() == ["/r0", "/r1", "/r2", "/r3"]


def test_redirect_to_a_non_http_scheme(run, raw_server):
    raw_server.route("/ftp", redirect("ftp://example.org/data.csv"))
    outcome = run(raw_server.url("/ftp"))
    assert outcome.status_id == status.URL_INVALID
    assert outcome.reason.startswith("Redirected to an invalid URL")
    assert outcome.url_redirected_to == "ftp://example.org/data.csv"


def test_redirect_without_location(run, raw_server):
    def handler(request, conn):
        respond(conn, 302, b"")

    outcome = run(raw_server.route("/nowhere", handler))
    assert outcome.status_id == status.DOWNLOAD_ERROR
    assert outcome.reason == "Server returned 302 Found without a Location header"


# --------------------------------------------------------------------------
# The SSRF guard, end to end


def test_guard_blocks_loopback(run, raw_server):
    outcome = run(raw_server.url("/x"), allow_private_networks=False)
    assert outcome.status_id == status.URL_INVALID
    assert outcome.reason == (
        "URL points to a private or local network address (127.0.0.1), "
        "which the archiver may not fetch"
    )
    assert raw_server.connections == 0


@pytest.mark.parametrize(
    "host", ["localhost", "2130706433", "0x7f.1", "[::ffff:127.0.0.1]", "0.0.0.0"]
)
def test_guard_blocks_loopback_spellings(run, raw_server, host):
    outcome = run(f"http://{host}:{raw_server.port}/x", allow_private_networks=False)
    assert outcome.status_id == status.URL_INVALID, outcome.reason
    assert "private or local network address" in outcome.reason
    assert raw_server.connections == 0


def test_guard_blocks_ipv6_loopback(run, raw_server_factory):
    server = raw_server_factory("::1")
    outcome = run(server.url("/x"), allow_private_networks=False)
    assert outcome.status_id == status.URL_INVALID and "(::1)" in outcome.reason
    assert server.connections == 0
    assert run(server.url("/x")).status_id == status.DOWNLOAD_ERROR  # reachable when allowed


def test_guard_allowlist(run, raw_server):
    url = raw_server.route("/ok.csv", serve_bytes(CSV, "text/csv"))
    for allowed in (("127.0.0.0/8",), ("127.0.0.1",)):
        outcome = run(url, allow_private_networks=False, allowed_networks=allowed)
        assert outcome.status_id == status.ARCHIVED, outcome.reason
    outcome = run(url, allow_private_networks=False, allowed_networks=("10.0.0.0/8",))
    assert outcome.status_id == status.URL_INVALID


def test_redirect_to_a_private_address_is_blocked(run, raw_server):
    raw_server.route("/start", redirect(raw_server.url("/secret")))
    raw_server.route("/secret", serve_bytes(b"top secret"))
    start = f"http://localhost:{raw_server.port}/start"
    outcome = run(start, allow_private_networks=False, allowed_networks=("localhost",))
    assert outcome.status_id == status.URL_INVALID
    assert "(127.0.0.1)" in outcome.reason
    assert outcome.url_redirected_to == raw_server.url("/secret")
    assert raw_server.paths() == ["/start"]


def test_redirect_to_cloud_metadata_is_blocked(run, raw_server):
    raw_server.route("/start", redirect("http://169.254.169.254/latest/meta-data/"))
    outcome = run(
        raw_server.url("/start"), allow_private_networks=False, allowed_networks=("127.0.0.1",)
    )
    assert outcome.status_id == status.URL_INVALID
    assert "(169.254.169.254)" in outcome.reason


def test_proxy_checks_the_target_name_first(run, raw_server):
    """The proxy (on loopback, configured by the admin) is used; a public
    target goes through it, a private target is refused before it."""

    def proxy(request, conn):
        respond(conn, 200, CSV, {"Content-Type": "text/csv"})

    raw_server.default = proxy
    public = "http://93.184.215.14/data.csv"  # never contacted: the proxy answers
    outcome = run(public, allow_private_networks=False, proxy=raw_server.base_url)
    assert outcome.status_id == status.ARCHIVED, outcome.reason
    assert raw_server.requests[0].target == public
    private = run("http://10.1.2.3/admin", allow_private_networks=False, proxy=raw_server.base_url)
    assert private.status_id == status.URL_INVALID and "(10.1.2.3)" in private.reason
    assert len(raw_server.requests) == 1


def test_proxy_from_the_environment(run, raw_server, monkeypatch):
    raw_server.default = lambda request, conn: respond(conn, 200, CSV, {"Content-Type": "text/csv"})
    monkeypatch.setenv("HTTP_PROXY", raw_server.base_url)
    outcome = run(
        "http://93.184.215.14/env.csv", allow_private_networks=False, user_agent="env-proxy"
    )
    assert outcome.status_id == status.ARCHIVED, outcome.reason
    assert raw_server.requests[0].target == "http://93.184.215.14/env.csv"


# --------------------------------------------------------------------------
# HTTP and network errors


@pytest.mark.parametrize(
    "code, reason, transient",
    [
        (404, "Server returned 404 Not Found", False),
        (410, "Server returned 410 Gone", False),
        (401, "Server returned 401 Unauthorized", False),
        (403, "Server returned 403 Forbidden", False),
        (418, "Server returned 418 I'm a Teapot", False),
        (500, "Server returned 500 Internal Server Error", True),
        (502, "Server returned 502 Bad Gateway", True),
        (599, "Server returned 599 Custom", True),
    ],
)
def test_http_errors(run, raw_server, code, reason, transient):
    def handler(request, conn):
        respond(conn, code, b"error page", {"Content-Type": "text/html"}, reason="Custom")

    outcome = run(raw_server.route("/err", handler))
    assert outcome.status_id == status.DOWNLOAD_ERROR
    assert outcome.reason == reason
    assert outcome.transient is transient
    assert outcome.http_status == code
    assert status.is_broken(outcome.status_id) is True


@pytest.mark.parametrize("code", [503, 429])
def test_retry_after_seconds(run, raw_server, code):
    def handler(request, conn):
        respond(conn, code, b"busy", {"Retry-After": "120"})

    outcome = run(raw_server.route("/busy", handler))
    assert outcome.status_id == status.DOWNLOAD_ERROR
    assert outcome.transient and outcome.retry_after == 120
    assert outcome.reason.endswith("(retry after 120 s)")


def test_retry_after_http_date(run, raw_server):
    when = datetime.now(timezone.utc) + timedelta(seconds=90)

    def handler(request, conn):
        respond(conn, 503, b"", {"Retry-After": format_datetime(when, usegmt=True)})

    outcome = run(raw_server.route("/busy", handler))
    assert outcome.transient and 80 <= outcome.retry_after <= 91


def test_connection_refused(run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outcome = run(f"http://127.0.0.1:{port}/x")
    assert outcome.status_id == status.REQUEST_FAILED
    assert outcome.reason == "Connection refused"
    assert outcome.transient
    assert outcome.host_answered is None, "refused at once: holds no slot, not counted"


@pytest.mark.parametrize("guarded", [True, False])
def test_dns_failure(run, guarded):
    started = time.monotonic()
    outcome = run(
        "http://no-such-host.example.invalid/data.csv", allow_private_networks=not guarded
    )
    assert outcome.status_id == status.REQUEST_FAILED
    assert outcome.reason == "Could not resolve host name no-such-host.example.invalid"
    assert time.monotonic() - started < 3


def test_connection_closed_without_a_response(run, raw_server):
    raw_server.route("/hangup", lambda request, conn: None)
    outcome = run(raw_server.url("/hangup"))
    assert outcome.status_id == status.REQUEST_FAILED
    assert outcome.reason == "Server closed the connection without a response"


def test_garbage_response(run, raw_server):
    raw_server.route("/garbage", lambda request, conn: conn.sendall(b"SSH-2.0-OpenSSH\r\n\r\n"))
    outcome = run(raw_server.url("/garbage"))
    assert outcome.status_id == status.REQUEST_FAILED
    assert outcome.reason == "Server sent an invalid HTTP response"


# --------------------------------------------------------------------------
# TLS


def test_self_signed_tls(run, tls_server_factory):
    server = tls_server_factory("localhost")
    server.route("/s.csv", serve_bytes(CSV, "text/csv"))
    url = f"https://localhost:{server.port}/s.csv"
    outcome = run(url)
    assert outcome.status_id == status.REQUEST_FAILED
    assert outcome.reason == "TLS certificate is self-signed / not trusted"
    insecure = run(url, verify_https=False)
    assert insecure.status_id == status.ARCHIVED and insecure.body == CSV


def test_tls_wrong_host(run, tls_server_factory, tls_ca, tmp_path, monkeypatch):
    bundle = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    server = tls_server_factory("files.example.org")
    server.route("/s.csv", serve_bytes(CSV, "text/csv"))
    outcome = run(f"https://localhost:{server.port}/s.csv")
    assert outcome.status_id == status.REQUEST_FAILED
    assert outcome.reason == "TLS certificate not valid for host localhost"


def test_tls_trusted_through_the_guard_keeps_sni(
    run, tls_server_factory, tls_ca, tmp_path, monkeypatch
):
    bundle = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    server = tls_server_factory("localhost")
    server.route("/s.csv", serve_bytes(CSV, "text/csv"))
    outcome = run(
        f"https://localhost:{server.port}/s.csv",
        allow_private_networks=False,
        allowed_networks=("localhost",),
    )
    assert outcome.status_id == status.ARCHIVED, outcome.reason


def test_https_to_a_plain_http_port(run, raw_server):
    def plain_http(conn):
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
        return False

    raw_server.on_connect = plain_http
    outcome = run(raw_server.url("/x").replace("http://", "https://"))
    assert outcome.status_id == status.REQUEST_FAILED
    assert outcome.reason.startswith("TLS handshake failed")


# --------------------------------------------------------------------------
# Check-only mode, sessions, system errors


def test_check_only_mode(run, raw_server):
    big = b"q" * 2_000_000
    url = raw_server.route("/big.csv", serve_bytes(big, "text/csv", headers={"ETag": '"b"'}))
    outcome = run(url, download=False)
    assert outcome.status_id == status.CHECKED
    assert outcome.reason == "Link works (server returned 200 OK); file not downloaded"
    assert outcome.size == 2_000_000 and outcome.mimetype == "text/csv"
    assert outcome.etag == '"b"' and outcome.tmp_path is None and outcome.sha256 is None
    assert outcome.bytes_received == 0
    assert raw_server.requests[0].method == "GET"
    assert status.is_broken(outcome.status_id) is False
    missing = run(raw_server.url("/missing"), download=False)
    assert missing.status_id == status.DOWNLOAD_ERROR
    page = run(
        raw_server.route("/page", serve_bytes(b"<html></html>", "text/html")), download=False
    )
    assert page.status_id == status.CHECKED and page.is_web_page


def test_get_session_is_cached_per_settings(fetch_settings):
    first = get_session(fetch_settings)
    assert get_session(dataclasses.replace(fetch_settings)) is first
    other = get_session(dataclasses.replace(fetch_settings, user_agent="other"))
    assert other is not first and other.headers["User-Agent"] == "other"


def test_cookies_are_not_kept_between_requests(run, raw_server, fetch_settings):
    def handler(request, conn):
        respond(conn, 200, CSV, {"Set-Cookie": "session=abc; Path=/"}, keep_alive=True)
        return KEEP_ALIVE

    url = raw_server.route("/c.csv", handler)
    run(url)
    run(url)
    assert raw_server.requests[1].header("cookie") is None


def test_unexpected_error_is_a_system_error(run, raw_server):
    class Broken(requests.Session):
        def request(self, *args, **kwargs):
            raise RuntimeError("/srv/secret/path exploded")

    outcome = run(raw_server.url("/x"), session=Broken())
    assert outcome.status_id == status.SYSTEM_ERROR
    assert outcome.reason == "Unexpected error during the check (RuntimeError)"


def test_worker_time_limit_is_not_swallowed(raw_server, fetch_settings, fetch_tmp_dir):
    class SoftTimeLimitExceeded(Exception):  # what Celery raises; matched by name
        pass

    class Limited(requests.Session):
        def request(self, *args, **kwargs):
            raise SoftTimeLimitExceeded()

    url = raw_server.route("/d.csv", serve_bytes(CSV, "text/csv"))
    with pytest.raises(SoftTimeLimitExceeded):
        fetch(url, fetch_settings, tmp_dir=fetch_tmp_dir, session=Limited())
    assert os.listdir(fetch_tmp_dir) == []


def test_unusable_tmp_dir_is_a_system_error(raw_server, fetch_settings, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    url = raw_server.route("/d.csv", serve_bytes(CSV, "text/csv"))
    outcome = fetch(url, fetch_settings, tmp_dir=str(not_a_dir))
    assert outcome.status_id == status.SYSTEM_ERROR
    assert outcome.reason.startswith("Could not create a temporary file (")
    assert str(tmp_path) not in outcome.reason


def test_allowed_networks_from_a_list_or_string():
    assert FetchSettings(allowed_networks=["10.0.0.0/8", "a.b"]).allowed_networks == (
        "10.0.0.0/8",
        "a.b",
    )
    assert FetchSettings(allowed_networks="10.0.0.0/8, a.b").allowed_networks == (
        "10.0.0.0/8",
        "a.b",
    )
    hash(FetchSettings(allowed_networks=["x"]))


def test_default_settings_match_the_interface():
    settings = FetchSettings()
    assert settings.max_content_length == 50_000_000
    assert (settings.connect_timeout, settings.read_timeout, settings.total_timeout) == (
        10,
        30,
        300,
    )
    assert settings.max_redirects == 10 and settings.verify_https and settings.download
    assert not settings.allow_private_networks and settings.chunk_size == 64 * 1024
