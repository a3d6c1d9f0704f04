"""Hostile input: a corpus of URLs and server behaviours pushed through
``batch.archive_batch`` with real database rows, in a separate process
(as a worker runs it), with the SSRF guard on.

The corpus is served from 127.0.0.1 and ``allowed_networks`` is exactly
``127.0.0.1``: everything else private stays blocked (127.0.0.2, 10/8,
169.254.169.254, [::1], 0.0.0.0). Canary servers listen on 127.0.0.2 and
[::1]: the guard must refuse those addresses before connecting, so they
never see a connection. Host names are resolved by a stand-in resolver in
that process (``*.rel.test`` names map to chosen addresses, anything else
must be numeric or ``localhost``): no DNS query leaves the machine.

The whole corpus runs once (one batch, concurrently, as a worker would);
each case is then one parametrized test on its row. For every case: the
expected status id, a reason matching a pattern, ``is_broken`` by the rule,
no internal path or traceback in the reason. For the run: no exception
escaping, every file under ``archive_dir`` and none left in its ``.tmp``,
and the peak memory growth below 2 x max_content_length + 64 MB.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import zlib
from typing import Any, Callable, Optional

import pytest
import sqlalchemy as sa
from ckan import model
from ckan.tests import factories

from ckanext.archiver import status as st
from ckanext.archiver.model import Archival
from ckanext.archiver.tests.http_fixtures import KEEP_ALIVE, RawServer, respond
from ckanext.archiver.tests.reliability.helpers import write_ini

pytestmark = pytest.mark.reliability

CAP = 2_000_000  # max_content_length of the run
TOTAL = 2  # total_timeout
READ = 1  # read_timeout
MAX_REDIRECTS = 5

try:
    import brotli  # noqa: F401
except ImportError:
    try:
        import brotlicffi as brotli  # noqa: F401
    except ImportError:
        brotli = None


# -- servers ------------------------------------------------------------------

@dataclasses.dataclass
class Servers:
    main: RawServer  # 127.0.0.1, the one allowed address
    canary_v4: RawServer  # 127.0.0.2: must never be contacted
    canary_v6: Optional[RawServer]  # [::1]: must never be contacted
    tls_ok: RawServer
    tls_expired: RawServer
    tls_self_signed: RawServer
    tls_wrong_host: RawServer
    plain: RawServer  # answers plain HTTP as soon as a client connects
    closed_port: int  # nothing listens there

    def url(self, path: str) -> str:
        return self.main.url(path)


def _ok(body: bytes, content_type: str = "text/csv", headers: Optional[dict] = None):
    def handler(request, conn):
        respond(conn, 200, body, {"Content-Type": content_type, **(headers or {})},
                keep_alive=True)
        return KEEP_ALIVE
    return handler


def _raw(data: bytes, close: bool = True):
    """Write ``data`` as it is, then close."""
    def handler(request, conn):
        conn.sendall(data)
    return handler


def _redirect(target: Callable[[Servers], str], status: int = 302):
    def make(servers: Servers):
        location = target(servers)

        def handler(request, conn):
            respond(conn, status, b"", {"Location": location}, keep_alive=True)
            return KEEP_ALIVE
        return handler
    return make


def _chain(request, conn):
    """/chain/<n> redirects to /chain/<n+1>, for ever."""
    n = int(request.path.rsplit("/", 1)[-1])
    respond(conn, 302, b"", {"Location": f"/chain/{n + 1}"}, keep_alive=True)
    return KEEP_ALIVE


def _endless_chunked(request, conn):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    try:
        while True:
            conn.sendall(chunk)
    except OSError:
        return


def _slow_endless(request, conn):
    """Under the read timeout, for ever: only the total deadline stops it."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    try:
        while True:
            conn.sendall(b"1\r\nz\r\n")
            time.sleep(0.2)
    except OSError:
        return


def _slow_headers(request, conn):
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    try:
        for i in range(10_000):
            conn.sendall(b"X-Slow-%d: 1\r\n" % i)
            time.sleep(0.2)
    except OSError:
        return


