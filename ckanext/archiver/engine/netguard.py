"""The SSRF guard used by the download engine (``engine.attempt``) and the
webhook. No CKAN imports. (URL normalisation, :func:`normalise_url`, is in
``engine.urlnorm`` and re-exported here.)

* The guard refuses to connect to loopback, private, link-local (cloud
  metadata included), multicast, reserved and unspecified addresses, IPv4 and
  IPv6 alike. It runs *inside* the urllib3 connection at connect time: the
  host name is resolved once, every address is checked, and the socket is
  connected to a checked address. There is no window between the check and
  the connection for a DNS answer to change (DNS rebinding), and every
  redirect hop (each one a new request) goes through it again. TLS still
  verifies the certificate against the host *name* (SNI and host name
  checking are untouched).

  With a proxy the worker does not connect to the target itself: the target's
  host name is resolved and checked locally before the request is handed to
  the proxy, and the connection to the proxy (an address the administrator
  configured) is not checked. The proxy resolves the name again, so a
  rebinding window exists there; an egress proxy should apply its own rules.

:func:`install_guard` mounts the guarded adapter on a ``requests.Session``.
The connections also tell an optional per-thread observer about the socket
they use (:func:`observe_sockets`), which is how ``engine.attempt`` enforces its
wall-clock deadline while a read is blocked.

A connection reused from the pool that the server had already closed (its
keep-alive timeout ran out just as the request went) fails before any byte of
a response; that error is marked (:data:`STALE`) so ``engine.attempt`` can
send the request once more under :func:`fresh_connections`, where every
connection is a new one, connected (and checked) by the guard.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Union
from urllib.parse import urlsplit

from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.poolmanager import ProxyManager
from urllib3.util.connection import allowed_gai_family

from ckanext.archiver.engine.urlnorm import InvalidURL, host_of, normalise_host, normalise_url

__all__ = [
    "STALE",
    "BlockedAddress",
    "Guard",
    "InvalidURL",
    "fresh_connections",
    "host_of",
    "install_guard",
    "is_public_address",
    "normalise_url",
    "observe_sockets",
]

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class BlockedAddress(Exception):
    """The guard refused an address. Deliberately not an ``OSError``: urllib3
    and requests let it through unwrapped and do not retry it."""

    def __init__(self, host: str, address: str):
        super().__init__(f"{host} resolves to the non-public address {address}")
        self.host = host
        self.address = address

    @property
    def reason(self) -> str:
        return (
            f"URL points to a private or local network address ({self.address}), "
            "which the archiver may not fetch"
        )


# --------------------------------------------------------------------------
# The address policy


def is_public_address(address: Union[str, IPAddress]) -> bool:
    """True when ``address`` is a globally routable unicast address.

    False for loopback, private (RFC 1918, ULA), shared (100.64/10),
    link-local (169.254/16 with the cloud metadata service, fe80::/10),
    multicast, reserved, unspecified, documentation ranges, and for IPv6
    forms that embed a non-public IPv4 address (IPv4-mapped, 6to4, NAT64,
    Teredo).
    """
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if ip.version == 6:
        embedded = _embedded_ipv4(ip)
        if embedded is not None and not is_public_address(embedded):
            return False
    return not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> Optional[ipaddress.IPv4Address]:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class Guard:
    """Which hosts and addresses may be fetched.

    ``allowed`` entries are host names (``files.intranet``; a leading dot or
    ``*.`` also allows sub-domains: ``.intranet``), IP addresses or CIDRs
    (``10.1.0.0/16``). An allowed host name skips the address check for that
    name; an allowed network lets its addresses through for any name.
    """

    allow_private: bool = False
    hosts: frozenset = frozenset()
    domains: tuple = ()
    networks: tuple = ()

    @classmethod
    def build(cls, allow_private: bool = False, allowed: Iterable[str] = ()) -> Guard:
        hosts, domains, networks = set(), [], []
        for entry in allowed or ():
            entry = (entry or "").strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if entry.startswith("*."):
                entry = entry[1:]
            if entry.startswith("."):
                domains.append(normalise_host(entry[1:]))
            else:
                hosts.add(normalise_host(entry))
        return cls(bool(allow_private), frozenset(hosts), tuple(domains), tuple(networks))

    @property
    def active(self) -> bool:
        return not self.allow_private

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return host in self.hosts or any(
            host == domain or host.endswith("." + domain) for domain in self.domains
        )

    def address_allowed(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if self.allow_private or is_public_address(ip):
            return True
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)

    def resolve(self, host: str, port: int, family: int = socket.AF_UNSPEC) -> list:
        """``getaddrinfo`` filtered by the policy.

        :raises socket.gaierror: when the name does not resolve.
        :raises BlockedAddress: when no resolved address may be used.
        """
        infos = socket.getaddrinfo(host.strip("[]"), port, family, socket.SOCK_STREAM)
        if not self.active or self.host_allowed(host):
            return infos
        allowed = [info for info in infos if self.address_allowed(info[4][0])]
        if not allowed and infos:
            raise BlockedAddress(host, infos[0][4][0])
        return allowed

    def check_host(self, host: str, port: int = 80) -> None:
        """Resolve ``host`` and raise unless it may be fetched (used before
        handing a request to a proxy)."""
        if self.active:
            self.resolve(host, port)


# --------------------------------------------------------------------------
# Socket observer (lets engine.attempt cut a blocked read at its deadline)

_local = threading.local()


@contextmanager
def observe_sockets(callback: Callable[[Any, Optional[socket.socket]], None]) -> Iterator[None]:
    """While active, ``callback(connection, sock)`` is called in this thread
    each time a guarded connection connects or sends a request."""
    previous = getattr(_local, "observer", None)
    _local.observer = callback
    try:
        yield
    finally:
        _local.observer = previous


def _notify(connection: Any, sock: Optional[socket.socket]) -> None:
    observer = getattr(_local, "observer", None)
    if observer is not None:
        observer(connection, sock)


@contextmanager
def fresh_connections() -> Iterator[None]:
    """While active, requests in this thread do not reuse pooled
    connections: each one connects anew (through the guard)."""
    previous = getattr(_local, "fresh", False)
    _local.fresh = True
    try:
        yield
    finally:
        _local.fresh = previous


# --------------------------------------------------------------------------
# Stale pooled connections

STALE = "archiver_stale_connection"  # attribute set (True) on the OSError
_NOTHING = "archiver_nothing_received"


class _Response(http.client.HTTPResponse):
    """Marks a connection error that came before any byte of the response
    (``begin`` peeks at the first byte; the peeked byte stays buffered)."""

    def begin(self) -> None:
        try:
            started = bool(self.fp.peek(1))
        except ConnectionError as e:  # reset, aborted, broken pipe
            setattr(e, _NOTHING, True)
            raise
        try:
            super().begin()
        except ConnectionError as e:  # RemoteDisconnected: closed, nothing sent
            if not started:
                setattr(e, _NOTHING, True)
            raise


# --------------------------------------------------------------------------
# urllib3 / requests plumbing


class _GuardedConnectionMixin:
    """``_new_conn`` resolving once, checking, connecting to the checked
    address; otherwise urllib3's behaviour (socket options, timeouts, errors)."""

    guard: Guard
    response_class = _Response
    archiver_reused = False  # set by the pool: the socket served a request before

    def _new_conn(self) -> socket.socket:
        if self.proxy is not None:  # the administrator's proxy, not the target
            sock = super()._new_conn()
            _notify(self, sock)
            return sock
        try:
            infos = self.guard.resolve(self._dns_host, self.port, allowed_gai_family())
        except socket.gaierror as e:
            raise NameResolutionError(self.host, self, e) from e
        err: Optional[OSError] = None
        for family, socktype, proto, _name, sockaddr in infos:
            sock = None
            try:
                sock = socket.socket(family, socktype, proto)
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(self.timeout)
                if self.source_address:
                    sock.bind(self.source_address)
                sock.connect(sockaddr)
                sys.audit("http.client.connect", self, self.host, self.port)
                _notify(self, sock)
                return sock
            except OSError as e:
                err = e
                if sock is not None:
                    sock.close()
        if isinstance(err, socket.timeout):
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            ) from err
        raise NewConnectionError(
            self, f"Failed to establish a new connection: {err or 'no address'}"
        ) from err

    def request(self, *args: Any, **kwargs: Any) -> Any:
        if self.sock is not None:  # a reused connection (new ones notify on connect)
            _notify(self, self.sock)
        return super().request(*args, **kwargs)

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().getresponse(*args, **kwargs)
        except ConnectionError as e:
            if self.archiver_reused and getattr(e, _NOTHING, False):
                setattr(e, STALE, True)
            raise


