"""Tests for netguard.py: URL normalisation, the address policy, and the
guard inside real connections to servers on 127.0.0.1 / 127.0.0.2 / ::1."""

from __future__ import annotations

import socket

import pytest
import requests

from ckanext.archiver.engine import netguard
from ckanext.archiver.engine.netguard import (
    BlockedAddress,
    Guard,
    InvalidURL,
    install_guard,
    is_public_address,
    normalise_url,
)
from ckanext.archiver.tests.http_fixtures import serve_bytes


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://example.org", "http://example.org/"),
        ("  HTTPS://Example.ORG/Data.csv  ", "https://example.org/Data.csv"),
        ("http://example.org/a b/c.csv", "http://example.org/a%20b/c.csv"),
        ("http://example.org/café.csv?x=é", "http://example.org/caf%C3%A9.csv?x=%C3%A9"),
        (
            "http://example.org/already%20quoted%2Fslash",
            "http://example.org/already%20quoted%2Fslash",
        ),
        ("http://example.org/100%", "http://example.org/100%25"),
        ("http://example.org/x#fragment", "http://example.org/x"),
        ("http://bücher.example/x", "http://xn--bcher-kva.example/x"),
        ("http://münchen.de:8080/", "http://xn--mnchen-3ya.de:8080/"),
        ("http://user:pw@example.org/x", "http://user:pw@example.org/x"),
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
        ("http://[0:0::1]/x", "http://[::1]/x"),
        ("http://exam\tple.org/x\n", "http://example.org/x"),
        ("http://under_score.example.org/", "http://under_score.example.org/"),
    ],
)
def test_normalise_url(url, expected):
    assert normalise_url(url) == expected


@pytest.mark.parametrize(
    "url, words",
    [
        (None, "empty"),
        ("", "empty"),
        ("ftp://example.org/x", '"ftp:" links cannot be checked'),
        ("file:///etc/passwd", '"file:"'),
        ("gopher://example.org/", '"gopher:"'),
        ("javascript:alert(1)", '"javascript:"'),
        ("example.org/data.csv", "must be absolute"),
        ("localhost:8080/data.csv", "must be absolute"),
        ("//example.org/data.csv", "must be absolute"),
        ("http:///path", "no host name"),
        ("http://exa mple.org/", "invalid host name"),
        ("http://[fe80::1%25eth0]/", "invalid host name"),
        ("http://[::1/", "not valid"),
        ("http://example.org:port/", "invalid port"),
        ("http://example.org/\x00", "control characters"),
        ("Z:\\share\\data.csv", "file on a computer"),
    ],
)
def test_normalise_url_refuses(url, words):
    with pytest.raises(InvalidURL) as info:
        normalise_url(url)
    assert words in info.value.reason


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "93.184.215.14", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001::200e"],
)
def test_public_addresses(address):
    assert is_public_address(address)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "169.254.0.1",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "198.18.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:1::1",  # 6to4 wrapping 127.0.0.1
        "2002:a00:1::1",  # 6to4 wrapping 10.0.0.1
        "64:ff9b::a00:1",  # NAT64 wrapping 10.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 wrapping 169.254.169.254
    ],
)
def test_blocked_addresses(address):
    assert not is_public_address(address)
    assert not Guard.build().address_allowed(address)


def test_guard_build_and_allowlist():
    guard = Guard.build(
        False,
        ["Files.Intranet", ".corp.example", "*.lab.example", "10.1.0.0/16", "[fd00::1]", "", "  "],
    )
    assert guard.active
    assert guard.host_allowed("files.intranet") and guard.host_allowed("FILES.INTRANET.")
    assert guard.host_allowed("a.b.corp.example") and guard.host_allowed("corp.example")
    assert guard.host_allowed("x.lab.example") and not guard.host_allowed("lab.example.org")
    assert not guard.host_allowed("intranet")
    assert guard.address_allowed("10.1.2.3") and guard.address_allowed("::ffff:10.1.2.3")
    assert not guard.address_allowed("10.2.0.1")
    assert guard.address_allowed("fd00::1") and not guard.address_allowed("fd00::2")
    assert guard.address_allowed("8.8.8.8")
    lifted = Guard.build(True)
    assert not lifted.active and lifted.address_allowed("127.0.0.1")
    assert Guard.build(False, ["bücher.example"]).host_allowed("xn--bcher-kva.example")


def test_blocked_address_reason():
    error = BlockedAddress("metadata.internal", "169.254.169.254")
    assert error.reason == (
        "URL points to a private or local network address (169.254.169.254), "
        "which the archiver may not fetch"
    )
    assert not isinstance(error, OSError)


# --------------------------------------------------------------------------
# The guard inside real connections


@pytest.fixture
def guarded_session(archiver_clean_proxy_env):
    sessions = []

    def make(guard: Guard) -> requests.Session:
        session = requests.Session()
        install_guard(session, guard, max_retries=0)
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()


