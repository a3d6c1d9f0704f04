"""Helpers of the reliability suite (imported from here, never from a
conftest): private Redis servers (:class:`RedisProcess`), Celery worker
subprocesses (:func:`launch_worker`, :func:`stop_worker`, :class:`Worker`),
config files (:func:`write_ini`), memory figures from ``/proc`` and a TCP
proxy that can cut PostgreSQL away from one worker (:class:`TcpProxy`)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
from typing import Optional

from ckanext.archiver.tests.helpers import wait_for


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class RedisProcess:
    """A ``redis-server`` subprocess on 127.0.0.1 without persistence: a
    restart comes back empty, as a Redis without AOF/RDB does."""

    def __init__(self, port: int):
        self.port = port
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        assert self.proc is None or self.proc.poll() is not None
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(self.ping, timeout=10, interval=0.05)
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save (nothing is persisted anyway)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Worker:
    """A ``celery worker`` subprocess (main process ``pid``, pool children)."""

    def __init__(self, proc: subprocess.Popen, log: str, name: str):
        self.proc = proc
        self.pid = proc.pid
        self.log = log
        self.name = name

    def output(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float = 40) -> Worker:
        def ready():
            assert self.alive(), f"worker {self.name} exited:\n{self.output()[-3000:]}"
            return " ready." in self.output()

        wait_for(ready, timeout=timeout, interval=0.1)
        return self

    def children(self) -> list[int]:
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            return []

    def kill_main(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=20)

    def memory(self) -> dict[int, dict[str, int]]:
        """VmHWM and VmRSS (kB) of the main process and each pool child."""
        out = {}
        for pid in [self.pid, *self.children()]:
            out[pid] = proc_memory(pid)
        return out


def proc_memory(pid: int) -> dict[str, int]:
    figures = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("VmHWM", "VmRSS"):
                    figures[name] = int(value.split()[0])
    except FileNotFoundError:
        pass
    return figures


def group_members(pgid: int) -> list[int]:
    """Processes whose process group is ``pgid`` (a worker and its pool)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) == pgid:
                found.append(int(entry))
        except ProcessLookupError:
            continue
    return found


def launch_worker(ini: str, queues: list, log: str, name: str = "w", extra: tuple = (),
                  env: Optional[dict] = None) -> Worker:
    """Start ``celery worker`` for ``queues`` (real names) with the config
    file ``ini``; its output goes to ``log``."""
    environ = dict(os.environ, CKAN_INI=ini, **(env or {}))
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "ckanext.archiver.celery_app", "worker",
             "-Q", ",".join(queues), "-n", f"{name}@%h", "--loglevel=INFO",
             "--without-gossip", "--without-mingle", "--without-heartbeat", *extra],
            env=environ, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Worker(proc, log, name)


def stop_worker(worker: Worker) -> None:
    """SIGKILL the worker's process group, and any pool process a killed
    main process left behind."""
    members = group_members(worker.pid)
    if worker.alive() or members:
        try:
            os.killpg(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if worker.proc.poll() is None:
        worker.proc.wait(timeout=10)
    for pid in members:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def write_ini(path: str, options: dict) -> str:
    """A copy of the test config file (this session's ``--ckan-ini``) with
    raw ``options`` set in ``[app:main]``: for fixtures wider than a test,
    where ``make_ini`` cannot be used."""
    from ckan.common import config

    here = os.path.dirname(os.path.abspath(config["__file__"]))
    with open(config["__file__"]) as f:
        text = f.read().replace("%(here)s", here)
    with open(path, "w") as f:
        f.write(text)
    set_ini_options(path, options)
    return path


def set_ini_options(path: str, options: dict) -> None:
    """Set raw options (``sqlalchemy.url``...) in the ``[app:main]`` section
    of an ini file written by ``make_ini``."""
    with open(path) as f:
        lines = [line for line in f.read().splitlines()
                 if line.split("=")[0].strip() not in options]
    at = lines.index("[app:main]") + 1
    lines[at:at] = [f"{k} = {v}" for k, v in options.items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 to ``upstream`` (host, port) that a test
    can break: ``cut()`` resets every connection going through it,
    ``refuse(True)`` makes new connections fail (reset at once) until
    ``refuse(False)``. Used to take PostgreSQL away from one worker only."""

    def __init__(self, upstream: tuple):
        self.upstream = upstream
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = ""
        self.refusing = False
        self.accepted = 0
        self.refused = 0
        self._pairs: set = set()
        self._lock = threading.Lock()
        self._stopped = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.refusing:
                self.refused += 1
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _reset(client)
                continue
            server.settimeout(None)
            self.accepted += 1
            pair = (client, server)
            with self._lock:
                self._pairs.add(pair)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b, pair), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, pair: tuple) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._pairs.discard(pair)
            for s in pair:
                _reset(s)

    def cut(self) -> int:
        """Reset every open connection; returns how many there were."""
        with self._lock:
            pairs = list(self._pairs)
            self._pairs.clear()
        for pair in pairs:
            for s in pair:
                _reset(s)
        return len(pairs)

    def refuse(self, refusing: bool = True) -> None:
        self.refusing = refusing

    def stop(self) -> None:
        self._stopped = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.cut()


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
