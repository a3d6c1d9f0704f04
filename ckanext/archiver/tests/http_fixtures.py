"""Real local HTTP(S) servers for the download engine's tests.

``conftest.py`` does ``from ckanext.archiver.tests.http_fixtures import *``,
which brings in the fixtures listed in ``__all__``. Tests import the helpers
(:class:`RawServer`, :func:`respond`...) from this module directly.

:class:`RawServer` is a small threaded socket server on 127.0.0.1 (or ::1 /
127.0.0.2) whose routes write raw bytes to the socket, so a test can lie
about Content-Length, close mid-body, drip bytes, stream forever or redirect
in circles; with an ``ssl_context`` it speaks TLS (certificates from
``trustme``). pytest-httpserver's ``httpserver`` fixture is fine for the
well-behaved cases. Nothing here needs CKAN, and every server listens on
loopback only.
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
import threading
import time
from typing import Callable, Iterable, Optional

import pytest

__all__ = [
    "archiver_clean_proxy_env",
    "fetch_settings",
    "fetch_tmp_dir",
    "raw_server",
    "raw_server_factory",
    "tls_ca",
    "tls_server_factory",
]

KEEP_ALIVE = "keep-alive"


@dataclasses.dataclass
class RawRequest:
    method: str
    target: str  # as sent: a path, or an absolute URL when sent to a proxy
    path: str
    headers: dict  # lower-case names
    client: tuple

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        return self.headers.get(name.lower(), default)


Handler = Callable[[RawRequest, socket.socket], Optional[str]]


def respond(
    conn: socket.socket,
    status: int = 200,
    body: bytes = b"",
    headers: Optional[Iterable] = None,
    reason: str = "",
    content_length: Optional[int] = -1,
    keep_alive: bool = False,
) -> None:
    """Write a complete response. ``content_length=-1`` sends the true
    length, ``None`` sends none (close-delimited), any other number lies."""
    head = [f"HTTP/1.1 {status} {reason or _phrase(status)}"]
    names = set()
    for name, value in headers.items() if isinstance(headers, dict) else headers or ():
        head.append(f"{name}: {value}")
        names.add(name.lower())
    if content_length is not None and "content-length" not in names:
        head.append(f"Content-Length: {len(body) if content_length == -1 else content_length}")
    if not keep_alive:
        head.append("Connection: close")
    conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)


def _phrase(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def serve_bytes(body: bytes, content_type: str = "application/octet-stream", **kwargs) -> Handler:
    """A route answering ``body`` (keep-alive) with extra ``headers``."""
    headers = {"Content-Type": content_type, **kwargs.pop("headers", {})}

    def handler(request: RawRequest, conn: socket.socket) -> str:
        respond(conn, 200, body, headers, keep_alive=True, **kwargs)
        return KEEP_ALIVE

    return handler


def redirect(location: str, status: int = 302) -> Handler:
    def handler(request: RawRequest, conn: socket.socket) -> str:
        respond(conn, status, b"", {"Location": location}, keep_alive=True)
        return KEEP_ALIVE

    return handler


class RawServer:
    """A threaded raw-socket HTTP server on a loopback address.

    ``server.route("/path", handler)`` registers ``handler(request, conn)``;
    it writes whatever it likes to ``conn`` and returns :data:`KEEP_ALIVE` to
    read another request on the same connection (otherwise the connection is
    closed). Unknown paths get a 404 (or ``default``). ``on_connect(conn)``,
    if set, runs first on each new connection (before TLS) and may return
    False to close it. ``requests`` lists every request seen, ``connections``
    counts accepted connections.
    """

    def __init__(
        self, host: str = "127.0.0.1", ssl_context: Optional[ssl.SSLContext] = None, port: int = 0
    ):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.host = host
        self.ssl_context = ssl_context
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.routes: dict = {}
        self.default: Optional[Handler] = None
        self.on_connect: Optional[Callable[[socket.socket], bool]] = None
        self.requests: list = []
        self.connections = 0
        self.errors: list = []
        self._open: set = set()
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def url(self, path: str = "/") -> str:
        return self.base_url + path

    def route(self, path: str, handler: Handler) -> str:
        self.routes[path] = handler
        return self.url(path)

    def paths(self) -> list:
        return [request.path for request in self.requests]

    def stop(self) -> None:
        self._stopped = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.sock.close()
        with self._lock:
            for conn in list(self._open):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
        self._thread.join(timeout=2)

    # -- internals -----------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                conn, client = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._open.add(conn)
            threading.Thread(target=self._serve, args=(conn, client), daemon=True).start()

    def _serve(self, conn: socket.socket, client: tuple) -> None:
        try:
            if self.on_connect is not None and self.on_connect(conn) is False:
                return
            if self.ssl_context is not None:
                conn.settimeout(5)
                tls = self.ssl_context.wrap_socket(conn, server_side=True)
                with self._lock:
                    self._open.discard(conn)
                    self._open.add(tls)
                conn = tls
            conn.settimeout(30)
            buffered = b""
            while not self._stopped:
                request, buffered = self._read_request(conn, buffered, client)
                if request is None:
                    return
                self.requests.append(request)
                handler = self.routes.get(request.path) or self.default or _not_found
                if handler(request, conn) != KEEP_ALIVE:
                    return
        except (OSError, ssl.SSLError) as e:
            self.errors.append(e)
        finally:
            with self._lock:
                self._open.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    @staticmethod
    def _read_request(conn: socket.socket, buffered: bytes, client: tuple):
        while b"\r\n\r\n" not in buffered:
            data = conn.recv(65536)
            if not data:
                return None, b""
            buffered += data
            if len(buffered) > 1 << 20:
                return None, b""
        head, _, rest = buffered.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = (lines[0].split(" ", 2) + ["", ""])[:3]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        path = target
        if "://" in target:  # absolute-form (proxy request)
            path = "/" + target.split("://", 1)[1].partition("/")[2]
        path = path.split("?", 1)[0]
        return RawRequest(method, target, path, headers, client), rest


def _not_found(request: RawRequest, conn: socket.socket) -> None:
    respond(conn, 404, b"not found", {"Content-Type": "text/plain"})


def drip(
    data: bytes, interval: float, headers: Optional[dict] = None, in_headers: bool = False
) -> Handler:
    """A route that sends ``data`` one byte every ``interval`` seconds (in
    the body, or the status line itself when ``in_headers``)."""

    def handler(request: RawRequest, conn: socket.socket) -> None:
        if not in_headers:
            hdrs = {
                "Content-Type": "text/plain",
                "Content-Length": str(len(data)),
                **(headers or {}),
            }
            head = "HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
            conn.sendall(head.encode() + b"\r\n")
            payload = data
        else:
            payload = b"HTTP/1.1 200 OK\r\nX-Slow: " + data
        for i in range(len(payload)):
            conn.sendall(payload[i : i + 1])
            time.sleep(interval)

    return handler


# --------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def raw_server_factory():
    """``make(host="127.0.0.1", ssl_context=None, port=0) -> RawServer``; all
    stopped at teardown."""
    servers = []

    def make(
        host: str = "127.0.0.1", ssl_context: Optional[ssl.SSLContext] = None, port: int = 0
    ) -> RawServer:
        server = RawServer(host, ssl_context, port)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def raw_server(raw_server_factory) -> RawServer:
    """A :class:`RawServer` on 127.0.0.1."""
    return raw_server_factory()


@pytest.fixture(scope="session")
def tls_ca():
    """A throw-away certificate authority (``trustme.CA``), trusted by nobody
    unless a test points ``REQUESTS_CA_BUNDLE`` at ``ca_bundle``."""
    import trustme

    return trustme.CA()


@pytest.fixture
def tls_server_factory(raw_server_factory, tls_ca):
    """``make(*hostnames, host="127.0.0.1") -> RawServer`` speaking TLS with a
    certificate for ``hostnames`` (default ``localhost``) issued by ``tls_ca``."""

    def make(*hostnames: str, host: str = "127.0.0.1") -> RawServer:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_ca.issue_cert(*(hostnames or ("localhost",))).configure_cert(context)
        return raw_server_factory(host, context)

    return make


@pytest.fixture
def archiver_clean_proxy_env(monkeypatch):
    """No proxy from the environment: test traffic stays on loopback."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


@pytest.fixture
def fetch_settings(archiver_clean_proxy_env):
    """Fast ``FetchSettings`` for tests: loopback allowed, short timeouts."""
    from ckanext.archiver.fetch import FetchSettings

    return FetchSettings(
        user_agent="ckanext-archiver-tests",
        max_content_length=1_000_000,
        connect_timeout=1,
        read_timeout=2,
        total_timeout=5,
        allow_private_networks=True,
    )


@pytest.fixture
def fetch_tmp_dir(tmp_path) -> str:
    """An empty directory for ``fetch(tmp_dir=...)``."""
    path = tmp_path / "archive-tmp"
    path.mkdir()
    return str(path)
