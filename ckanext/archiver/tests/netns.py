"""Test-made "hosts": Linux network namespaces joined to the root namespace by
veth pairs, for the multi-host test and benchmark.

Namespace ``i`` gets ``10.200.<n>.2/24`` on its end of a veth pair whose
root end is ``10.200.<n>.1`` (``n`` random per run, so runs do not collide).
There is no route beyond that subnet and no forwarding: a namespace talks
only to the root end of its own veth. Services that listen on 127.0.0.1 in
the root namespace (Redis, PostgreSQL, SeaweedFS) are reached through small
TCP forwarders bound to the root ends. A name given with :meth:`Lab.alias`
resolves in every namespace to its own root end (``/etc/netns/<ns>/hosts``,
bind-mounted by ``ip netns exec``), so every host sees the same URL.
Everything is removed by :meth:`Lab.close`.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import threading
from typing import Optional


def unavailable() -> Optional[str]:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"w17probe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, ns: Optional[str] = None) -> None:
    cmd = ["ip", *args] if ns is None else ["ip", "netns", "exec", ns, "ip", *args]
    subprocess.run(cmd, check=True, capture_output=True)


class Forwarder:
    """Accepts on ``listen`` and pipes each connection to ``target``."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]):
        self.target = target
        self.sock = socket.create_server(listen, reuse_port=False)
        self.address = self.sock.getsockname()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(256 * 1024)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class Lab:
    """``count`` namespaces (see the module docstring)."""

    def __init__(self, count: int):
        self.tag = f"{os.getpid() % 10000:04d}"
        self.net = random.randint(100, 240 - count)
        self.names: list[str] = []
        self.forwarders: list[Forwarder] = []
        self.procs: list[subprocess.Popen] = []
        try:
            for i in range(count):
                self._add(i)
        except BaseException:
            self.close()
            raise

    def _add(self, i: int) -> None:
        ns, root_end = f"w17-{self.tag}-{i}", f"w17r{self.tag}{i}"
        _ip("netns", "add", ns)
        self.names.append(ns)
        os.makedirs(f"/etc/netns/{ns}", exist_ok=True)
        _ip("link", "add", root_end, "type", "veth", "peer", "name", "eth1", "netns", ns)
        _ip("addr", "add", f"{self.root_ip(i)}/24", "dev", root_end)
        _ip("link", "set", root_end, "up")
        _ip("addr", "add", f"{self.ns_ip(i)}/24", "dev", "eth1", ns=ns)
        _ip("link", "set", "eth1", "up", ns=ns)
        _ip("link", "set", "lo", "up", ns=ns)
        self._hosts(i, {})

    def root_ip(self, i: int) -> str:
        return f"10.200.{self.net + i}.1"

    def ns_ip(self, i: int) -> str:
        return f"10.200.{self.net + i}.2"

    def _hosts(self, i: int, names: dict[str, str]) -> None:
        lines = ["127.0.0.1 localhost", *(f"{ip} {name}" for name, ip in names.items())]
        with open(f"/etc/netns/{self.names[i]}/hosts", "w") as f:
            f.write("\n".join(lines) + "\n")

    def alias(self, name: str) -> None:
        """``name`` resolves, in every namespace, to its root end."""
        for i in range(len(self.names)):
            self._hosts(i, {name: self.root_ip(i)})

    def forward(self, port: int, target_port: Optional[int] = None,
                target_host: str = "127.0.0.1") -> int:
        """Forward ``<root end of every namespace>:port`` to
        ``target_host:target_port``; ``port=0`` picks one free on all."""
        target = (target_host, target_port or port)
        for _attempt in range(20):
            chosen = port
            made = []
            try:
                for i in range(len(self.names)):
                    fwd = Forwarder((self.root_ip(i), chosen), target)
                    chosen = fwd.address[1]
                    made.append(fwd)
                self.forwarders += made
                return chosen
            except OSError:
                for fwd in made:
                    fwd.close()
                if port:
                    raise
        raise RuntimeError("no port free on every veth address")

    def popen(self, i: int, cmd: list[str], **kw) -> subprocess.Popen:
        """``cmd`` in namespace ``i`` (its own process group)."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.names[i], *cmd],
                                start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)

    def close(self) -> None:
        for proc in self.procs:
            self.kill(proc, signal.SIGTERM)
        for fwd in self.forwarders:
            fwd.close()
        for ns in self.names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
        self.names = []


class Origin:
    """An origin server on ``addresses`` (one port for all): each path's body
    is ``size`` bytes derived from it, sent after ``delay`` seconds. It keeps
    ``(path, start, end)`` of every request and the most requests it ever had
    in flight at once."""

    def __init__(self, addresses: list[str], delay: float = 0.1, size: int = 20_000):
        import http.server
        import time

        origin = self
        self.delay, self.size = delay, size
        self.log: list[tuple[str, float, float]] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 - http.server's name
                start = time.monotonic()
                with origin.lock:
                    origin.in_flight += 1
                    origin.max_in_flight = max(origin.max_in_flight, origin.in_flight)
                try:
                    time.sleep(origin.delay)
                    body = origin.body(self.path)
                    self.send_response(200)
                    self.send_header("Content-Type", "text/csv")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with origin.lock:
                        origin.in_flight -= 1
                        origin.log.append((self.path, start, time.monotonic()))

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

        self.servers = []
        port = 0
        for address in addresses:
            server = Server((address, port), Handler)
            port = server.server_address[1]
            self.servers.append(server)
            threading.Thread(target=server.serve_forever, daemon=True).start()
        self.port = port

    def body(self, path: str) -> bytes:
        import hashlib

        seed = hashlib.sha256(path.encode()).hexdigest().encode()
        return (seed * (self.size // len(seed) + 1))[:self.size]

    def overlaps(self) -> list[str]:
        """Paths requested twice at the same time."""
        by_path: dict[str, list[tuple[float, float]]] = {}
        for path, start, end in self.log:
            by_path.setdefault(path, []).append((start, end))
        bad = []
        for path, spans in by_path.items():
            spans.sort()
            if any(b[0] < a[1] for a, b in zip(spans, spans[1:])):
                bad.append(path)
        return bad

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()