def _hang(request, conn):
    time.sleep(TOTAL + 3)


def _header_flood(request, conn):
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
    head += b"".join(b"X-Flood-%d: %s\r\n" % (i, b"v" * 20) for i in range(5000))
    try:
        conn.sendall(head + b"\r\nok")
    except OSError:
        return


def _huge_header(request, conn):
    try:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Huge: "
                     + b"h" * 1_000_000 + b"\r\nContent-Length: 2\r\n\r\nok")
    except OSError:
        return


def _answer_at_once(conn):
    respond(conn, 400, b"plain HTTP here")
    return False


def _reset(request, conn):
    import struct
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _bomb(encoding: str):
    """A route factory: 40 MB of zeros, compressed (made when the route is)."""
    def make(servers: Servers):
        if encoding == "br":
            body = brotli.compress(b"\0" * (20 * CAP))
        else:
            packer = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
            block = b"\0" * 1_000_000
            body = b"".join(packer.compress(block) for _ in range(20 * CAP // len(block)))
            body += packer.flush()
        return _ok(body, "application/octet-stream", {"Content-Encoding": encoding})
    return make


def _disposition(value: bytes):
    """A file with a raw (bytes) Content-Disposition header."""
    def handler(request, conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nContent-Length: 4\r\n"
                     b"Content-Disposition: " + value + b"\r\nConnection: close\r\n\r\na,b\n")
    return handler


# -- the corpus ---------------------------------------------------------------

@dataclasses.dataclass
class Case:
    id: str
    status: int
    reason: str  # regular expression
    url: Any = None  # str (``{main}`` etc. filled in) or callable(servers)
    handler: Any = None  # route at /<id> on the main server: handler or factory(servers)
    filename: Optional[str] = None  # the archived file's expected name (regex)
    size: Optional[int] = None
    check: Optional[Callable[[dict], bool]] = None  # more about the row
    marks: tuple = ()
    enabled: bool = True  # run in the corpus (False: its test is skipped)

    def param(self):
        return pytest.param(self, id=self.id, marks=self.marks)


BLOCKED = (r"URL points to a private or local network address \({}\), which the archiver "
           r"may not fetch")

CASES = [
    # malformed URLs
    Case("empty", 10, r"^URL is empty$", url="   "),
    Case("no-scheme", 10, r"must be absolute and start with http", url="example.org/data.csv"),
    Case("not-a-url", 10, r"must be absolute|not valid|no host", url="not a url at all"),
    Case("no-host", 10, r"^URL has no host name$", url="http://"),
    Case("bad-ipv6", 10, r"^URL is not valid$", url="http://[::1/x"),
    Case("space-in-host", 10, r"invalid host name", url="http://exa mple.org/"),
    Case("bad-port", 10, r"invalid port number", url="http://127.0.0.1:99999/"),
    Case("control-chars", 10, r"control characters", url="http://127.0.0.1/\x07bell"),
    Case("windows-path", 10, r"file on a computer", url="C:\\data\\file.csv"),
    Case("percent-host", 10, r"invalid host name", url="http://127.0.0.1%2F.example/"),
    Case("10k-host", 10, r"invalid host name", url="http://" + "a" * 10_000 + ".org/"),
    Case("10k-path", 0, r"^Downloaded 2 bytes$", url=lambda s: s.url("/" + "p" * 10_000),
         handler=None, filename=r"^p{100,180}$"),
    Case("10k-query", 0, r"^Downloaded 2 bytes$",
         url=lambda s: s.url("/10k-query?" + "q=" + "v" * 10_000), handler=_ok(b"ok")),
    # other schemes
    Case("file", 10, r'"file:" links cannot be checked', url="file:///etc/passwd"),
    Case("ftp", 10, r'"ftp:" links cannot be checked', url="ftp://127.0.0.1/pub/x.csv"),
    Case("data", 10, r'"data:" links cannot be checked', url="data:text/plain,hello"),
    Case("javascript", 10, r'"javascript:" links cannot be checked',
         url="javascript:alert(document.cookie)"),
    Case("mailto", 10, r'"mailto:" links cannot be checked', url="mailto:admin@example.org"),
    Case("gopher", 10, r'"gopher:" links cannot be checked', url="gopher://127.0.0.1:70/1"),
    # addresses the guard must refuse before connecting
    Case("direct-127.0.0.2", 10, BLOCKED.format(r"127\.0\.0\.2"),
         url=lambda s: s.canary_v4.url("/direct")),
    Case("direct-metadata", 10, BLOCKED.format(r"169\.254\.169\.254"),
         url="http://169.254.169.254/latest/meta-data/"),
    Case("direct-decimal-ip", 10, BLOCKED.format(r"127\.0\.0\.2"),
         url=lambda s: f"http://2130706434:{s.canary_v4.port}/decimal"),
    Case("direct-ipv4-mapped", 10, r"private or local network address",
         url=lambda s: f"http://[::ffff:127.0.0.2]:{s.canary_v4.port}/mapped"),
    Case("direct-ipv6-loopback", 10, BLOCKED.format(r"::1"),
         url=lambda s: f"http://[::1]:{s.canary_v6.port if s.canary_v6 else 9}/v6"),
    Case("name-to-metadata", 10, BLOCKED.format(r"169\.254\.169\.254"),
         url="http://metadata.rel.test/latest/meta-data/"),
    Case("name-to-private", 10, BLOCKED.format(r"10\.0\.0\.1"),
         url="http://intranet.rel.test/admin"),
    Case("name-to-127.0.0.2", 10, BLOCKED.format(r"127\.0\.0\.2"),
         url=lambda s: f"http://rebind.rel.test:{s.canary_v4.port}/x"),
    Case("unresolvable", 11, r"^Could not resolve host name nowhere\.rel\.test$",
         url="http://nowhere.rel.test/x"),
    Case("localhost-is-127.0.0.1", 0, r"^Downloaded 2 bytes$",
         url=lambda s: f"http://localhost:{s.main.port}/localhost-is-127.0.0.1",
         handler=_ok(b"ok")),
    # redirects
    Case("redirect-loop", 12, r"^Redirect loop$", handler=_redirect(lambda s: "/redirect-loop-2")),
    Case("redirect-endless", 12, rf"Too many redirects \(over {MAX_REDIRECTS}\)",
         url=lambda s: s.url("/chain/0")),
    Case("redirect-file", 10, r'Redirected to an invalid URL: "file:" links',
         handler=_redirect(lambda s: "file:///etc/shadow")),
    Case("redirect-127.0.0.2", 10, BLOCKED.format(r"127\.0\.0\.2"),
         handler=_redirect(lambda s: s.canary_v4.url("/via-redirect"))),
    Case("redirect-10.0.0.1", 10, BLOCKED.format(r"10\.0\.0\.1"),
         handler=_redirect(lambda s: "http://10.0.0.1/")),
    Case("redirect-metadata", 10, BLOCKED.format(r"169\.254\.169\.254"),
         handler=_redirect(lambda s: "http://169.254.169.254/latest/meta-data/iam/", 301)),
    Case("redirect-ipv6-loopback", 10, BLOCKED.format(r"::1"),
         handler=_redirect(lambda s: f"http://[::1]:{s.canary_v6.port if s.canary_v6 else 9}/")),
    Case("redirect-0.0.0.0", 10, BLOCKED.format(r"0\.0\.0\.0"),
         handler=_redirect(lambda s: f"http://0.0.0.0:{s.main.port}/never-reached", 307)),
    Case("redirect-scheme-relative", 10, BLOCKED.format(r"127\.0\.0\.2"),
         handler=_redirect(lambda s: f"//127.0.0.2:{s.canary_v4.port}/relative")),
    Case("redirect-userinfo-trick", 10, BLOCKED.format(r"127\.0\.0\.2"),
         handler=_redirect(lambda s: f"http://127.0.0.1:{s.main.port}@127.0.0.2:"
                                     f"{s.canary_v4.port}/")),
    Case("redirect-no-location", 12, r"^Server returned 302 Found without a Location header$",
         handler=lambda r, c: respond(c, 302, b"")),
    # header floods
    Case("header-flood", 11, r"invalid HTTP response", handler=_header_flood),
    Case("header-1mb", 11, r"invalid HTTP response", handler=_huge_header),
    Case("headers-dripped", 11, rf"^Timed out after {TOTAL} s$", handler=_slow_headers),
    # bodies
    Case("endless-chunked", 21, r"File too large: over the 2\.0 MB limit \(the server did "
         r"not say how large it is\)", handler=_endless_chunked),
    Case("endless-slow", 11, rf"^Timed out after {TOTAL} s$", handler=_slow_endless),
    Case("hang", 11, rf"Timed out after {READ} s waiting for the server to respond",
         handler=_hang),
    Case("length-longer-than-body", 22, r"^Connection closed after 10 of 1000 bytes$",
         handler=_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"s" * 10)),
    Case("length-shorter-than-body", 0, r"^Downloaded 10 bytes$", size=10,
         handler=_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + b"l" * 500)),
    Case("length-huge", 21, r"File too large: .* is over the 2\.0 MB limit",
         handler=_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999\r\n\r\nxx")),
    # lenient, as http.client is: no usable length, read until the server
    # closes (still under the size cap and the deadline)
    Case("length-not-a-number", 0, r"^Downloaded 2 bytes$", size=2,
         handler=_raw(b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\nxx")),
    Case("closed-mid-chunked", 22, r"Connection closed before the end of the file",
         handler=_raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"10\r\n0123456789abcdef\r\n10\r\n01234")),
    Case("gzip-bomb", 21, r"over the 2\.0 MB limit once decompressed \(the server sent .* "
         r"gzip-compressed\)", handler=_bomb("gzip")),
    Case("deflate-bomb", 21, r"over the 2\.0 MB limit once decompressed",
         handler=_bomb("deflate")),
    Case("brotli-bomb", 21, r"over the 2\.0 MB limit once decompressed",
         handler=_bomb("br"), enabled=brotli is not None, marks=(pytest.mark.skipif(
             brotli is None, reason="brotli is not installed: urllib3 cannot decode br"),)),
    Case("gzip-garbage", 22, r"Could not decompress the response \(Content-Encoding: gzip\)",
         handler=_ok(b"\x1f\x8b\x08\x00garbage-not-gzip" * 100, "text/plain",
                     {"Content-Encoding": "gzip"})),
    Case("empty-body", 0, r"^Empty file \(0 bytes\)$", handler=_ok(b"", "text/csv"), size=0),
    Case("html-not-data", 0, r"web page, not a file", check=lambda row: row["is_web_page"],
         handler=_ok(b"<!DOCTYPE html><html><head><title>Portal</title></head>"
                     b"<body>Login</body></html>", "text/html")),
    Case("just-under-cap", 0, r"^Downloaded 2\.0 MB$", size=CAP - 1000,
         handler=_ok(b"d" * (CAP - 1000), "application/octet-stream")),
    # connections that go wrong
    Case("closed-at-once", 11, r"^Server closed the connection without a response$",
         handler=lambda r, c: None),
    Case("reset", 11, r"^(Connection reset by the server|Server closed the connection "
         r"without a response)$", handler=_reset),
    Case("not-http", 11, r"invalid HTTP response",
         handler=_raw(b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n\r\n")),
    Case("refused", 11, r"^Connection refused$", url=lambda s: f"http://127.0.0.1:{s.closed_port}/"),
    Case("server-error", 12, r"^Server returned 500 Internal Server Error$",
         handler=lambda r, c: respond(c, 500, b"oops")),
    Case("not-found", 12, r"^Server returned 404 Not Found$",
         handler=lambda r, c: respond(c, 404, b"gone")),
    Case("rate-limited", 12, r"Server returned 429 Too Many Requests \(retry after 86400 s\)",
         handler=lambda r, c: respond(c, 429, b"", {"Retry-After": "86400"})),
    Case("odd-status", 12, r"^Server returned 999 ", handler=_raw(
        b"HTTP/1.1 999 <script>alert(1)</script>\r\nContent-Length: 0\r\n\r\n")),
    # file names from Content-Disposition
    Case("cd-nul", 0, r"^Downloaded 4 bytes$", filename=r"^ab\.csv$",
         handler=_disposition(b'attachment; filename="a\x00b.csv"')),
    Case("cd-crlf", 0, r"^Downloaded 4 bytes$", filename=r"^evilname\.csv$",
         handler=_disposition(b"attachment; filename*=UTF-8''evil%0D%0Aname.csv")),
    Case("cd-encoded-nul", 0, r"^Downloaded 4 bytes$", filename=r"^ab\.csv$",
         handler=_disposition(b"attachment; filename*=UTF-8''a%00b.csv")),
    Case("cd-traversal", 0, r"^Downloaded 4 bytes$", filename=r"^evil-escape\.sh$",
         handler=_disposition(b'attachment; filename="../../../../../tmp/evil-escape.sh"')),
    Case("cd-traversal-encoded", 0, r"^Downloaded 4 bytes$", filename=r"^evil-escape2\.sh$",
         handler=_disposition(b"attachment; filename*=UTF-8''..%2F..%2F..%2Fevil-escape2.sh")),
    Case("cd-traversal-windows", 0, r"^Downloaded 4 bytes$", filename=r"^evil-escape3\.ini$",
         handler=_disposition(b'attachment; filename="..\\\\..\\\\evil-escape3.ini"')),
    Case("cd-absolute", 0, r"^Downloaded 4 bytes$", filename=r"^passwd$",
         handler=_disposition(b'attachment; filename="/etc/passwd"')),
    Case("cd-dots-only", 0, r"^Downloaded 4 bytes$", filename=r"^cd-dots-only$",
         handler=_disposition(b'attachment; filename=".."')),
    Case("cd-hidden", 0, r"^Downloaded 4 bytes$", filename=r"^htaccess$",
         handler=_disposition(b'attachment; filename=".htaccess"')),
    Case("cd-very-long", 0, r"^Downloaded 4 bytes$", filename=r"^n{100,176}\.csv$",
         handler=_disposition(b'attachment; filename="' + b"n" * 5000 + b'.csv"')),
    Case("cd-rtl-override", 0, r"^Downloaded 4 bytes$", filename=r"^invoicegpj\.exe$",
         handler=_disposition(b"attachment; filename*=UTF-8''invoice%E2%80%AEgpj.exe")),
    # TLS
    Case("tls-ok", 0, r"^Downloaded 2 bytes$", url=lambda s: s.tls_ok.url("/tls")),
    Case("tls-self-signed", 11, r"^TLS certificate is self-signed / not trusted$",
         url=lambda s: s.tls_self_signed.url("/tls")),
    Case("tls-expired", 11, r"^TLS certificate has expired$",
         url=lambda s: s.tls_expired.url("/tls")),
    Case("tls-wrong-host", 11, r"^TLS certificate not valid for host 127\.0\.0\.1$",
         url=lambda s: s.tls_wrong_host.url("/tls")),
    Case("tls-to-plain-http", 11, r"^TLS handshake failed \(the server does not seem to speak "
         r"HTTPS on this port\)$", url=lambda s: s.plain.url("/x").replace("http:", "https:")),
]

RUN = [case for case in CASES if case.enabled]
CASE_IDS = [case.id for case in CASES]
assert len(set(CASE_IDS)) == len(CASE_IDS)


# -- the run ------------------------------------------------------------------

RUNNER = r"""
import json, resource, socket, sys, traceback

ini, ids_path, fake_path = sys.argv[1:4]
fake = json.load(open(fake_path))
real_getaddrinfo = socket.getaddrinfo


def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
    name = host.decode() if isinstance(host, bytes) else host
    if name in fake:
        out = []
        for addr in fake[name]:
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            if family in (0, fam):
                sockaddr = (addr, int(port or 0), 0, 0) if fam == socket.AF_INET6 else (
                    addr, int(port or 0))
                out.append((fam, socket.SOCK_STREAM, 6, "", sockaddr))
        if not out:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return out
    if name != "localhost":
        flags |= socket.AI_NUMERICHOST  # no DNS query leaves this machine
    return real_getaddrinfo(host, port, family, type, proto, flags)


socket.getaddrinfo = getaddrinfo

from ckan.cli import load_config
from ckan.config.middleware import make_app

make_app(load_config(ini))
from ckanext.archiver.worker import batch

def vm(name):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])


out = {"before_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
       "rss_before_kb": vm("VmRSS")}
try:
    result = batch.archive_batch(json.load(open(ids_path)), "bulk")
    out.update(recorded=len(result.recorded), skipped=len(result.skipped),
               retry=len(result.retry))
except BaseException:
    out["error"] = traceback.format_exc()
out["after_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out["hwm_after_kb"] = vm("VmHWM")
print("RESULT " + json.dumps(out))
"""


def _walk(root: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files)


@dataclasses.dataclass
class Corpus:
    rows: dict
    resource_ids: dict
    result: dict
    stderr: str
    root: str
    archive_dir: str
    files: list
    servers: Servers
    escaped: list
    seconds: float
    urls: dict


def _tls_server(ca, *names: str, **cert_args) -> RawServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names, **cert_args).configure_cert(context)
    server = RawServer("127.0.0.1", context)
    server.route("/tls", _ok(b"ok", "text/plain"))
    return server


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, reset_db, migrate_db_for, reset_storages):
    """Run the whole corpus once, in a subprocess; keep what the tests look
    at (rows, files, output, memory)."""
    import ckan.plugins
    import trustme

    ckan.plugins.load_all()  # the archiver's migrations; unloaded again so that
    try:  # creating the corpus queues nothing (the run is explicit)
        reset_db()
        migrate_db_for("archiver")
    finally:
        ckan.plugins.unload_all()
    reset_storages()
    root = str(tmp_path_factory.mktemp("hostile"))
    archive_dir = os.path.join(root, "archive")
    trusted, rogue = trustme.CA(), trustme.CA()
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
    started = []
    try:
        main = RawServer("127.0.0.1")
        started.append(main)
        canary_v4 = RawServer("127.0.0.2")
        started.append(canary_v4)
        try:
            canary_v6 = RawServer("::1")
            started.append(canary_v6)
        except OSError:
            canary_v6 = None
        tls = [_tls_server(trusted, "127.0.0.1"),
               _tls_server(trusted, "127.0.0.1", not_before=past - datetime.timedelta(days=60),
                           not_after=past),
               _tls_server(rogue, "127.0.0.1"),
               _tls_server(trusted, "other.example")]
        started += tls
        plain = RawServer("127.0.0.1")
        started.append(plain)
        plain.on_connect = _answer_at_once
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
        closed.close()
        servers = Servers(main, canary_v4, canary_v6, *tls, plain, closed_port)
        for server in (canary_v4, *(s for s in [canary_v6] if s)):
            server.default = _ok(b"canary reached", "text/plain")
        main.route("/redirect-loop-2", _redirect(lambda s: "/redirect-loop")(servers))
        main.default = _dispatch(servers)
        urls = {}
        for case in RUN:
            if case.handler is not None:
                main.route("/" + case.id, case.handler(servers) if _is_factory(case.handler)
                           else case.handler)
            if case.url is None:
                urls[case.id] = main.url("/" + case.id)
            else:
                urls[case.id] = case.url(servers) if callable(case.url) else case.url

        # the URLs are written as they are, past CKAN's validators: harvested
        # or older metadata can hold anything
        dataset = factories.Dataset(name="hostile-corpus", resources=[
            {"url": "http://127.0.0.1/placeholder", "name": case.id} for case in RUN])
        ids = {res["name"]: res["id"] for res in dataset["resources"]}
        for case in RUN:
            model.Session.execute(sa.update(model.Resource.__table__).where(
                model.Resource.__table__.c.id == ids[case.id]).values(url=urls[case.id]))
        model.Session.commit()

        ini = write_ini(os.path.join(root, "hostile.ini"), {
            "ckanext.archiver.archive_dir": archive_dir,
            "ckanext.archiver.max_content_length": str(CAP),
            "ckanext.archiver.total_timeout": str(TOTAL),
            "ckanext.archiver.read_timeout": str(READ),
            "ckanext.archiver.connect_timeout": "1",
            "ckanext.archiver.max_redirects": str(MAX_REDIRECTS),
            "ckanext.archiver.allowed_networks": "127.0.0.1",
            "ckanext.archiver.allow_private_networks": "false",
            "ckanext.archiver.max_retries": "0",
            "ckanext.archiver.per_host_concurrency": "100",
            "ckanext.archiver.per_host_min_interval": "0",
            "ckanext.archiver.verify_https": "true",
        })
        ids_path = os.path.join(root, "ids.json")
        with open(ids_path, "w") as f:
            json.dump(list(ids.values()), f)
        fake_path = os.path.join(root, "resolver.json")
        with open(fake_path, "w") as f:
            json.dump({"metadata.rel.test": ["169.254.169.254"],
                       "intranet.rel.test": ["10.0.0.1"],
                       "rebind.rel.test": ["127.0.0.2"]}, f)
        bundle = os.path.join(root, "ca.pem")
        trusted.cert_pem.write_to_path(bundle)
        env = {k: v for k, v in os.environ.items()
               if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy",
                                    "curl_ca_bundle")}
        env["REQUESTS_CA_BUNDLE"] = bundle
        before = _escape_candidates(archive_dir)
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-c", RUNNER, ini, ids_path, fake_path],
                              capture_output=True, text=True, timeout=90, env=env)
        seconds = time.monotonic() - t0
        result = {}
        for line in done.stdout.splitlines():
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
        assert result, f"the corpus run did not finish:\n{done.stdout}\n{done.stderr}"
        result["returncode"] = done.returncode
        escaped = sorted(_escape_candidates(archive_dir) - before)
        model.Session.remove()
        rows = {}
        for case_id, rid in ids.items():
            row = Archival.get_for_resource(rid)
            rows[case_id] = {c: getattr(row, c) for c in Archival.__table__.columns.keys()} \
                if row else None
        yield Corpus(rows, ids, result, done.stderr, root, archive_dir, _walk(root), servers,
                     escaped, seconds, urls)
    finally:
        for server in started:
            server.stop()
        model.Session.remove()