def test_guard_refuses_to_connect_to_loopback(guarded_session, raw_server):
    raw_server.route("/x", serve_bytes(b"secret"))
    session = guarded_session(Guard.build())
    with pytest.raises(BlockedAddress) as info:
        session.get(raw_server.url("/x"), timeout=2)
    assert info.value.address == "127.0.0.1"
    assert raw_server.connections == 0


def test_guard_lifted_by_allowlist_or_setting(guarded_session, raw_server):
    raw_server.route("/x", serve_bytes(b"ok"))
    for guard in (
        Guard.build(True),
        Guard.build(False, ["127.0.0.1/32"]),
        Guard.build(False, ["localhost"]),
    ):
        url = raw_server.url("/x")
        if guard.hosts:
            url = url.replace("127.0.0.1", "localhost")
        assert guarded_session(guard).get(url, timeout=2).content == b"ok"


def _fake_resolver(monkeypatch, name, answers):
    """Resolve ``name`` to successive ``answers`` (lists of IPv4 strings);
    count the lookups. Other names resolve normally."""
    real = socket.getaddrinfo
    calls = []

    def getaddrinfo(host, port, *args, **kwargs):
        if host != name:
            return real(host, port, *args, **kwargs)
        calls.append(host)
        addresses = answers[min(len(calls), len(answers)) - 1]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return calls


def test_connects_only_to_a_checked_address(guarded_session, raw_server_factory, monkeypatch):
    """The name resolves to a blocked and an allowed address: the socket is
    connected to the allowed one (127.0.0.2), never the blocked one."""
    blocked = raw_server_factory("127.0.0.1")
    allowed = raw_server_factory("127.0.0.2", port=blocked.port)
    allowed.route("/x", serve_bytes(b"from 127.0.0.2"))
    calls = _fake_resolver(monkeypatch, "multi.test", [["127.0.0.1", "127.0.0.2"]])
    session = guarded_session(Guard.build(False, ["127.0.0.2/32"]))
    response = session.get(f"http://multi.test:{blocked.port}/x", timeout=2)
    assert response.content == b"from 127.0.0.2"
    assert blocked.connections == 0 and allowed.connections == 1
    assert allowed.requests[0].header("host") == f"multi.test:{blocked.port}"
    assert calls == ["multi.test"]


def test_no_dns_rebinding_window(guarded_session, raw_server_factory, monkeypatch):
    """A resolver that answers an allowed address first and a blocked one
    next: the guard resolves once per connection and connects to exactly
    the address it checked."""
    blocked = raw_server_factory("127.0.0.1")
    allowed = raw_server_factory("127.0.0.2", port=blocked.port)
    allowed.route("/x", serve_bytes(b"checked"))
    calls = _fake_resolver(monkeypatch, "rebind.test", [["127.0.0.2"], ["127.0.0.1"]])
    session = guarded_session(Guard.build(False, ["127.0.0.2/32"]))
    assert session.get(f"http://rebind.test:{blocked.port}/x", timeout=2).content == b"checked"
    assert calls == ["rebind.test"] and blocked.connections == 0
    # a new connection resolves again, gets the blocked address, and is refused
    session.close()
    session = guarded_session(Guard.build(False, ["127.0.0.2/32"]))
    with pytest.raises(BlockedAddress):
        session.get(f"http://rebind.test:{blocked.port}/x", timeout=2)
    assert blocked.connections == 0


def test_guard_blocks_ipv6_loopback_connection(guarded_session, raw_server_factory):
    server = raw_server_factory("::1")
    with pytest.raises(BlockedAddress) as info:
        guarded_session(Guard.build()).get(server.url("/"), timeout=2)
    assert info.value.address == "::1" and server.connections == 0


def test_proxy_target_is_checked_by_name(guarded_session, raw_server):
    raw_server.default = serve_bytes(b"via proxy")
    session = guarded_session(Guard.build())
    proxies = {"http": raw_server.base_url}
    with pytest.raises(BlockedAddress):
        session.get("http://127.0.0.1:9/", proxies=proxies, timeout=2)
    assert raw_server.connections == 0
    response = session.get("http://93.184.215.14/x", proxies=proxies, timeout=2)
    assert response.content == b"via proxy"  # the proxy on loopback itself is trusted


def test_observer_sees_the_socket(guarded_session, raw_server):
    raw_server.route("/x", serve_bytes(b"ok"))
    seen = []
    session = guarded_session(Guard.build(True))
    with netguard.observe_sockets(lambda conn, sock: seen.append(sock)):
        session.get(raw_server.url("/x"), timeout=2)  # new connection
        session.get(raw_server.url("/x"), timeout=2)  # reused (keep-alive)
    session.get(raw_server.url("/x"), timeout=2)  # outside: not observed
    assert len(seen) == 2 and seen[0] is seen[1] and isinstance(seen[0], socket.socket)
    assert raw_server.connections == 1