class _GuardedPoolMixin:
    """Notes on each connection whether it is reused (its socket is still
    open from an earlier request); under :func:`fresh_connections` closes
    that socket instead, as urllib3 does with a connection it finds dropped."""

    def _get_conn(self, timeout: Optional[float] = None) -> Any:
        conn = super()._get_conn(timeout)
        if conn.sock is not None and getattr(_local, "fresh", False):
            conn.close()
        conn.archiver_reused = conn.sock is not None
        return conn


def _pool_classes(guard: Guard) -> dict:
    attrs = {"guard": guard}
    http_conn = type("GuardedHTTPConnection", (_GuardedConnectionMixin, HTTPConnection), attrs)
    https_conn = type("GuardedHTTPSConnection", (_GuardedConnectionMixin, HTTPSConnection), attrs)
    return {
        "http": type("GuardedHTTPConnectionPool", (_GuardedPoolMixin, HTTPConnectionPool),
                     {"ConnectionCls": http_conn}),
        "https": type("GuardedHTTPSConnectionPool", (_GuardedPoolMixin, HTTPSConnectionPool),
                      {"ConnectionCls": https_conn}),
    }


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose connections go through ``guard``."""

    def __init__(self, guard: Guard, **kwargs: Any):
        self.guard = guard
        self._pool_classes = _pool_classes(guard)
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pool_classes

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, ProxyManager):
            manager.pool_classes_by_scheme = self._pool_classes
        return manager

    def send(
        self,
        request: Any,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> Any:
        if proxies and select_proxy(request.url, proxies):
            parts = urlsplit(request.url)
            host = parts.hostname or ""
            if not self.guard.host_allowed(host):
                self.guard.check_host(host, parts.port or 80)
        return super().send(
            request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies
        )


def install_guard(session: Any, guard: Guard, **adapter_kwargs: Any) -> GuardedAdapter:
    """Mount a :class:`GuardedAdapter` for http:// and https:// on ``session``."""
    adapter = GuardedAdapter(guard, **adapter_kwargs)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return adapter