def _is_factory(handler) -> bool:
    """Handlers take (request, conn); route factories take (servers)."""
    return len(inspect.signature(handler).parameters) == 1


def _dispatch(servers: Servers):
    def handler(request, conn):
        if request.path.startswith("/chain/"):
            return _chain(request, conn)
        if request.path.startswith("/" + "p" * 100):
            return _ok(b"ok", "text/plain")(request, conn)
        respond(conn, 404, b"not found")
    return handler


_HOSTILE_NAMES = ("evil-escape", "passwd", "htaccess", "invoice", ".part")


def _escape_candidates(archive_dir: str) -> set:
    """Files named like the corpus's hostile file names where a path
    traversal out of a resource folder would put them: every ancestor of
    archive_dir, and the temp folder."""
    folders = {tempfile.gettempdir()}
    folder = os.path.realpath(archive_dir)
    while folder not in folders:
        folders.add(folder)
        folder = os.path.dirname(folder)
    found = set()
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        found.update(e.path for e in entries
                     if any(n in e.name for n in _HOSTILE_NAMES) and not e.is_dir())
    return found


# -- the tests ----------------------------------------------------------------

def test_corpus_is_large_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_hostile_input(corpus, case):
    row = corpus.rows[case.id]
    assert row is not None and row["status_id"] is not None, "no status recorded"
    reason = row["reason"]
    assert row["status_id"] == case.status, reason
    assert re.search(case.reason, reason), reason
    assert row["is_broken"] is st.is_broken(case.status)
    for leak in ("Traceback", 'File "', "/work/", corpus.root, tempfile.gettempdir() + "/"):
        assert leak not in reason
    rid = corpus.resource_ids[case.id]
    assert f"Archiving resource {rid} failed" not in corpus.stderr, "an internal error"
    assert f"Unexpected error while fetching {corpus.urls[case.id]!r}" not in corpus.stderr
    assert row["failure_count"] == (0 if st.is_broken(case.status) is False else 1)
    if case.check is not None:
        assert case.check(row), row
    if case.status == st.ARCHIVED:
        path = row["cache_filepath"]
        folder = os.path.join(os.path.realpath(corpus.archive_dir), rid[:2], rid)
        assert os.path.dirname(path) == folder
        assert os.path.isfile(path)
        if case.filename:
            assert re.search(case.filename, os.path.basename(path)), os.path.basename(path)
        if case.size is not None:
            assert row["size"] == case.size == os.path.getsize(path)
        assert len(os.path.basename(path).encode()) <= 180
    else:
        assert row["cache_filepath"] is None
        assert not os.path.exists(os.path.join(corpus.archive_dir, rid[:2], rid))


