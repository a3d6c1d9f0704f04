"""A pooled keep-alive connection the server has closed (its keep-alive
timeout ran out just as the next request went) is retried once on a new
connection; a reset on a new connection stays a reset. Real servers on
127.0.0.1.

The race is made deterministic: the server keeps the connection open after
its first response and closes it (FIN, or RST) when the next request arrives
on it, without answering: what a client sees when its request crosses the
server's close.
"""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest

from ckanext.archiver import status
from ckanext.archiver.engine import netguard
from ckanext.archiver.engine.session import guarded_session
from ckanext.archiver.fetch import fetch
from ckanext.archiver.tests.http_fixtures import KEEP_ALIVE, respond

CSV = b"name,count\nalpha,1\nbeta,2\n"


def _rst(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def one_per_connection(close: str = "fin", after_first: str = "close"):
    """A handler answering the first request on each connection (keep-alive,
    no ``Connection: close``); the next request on that connection gets
    ``after_first``: "close" (nothing, then FIN or RST as ``close``) or
    "partial" (the start of a status line, then RST)."""
    served: set = set()

    def handler(request, conn):
        if conn not in served:
            served.add(conn)
            respond(conn, 200, CSV, {"Content-Type": "text/csv"}, keep_alive=True)
            return KEEP_ALIVE
        if after_first == "partial":
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            time.sleep(0.2)  # the client has the bytes before the reset
            _rst(conn)
        elif close == "rst":
            _rst(conn)
        return None  # the server closes the connection

    return handler


@pytest.fixture
def check(fetch_settings, fetch_tmp_dir):
    """``check(url, session)``: a fetch through ``session`` (downloading: a
    check-only 200 closes its connection, a read body returns it to the pool)."""

    def _check(url, session):
        outcome = fetch(url, fetch_settings, tmp_dir=fetch_tmp_dir, session=session)
        if outcome.tmp_path:
            os.unlink(outcome.tmp_path)
        return outcome

    return _check


@pytest.fixture
def session():
    s = guarded_session(allow_private_networks=True)
    yield s
    s.close()


@pytest.mark.parametrize("close", ["fin", "rst"])
def test_reused_connection_closed_by_server_is_retried_on_a_new_one(
        raw_server, check, session, close):
    url = raw_server.route("/data.csv", one_per_connection(close))
    first = check(url, session)
    assert first.status_id == status.ARCHIVED, first.reason
    assert raw_server.connections == 1

    second = check(url, session)  # reuses the pooled connection: the server closes it
    assert second.status_id == status.ARCHIVED, second.reason
    assert second.http_status == 200
    assert second.host_answered is True
    assert second.size == len(CSV)
    assert raw_server.connections == 2  # the dead one, then one new connection
    assert raw_server.paths() == ["/data.csv"] * 3


@pytest.mark.parametrize("close", ["fin", "rst"])
def test_reused_tls_connection_closed_by_server_is_retried(
        tls_server_factory, tls_ca, tmp_path, monkeypatch, check, session, close):
    bundle = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    server = tls_server_factory("localhost")
    server.route("/data.csv", one_per_connection(close))
    url = f"https://localhost:{server.port}/data.csv"
    for _ in range(2):
        outcome = check(url, session)
        assert outcome.status_id == status.ARCHIVED, outcome.reason
    assert server.connections == 2
    assert len(server.requests) == 3


def test_server_that_resets_every_connection_gets_one_attempt_per_check(
        raw_server, check, session):
    def reset(request, conn):
        _rst(conn)

    url = raw_server.route("/reset", reset)
    for n in (1, 2):
        outcome = check(url, session)
        assert outcome.status_id == status.REQUEST_FAILED
        assert outcome.reason == "Connection reset by the server"
        assert outcome.transient is True
        assert raw_server.connections == n  # a new connection is not retried


def test_reset_on_the_retry_connection_stays_a_reset(raw_server, check, session):
    served: list = []

    def handler(request, conn):
        if not served:
            served.append(conn)
            respond(conn, 200, CSV, {"Content-Type": "text/csv"}, keep_alive=True)
            return KEEP_ALIVE
        _rst(conn)  # the reused connection, then the new one: both reset

    url = raw_server.route("/flaky", handler)
    assert check(url, session).status_id == status.ARCHIVED
    outcome = check(url, session)
    assert outcome.status_id == status.REQUEST_FAILED
    assert outcome.reason == "Connection reset by the server"
    assert raw_server.connections == 2  # one retry, on one new connection
    assert len(raw_server.requests) == 3


def test_no_retry_once_the_response_started(raw_server, check, session):
    url = raw_server.route("/partial", one_per_connection(after_first="partial"))
    assert check(url, session).status_id == status.ARCHIVED
    outcome = check(url, session)
    assert outcome.status_id == status.REQUEST_FAILED
    assert outcome.reason == "Connection reset by the server"
    assert raw_server.connections == 1  # not sent again


def test_server_closing_after_its_response_is_not_an_error(raw_server, check, session):
    """The close as it usually arrives: the server answers ``HTTP/1.1 304 OK``
    with no headers and closes (no ``Connection: close``); once the close has
    arrived, urllib3 sees the pooled connection dropped and connects anew."""
    answered: list = []

    def handler(request, conn):
        if answered:
            respond(conn, 200, CSV, {"Content-Type": "text/csv"}, keep_alive=True)
            return KEEP_ALIVE
        answered.append(conn)
        conn.sendall(b"HTTP/1.1 304 OK\r\n\r\n")
        return None  # then the server closes

    url = raw_server.route("/x", handler)
    assert check(url, session).http_status == 304
    deadline = time.monotonic() + 5
    while raw_server._open and time.monotonic() < deadline:  # the close is done
        time.sleep(0.01)
    time.sleep(0.05)
    outcome = check(url, session)
    assert outcome.status_id == status.ARCHIVED, outcome.reason
    assert raw_server.connections == 2
    assert len(raw_server.requests) == 2


def test_the_new_connection_is_checked_by_the_guard(raw_server, check, session):
    url = raw_server.route("/data.csv", one_per_connection("fin"))
    assert check(url, session).status_id == status.ARCHIVED
    # From now on loopback is refused: the pooled connection (already open)
    # is not checked again, the retry's new connection must be.
    pool_class = session.get_adapter(url).poolmanager.pool_classes_by_scheme["http"]
    pool_class.ConnectionCls.guard = netguard.Guard.build(False, ())
    outcome = check(url, session)
    assert outcome.status_id == status.URL_INVALID
    assert "private or local network address (127.0.0.1)" in outcome.reason
    assert raw_server.connections == 1  # the new connection was never made