def test_no_exception_escaped(corpus):
    """archive_batch returned normally with every resource recorded, and
    every traceback in the log belongs to a resource whose internal error
    was caught and recorded (each case's own test fails on it)."""
    assert "error" not in corpus.result, corpus.result.get("error")
    assert corpus.result["returncode"] == 0
    assert corpus.result["recorded"] == len(RUN) and corpus.result["retry"] == 0
    caught = len(re.findall(r"Archiving resource \S+ failed|Unexpected error while fetching",
                            corpus.stderr))
    assert corpus.stderr.count("Traceback (most recent call last)") <= caught, (
        corpus.stderr[-5000:])


def test_files_only_under_archive_dir(corpus):
    archive = os.path.realpath(corpus.archive_dir) + os.sep
    own = {os.path.join(corpus.root, n) for n in ("hostile.ini", "ids.json", "resolver.json",
                                                  "ca.pem")}
    stray = [p for p in corpus.files if p not in own and not p.startswith(archive)]
    assert stray == []
    assert [p for p in corpus.files if os.sep + ".tmp" + os.sep in p] == []
    assert corpus.escaped == []
    kept = [p for p in corpus.files if p.startswith(archive)]
    archived = [c for c in RUN if c.status == st.ARCHIVED
                and corpus.rows[c.id]["status_id"] == st.ARCHIVED]
    assert len(kept) == len(archived)


def test_blocked_addresses_never_contacted(corpus):
    """The guard refuses before connecting: the canaries on 127.0.0.2 and
    [::1] never saw a connection, and 0.0.0.0 never reached the main
    server."""
    assert corpus.servers.canary_v4.connections == 0
    if corpus.servers.canary_v6 is not None:
        assert corpus.servers.canary_v6.connections == 0
    assert "/never-reached" not in corpus.servers.main.paths()


def test_memory_stays_bounded(corpus):
    """Peak resident memory during the run over the resident memory before
    it (the process had loaded CKAN): below 2 x max_content_length + 64 MB."""
    grew_mb = (corpus.result["hwm_after_kb"] - corpus.result["rss_before_kb"]) / 1024
    limit_mb = 2 * CAP / 1_048_576 + 64
    counts: dict = {}
    for row in corpus.rows.values():
        counts[row["status_id"]] = counts.get(row["status_id"], 0) + 1
    print(f"\n[hostile] {len(RUN)} inputs in {corpus.seconds:.1f} s; statuses {counts}; "
          f"RSS {corpus.result['rss_before_kb'] / 1024:.0f} MB before, peak "
          f"{corpus.result['hwm_after_kb'] / 1024:.0f} MB after (+{grew_mb:.1f} MB, limit "
          f"{limit_mb:.0f} MB); files outside archive_dir: {len(corpus.escaped)}")
    assert grew_mb < limit_mb
