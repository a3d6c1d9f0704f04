#!/usr/bin/env python
"""Benchmark of the archiver's queues (queue.py, tasks.py, celery_app.py, cli.py).

Prints numbers; not a test. Everything runs on this machine: PostgreSQL and
Redis (local services), an asyncio origin server listening on a few hundred
127.0.x.y addresses (one "host" each, one port), and Celery workers started
as ``ckan -c <bench ini> archiver worker ...`` subprocesses.

It makes a throwaway database (``ckan_archiver_bench_queue_<pid>``, ``ckan db
init`` + ``db upgrade -p archiver``) and a bench ini derived from test.ini
(own ``ckan.site_id`` and Redis db so that its queues collide with nobody,
``allowed_networks = 127.0.0.0/8``, plugins ``archiver archiver_nosearch``),
then, in one run:

1. Throughput: 2,000 resources on 200 hosts (origin answers after 100 ms,
   ~1 KB body with an ETag), bulk-inserted with SQL, archived end to end by
   ``ckan archiver update`` + ``ckan archiver worker bulk`` (its defaults:
   prefork, one process per core, a batch of ``batch_size`` downloaded in
   threads): resources/s until every row has a status, beside a sequential
   baseline (``requests.get`` + write + one committed row per resource, as
   the older archiver did) on a sample. Two runs: the worker with the
   default politeness (2 requests in flight and 0.2 s between requests per
   host, across workers), and the same with politeness relaxed. (A run
   stops when nothing moves for 15 s: before the worker dropped the
   database connection its prefork children inherited, one always hung.)
2. Priority latency: 5,000 resources on hosts answering after 2 s queued on
   bulk by ``update``; the priority and bulk workers running; 20 URL edits
   through ``resource_patch`` in this process (the plugin's after-commit
   hook queues them on priority): time from the hook queuing the edit (on
   CKAN's commit) to its archival row (``archival.updated``); an edit whose
   new URL is never checked within 30 s counts as lost. Also: whether the
   new URL was visible to other connections when it was queued, the same
   edits with only the default ``worker all``, and what an edit of a
   resource still waiting on bulk does. Prefork workers run with the
   fork work-around here.
3. Enqueue rate: 100,000 resources bulk-inserted; ``ckan archiver update``
   end to end (CLI start-up included), then ``queue.enqueue()`` alone in
   this process (with its phases); the queues are purged after
   (``ckan archiver purge-queues``).
4. Hanging hosts: 10,000 resources on the 200 hosts of part 1, every 20th
   host (5%) accepting connections and never answering (read_timeout 2 s):
   a clean run, then runs without and with the batch hand-off and the
   skipping of hosts that stopped answering; every row counts, the hanging
   hosts' included.

At the end (also on Ctrl-C or SIGTERM) the workers are killed by process
group, the bench's Redis keys are removed and the database is dropped.

    .venv/bin/python bench/bench_queue.py [--quick] [--parts 1234] [--keep-logs]

``--quick`` scales everything down (a smoke run of about two minutes); the
full run takes about five minutes on 2 cores. Progress goes to stderr, the
numbers to stdout. CPU lines split the CPU time of the interval between the
workers, the origin, PostgreSQL, Redis, this script with its ``ckan`` CLI
runs, and everything else on the machine (other people's work skews the
numbers: look at that last figure before comparing runs).
Goals (2 cores): bulk >= 200 resources/s, priority p95 <= 2 s, update >=
5,000 resources/s, with 5% of hosts hanging >= 50% of the clean run.
"""

from __future__ import annotations

import argparse
import asyncio
import configparser
import contextlib
import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

CKAN = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "ckan")
DB_PREFIX = "ckan_archiver_bench_queue_"
REDIS_DB = 7  # test.ini uses 1, dev.ini 0: keep Celery's shared keys apart

FAST_DELAY = 0.1  # seconds before the origin answers a /fast/ URL
SLOW_DELAY = 2.0  # ... a /slow/ URL
FAST_NET = "127.0.0."  # hosts .2 .. .(hosts+1): throughput
SLOW_NET = "127.0.1."  # hosts .1 .. : the slow bulk backlog of part 2
EDIT_NET = "127.0.2."  # hosts .1 .. : the edited resources of part 2

SCALES = {
    "full": dict(resources=2000, hosts=200, per_dataset=5, sample=100, slow=5000,
                 slow_hosts=100, edits=20, all_edits=5, enqueue=100_000,
                 hang_resources=10_000, one_host=1000, mix=2000, slow_one=40),
    "quick": dict(resources=200, hosts=20, per_dataset=5, sample=20, slow=500,
                  slow_hosts=20, edits=5, all_edits=2, enqueue=10_000, hang_resources=1000,
                  one_host=200, mix=400, slow_one=10),
}
GOALS = {"bulk": 200.0, "p95": 2.0, "enqueue": 5000.0, "hanging": 0.5, "cpu_ms": 10.0,
         "one_host": 3 * 4.7}


def say(*args) -> None:
    print(*args, flush=True)


def note(message: str) -> None:
    """Progress lines (stderr, so that stdout holds only the numbers)."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


# ===========================================================================
# The origin server (its own process: ``bench_queue.py _origin PORT HOST...``)


def _etag(path: str) -> str:
    return f'"{hashlib.sha1(path.encode()).hexdigest()[:16]}"'


def _body(path: str) -> bytes:
    line = f"{path},{hashlib.sha256(path.encode()).hexdigest()}\n"
    return ("path,digest\n" + line * (1024 // len(line) + 1)).encode()


def origin_main(port: int, hosts: list[str]) -> None:
    """HTTP/1.1 with keep-alive; ``/fast/...`` answers after FAST_DELAY,
    ``/slow/...`` after SLOW_DELAY, ``/hang/...`` never; 304 on a matching
    If-None-Match."""
    import resource as rlimit

    soft, hard = rlimit.getrlimit(rlimit.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        rlimit.setrlimit(rlimit.RLIMIT_NOFILE, (hard, hard))
    # the origin stands for servers on other machines, and its clock is what
    # the columns "most" and "gap" report: it does not wait for the workers'
    # CPU (as root; else it runs at the workers' priority)
    with contextlib.suppress(OSError):
        os.nice(-10)
    stats = {"requests": 0, "not_modified": 0, "open": 0, "max_open": 0}
    # per host (the address a request came to), as this server saw them:
    # [requests, in flight, most in flight, last start, least gap between starts,
    #  first start, last end, seconds with a request in flight x requests,
    #  every start]
    per_host: dict[str, list] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats["open"] += 1
        stats["max_open"] = max(stats["max_open"], stats["open"])
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                        ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                path = parts[1] if len(parts) > 1 else "/"
                version = parts[2] if len(parts) > 2 else "HTTP/1.0"
                headers = {}
                for line in lines[1:]:
                    key, sep, value = line.partition(":")
                    if sep:
                        headers[key.strip().lower()] = value.strip()
                close = (headers.get("connection", "").lower() == "close"
                         or version == "HTTP/1.0")
                if path in ("/__stats", "/__hosts", "/__reset"):
                    if path == "/__reset":
                        per_host.clear()
                    data = stats if path == "/__stats" else {
                        h: {"requests": v[0], "most_in_flight": v[2], "least_gap": v[4],
                            "span": v[6] - v[5], "busy": v[7],
                            "starts": [round(t - v[5], 4) for t in v[8]]}
                        for h, v in per_host.items()}
                    body = json.dumps(data).encode()
                    status, ctype, etag = "200 OK", "application/json", None
                elif path.startswith("/hang/"):
                    stats["hanging"] = stats.get("hanging", 0) + 1
                    await asyncio.sleep(3600)  # accepted, never answered
                    return
                else:
                    host = writer.get_extra_info("sockname")[0]
                    now = time.monotonic()
                    h = per_host.setdefault(host, [0, 0, 0, None, None, now, now, 0.0, []])
                    if h[3] is not None and (h[4] is None or now - h[3] < h[4]):
                        h[4] = now - h[3]
                    h[0] += 1
                    h[1] += 1
                    h[2] = max(h[2], h[1])
                    h[3] = now
                    h[8].append(now)
                    try:
                        await asyncio.sleep(SLOW_DELAY if path.startswith("/slow/")
                                            else FAST_DELAY)
                    finally:
                        h[1] -= 1
                        h[6] = time.monotonic()
                        h[7] += h[6] - now
                    stats["requests"] += 1
                    etag = _etag(path)
                    if headers.get("if-none-match") == etag:
                        stats["not_modified"] += 1
                        body, status, ctype = b"", "304 Not Modified", None
                    else:
                        body, status, ctype = _body(path), "200 OK", "text/csv"
                head_lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}"]
                if ctype:
                    head_lines.append(f"Content-Type: {ctype}")
                if etag:
                    head_lines.append(f"ETag: {etag}")
                if close:
                    head_lines.append("Connection: close")
                writer.write(("\r\n".join(head_lines) + "\r\n\r\n").encode() + body)
                await writer.drain()
                if close:
                    return
        except ConnectionError:
            return
        finally:
            stats["open"] -= 1
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, host=hosts, port=port, backlog=4096,
                                            reuse_address=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        print("READY", flush=True)
        async with server:
            await stop.wait()

    asyncio.run(main())


class Origin:
    def __init__(self, hosts: list[str], logdir: str):
        self.hosts = hosts
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = os.path.join(logdir, "origin.log")

    def start(self) -> None:
        for _ in range(10):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "_origin", str(port), *self.hosts],
                stdout=subprocess.PIPE, stderr=open(self.log, "ab"), start_new_session=True)
            line = proc.stdout.readline()
            if line.strip() == b"READY":
                self.proc, self.port = proc, port
                return
            proc.wait()
        raise RuntimeError(f"the origin server did not start (see {self.log})")

    def stats(self) -> dict:
        import requests

        return requests.get(f"http://127.0.0.1:{self.port}/__stats", timeout=5).json()

    def per_host(self, reset: bool = False) -> dict:
        """Per host: requests, most in flight, least gap between two starts."""
        import requests

        path = "/__reset" if reset else "/__hosts"
        return requests.get(f"http://127.0.0.1:{self.port}{path}", timeout=5).json()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _kill_group(self.proc, grace=3)


# ===========================================================================
# Processes, CPU accounting


def _kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process group of ``proc`` (started with
    start_new_session), then SIGKILL what is left after ``grace`` s."""
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end and _group_pids(pgid):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _proc_stats() -> list[tuple[int, str, int, float]]:
    """(pid, comm, pgid, cpu seconds) of every process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                data = f.read()
        except OSError:
            continue
        comm = data[data.index("(") + 1:data.rindex(")")]
        fields = data[data.rindex(")") + 2:].split()
        # fields[0] is state (field 3): pgrp is field 5, utime 14, stime 15
        out.append((int(name), comm, int(fields[2]),
                    (int(fields[11]) + int(fields[12])) / tick))
    return out


def _group_pids(pgid: int) -> list[int]:
    return [pid for pid, _c, g, _t in _proc_stats() if g == pgid]


def cpu_snapshot(worker_pgids: list[int], origin_pid: int) -> dict[str, float]:
    """CPU seconds used so far by the workers, the origin, PostgreSQL and
    Redis, and by the whole machine (busy time from /proc/stat)."""
    snap = {"workers": 0.0, "origin": 0.0, "postgres": 0.0, "redis": 0.0}
    for _pid, comm, pgid, cpu in _proc_stats():
        if pgid in worker_pgids:
            snap["workers"] += cpu
        elif pgid == origin_pid:
            snap["origin"] += cpu
        elif comm == "postgres":
            snap["postgres"] += cpu
        elif comm.startswith("redis-server"):
            snap["redis"] += cpu
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    snap["machine"] = (sum(values[:8]) - values[3] - values[4]) / tick
    own = os.times()  # this process and its waited-for children (the CLI runs)
    snap["bench"] = own.user + own.system + own.children_user + own.children_system
    snap["wall"] = time.monotonic()
    return snap


def cpu_line(before: dict, after: dict) -> str:
    wall = after["wall"] - before["wall"]
    d = {k: max(after[k] - before[k], 0.0) for k in before if k != "wall"}
    cores = os.cpu_count() or 1
    others = max(d["machine"] - sum(v for k, v in d.items() if k != "machine"), 0.0)
    return ("CPU over {:.1f} s: machine {:.2f} of {} cores busy; CPU-s: workers {:.1f}, "
            "origin {:.1f}, postgres {:.1f}, redis {:.1f}, bench + CLI {:.1f}, "
            "other processes {:.1f}").format(
        wall, d["machine"] / wall, cores, d["workers"], d["origin"], d["postgres"],
        d["redis"], d["bench"], others)


# ===========================================================================
# The bench database and configuration


def _as_postgres(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = list(args)
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    else:
        cmd = ["sudo", "-u", "postgres", *cmd]
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def _drop_db(name: str) -> None:
    _as_postgres("dropdb", "--if-exists", "--force", name, check=False)


def drop_stale_databases() -> None:
    """Bench databases left by runs that were killed outright."""
    out = _as_postgres("psql", "-qtAc",
                       f"select datname from pg_database where datname like '{DB_PREFIX}%'",
                       check=False).stdout.split()
    for name in out:
        pid = name[len(DB_PREFIX):]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            note(f"dropping {name}, left by an earlier run")
            _drop_db(name)


def write_ini(path: str, workdir: str, db_url: str, site_id: str, **options: str) -> None:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # keys are case-sensitive (SECRET_KEY)
    parser.read(os.path.join(ROOT, "test.ini"))
    app = parser["app:main"]
    app.update({
        "sqlalchemy.url": db_url,
        "ckan.site_id": site_id,
        "ckan.site_url": "http://127.0.0.1:5000",
        "ckan.plugins": "archiver archiver_nosearch",
        "ckan.redis.url": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "ckan.storage_path": os.path.join(workdir, "storage"),
        "ckan.auth.create_unowned_dataset": "true",
        "ckanext.archiver.archive_dir": os.path.join(workdir, "archive"),
        "ckanext.archiver.allowed_networks": "127.0.0.0/8",
        "ckanext.archiver.connect_timeout": "5",
        "ckanext.archiver.read_timeout": "10",
        "ckanext.archiver.total_timeout": "30",
    })
    app.update(options)
    with open(path, "w") as f:
        parser.write(f)


def run_ckan(ini: str, *args: str, check: bool = True) -> tuple[float, str]:
    """Run ``ckan -c ini ...``; return (seconds, output)."""
    t0 = time.perf_counter()
    proc = subprocess.run([CKAN, "-c", ini, *args], capture_output=True, text=True, cwd=ROOT)
    took = time.perf_counter() - t0
    output = (proc.stdout + proc.stderr).strip()
    if check and proc.returncode != 0:
        raise RuntimeError(f"ckan {' '.join(args)} failed ({proc.returncode}):\n{output}")
    return took, output


# ===========================================================================
# Data (plain SQL)


def seed(engine, tag: str, count: int, per_dataset: int, url_sql: str,
         **params) -> None:
    """``count`` active resources, ``per_dataset`` a dataset (random uuids,
    as CKAN makes them); resource number ``i`` (0-based) gets the URL
    ``url_sql`` (an SQL expression of ``i`` and bind ``params``)."""
    import sqlalchemy as sa

    datasets = (count + per_dataset - 1) // per_dataset
    with engine.begin() as conn:
        conn.execute(sa.text(
            "CREATE TEMP TABLE bq_pkg ON COMMIT DROP AS SELECT n, gen_random_uuid()::text AS id "
            "FROM generate_series(0, :last) n"), {"last": datasets - 1})
        conn.execute(sa.text(
            "INSERT INTO package (id, name, title, state, type, private, metadata_created, "
            "metadata_modified, license_id, extras) "
            "SELECT id, :tag || '-' || n, 'Bench dataset ' || n, 'active', 'dataset', false, "
            "now(), now(), 'cc-by', '{}'::jsonb FROM bq_pkg"), {"tag": "bq-" + tag})
        conn.execute(sa.text(
            "INSERT INTO resource (id, package_id, url, format, name, state, position, "
            "created, extras) "
            f"SELECT gen_random_uuid()::text, p.id, {url_sql}, 'CSV', 'Resource ' || i, "
            "'active', mod(i, :per), now(), '{}' "
            "FROM generate_series(0, :last) i JOIN bq_pkg p ON p.n = i / :per"),
            {"last": count - 1, "per": per_dataset, **params})


def reset_data(engine) -> None:
    import sqlalchemy as sa

    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL lock_timeout = '20s'"))
        conn.execute(sa.text(
            "TRUNCATE package, resource, archival, archival_history CASCADE"))


def reset_results(engine, archive_dir: str) -> None:
    import sqlalchemy as sa

    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL lock_timeout = '20s'"))
        conn.execute(sa.text("TRUNCATE archival, archival_history"))
    shutil.rmtree(archive_dir, ignore_errors=True)
    os.makedirs(archive_dir, exist_ok=True)


def count_done(engine, final: bool = False) -> tuple[int, int]:
    import sqlalchemy as sa

    done = "status_id IS NOT NULL" + (" AND reason NOT LIKE :retry" if final else "")
    with engine.connect() as conn:
        return tuple(conn.execute(sa.text(
            f"SELECT count(*) FILTER (WHERE {done}), count(*) FROM archival"),
            {"retry": "%(will retry)"}).one())


def status_counts(engine) -> str:
    import sqlalchemy as sa

    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT status_id, count(*) FROM archival GROUP BY 1 ORDER BY 1")).all()
    return ", ".join(f"{'queued' if s is None else s}: {n}" for s, n in rows)


# ===========================================================================
# Redis


def redis_cleanup(site_id: str) -> None:
    """Remove every key of this bench (queues, pending marks, politeness,
    delivery counters, kombu bindings) and the unacked copies of its
    messages that killed workers left in kombu's shared hashes."""
    import redis

    r = redis.Redis.from_url(f"redis://127.0.0.1:6379/{REDIS_DB}")
    keys = list(r.scan_iter(match=f"*{site_id}*", count=1000))
    for start in range(0, len(keys), 1000):
        r.delete(*keys[start:start + 1000])
    tags = [tag for tag, payload in r.hscan_iter("unacked", count=1000)
            if site_id.encode() in payload]
    for start in range(0, len(tags), 1000):
        chunk = tags[start:start + 1000]
        r.hdel("unacked", *chunk)
        r.zrem("unacked_index", *chunk)


def clear_host_leases(site_id: str) -> None:
    """Forget the per-host politeness slots: a killed worker's slots would
    otherwise block their hosts until their lease (total_timeout + 30 s)
    runs out, which is the design, but not what the next measurement is
    about."""
    import redis

    r = redis.Redis.from_url(f"redis://127.0.0.1:6379/{REDIS_DB}")
    keys = list(r.scan_iter(match=f"archiver:{site_id}:host:*", count=1000))
    for start in range(0, len(keys), 1000):
        r.delete(*keys[start:start + 1000])


# ===========================================================================
# Workers


class Workers:
    def __init__(self, logdir: str, site_id: str):
        self.logdir = logdir
        self.site_id = site_id
        self.procs: dict[str, subprocess.Popen] = {}
        self._n = 0

    def start(self, which: str, ini: str) -> None:
        """``ckan -c ini archiver worker which`` with its defaults."""
        self._n += 1
        log = open(os.path.join(self.logdir, f"worker-{self._n}-{which}.log"), "wb")
        extra: list[str] = []
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (HERE, os.environ.get("PYTHONPATH")) if p))
        self.procs[which] = subprocess.Popen(
            [CKAN, "-c", ini, "archiver", "worker", which, *extra], stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT, env=env)

    def pgids(self) -> list[int]:
        return [p.pid for p in self.procs.values()]

    def wait_ready(self, timeout: float = 90) -> float:
        """Wait until every started worker answers a ping; return seconds."""
        from ckanext.archiver import celery_app

        app = celery_app.get_app()
        t0 = time.monotonic()
        wanted = {f"archiver-{which}-{self.site_id}@" for which in self.procs}
        while time.monotonic() - t0 < timeout:
            for which, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"worker {which} exited ({proc.returncode}); "
                                       f"see {self.logdir}")
            replies = app.control.ping(timeout=0.5) or []
            names = {name for reply in replies for name in reply}
            if all(any(n.startswith(w) for n in names) for w in wanted):
                return time.monotonic() - t0
        raise RuntimeError(f"workers not ready after {timeout} s; see {self.logdir}")

    def stop(self, grace: float = 5.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None or _group_pids(proc.pid):
                _kill_group(proc, grace)
        self.procs.clear()


# ===========================================================================
# Part 1: throughput


def sequential_baseline(engine, rows: list, out_dir: str) -> dict:
    """One resource at a time: requests.get (a new connection each time),
    write the file, one committed row, as the older archiver did."""
    import requests
    import sqlalchemy as sa

    os.makedirs(out_dir, exist_ok=True)
    upsert = sa.text(
        "INSERT INTO archival (id, package_id, resource_id, status_id, is_broken, reason, "
        "url, cache_filepath, size, mimetype, hash, etag, created, updated, last_success, "
        "failure_count) VALUES (:rid, :pid, :rid, 0, false, '', :url, :path, :size, :mime, "
        ":hash, :etag, now(), now(), now(), 0) ON CONFLICT (resource_id) DO UPDATE SET "
        "status_id = excluded.status_id, updated = excluded.updated, size = excluded.size, "
        "hash = excluded.hash, etag = excluded.etag")
    t0 = time.perf_counter()
    for rid, pid, url in rows:
        response = requests.get(url, timeout=30)
        data = response.content
        path = os.path.join(out_dir, rid)
        with open(path, "wb") as f:
            f.write(data)
        with engine.begin() as conn:
            conn.execute(upsert, {
                "rid": rid, "pid": pid, "url": url, "path": path, "size": len(data),
                "mime": response.headers.get("Content-Type"),
                "hash": hashlib.sha1(data).hexdigest(), "etag": response.headers.get("ETag")})
    took = time.perf_counter() - t0
    return {"n": len(rows), "seconds": took, "rate": len(rows) / took}


STALL_SECONDS = 15


def throughput_run(ctx, label: str, ini: str, n: int, final: bool = False,
                   stall: float = STALL_SECONDS, workers_to_start=("bulk",)) -> dict:
    """``final``: count only rows with a final status (not "(will retry)")."""
    import sqlalchemy as sa

    engine = ctx.engine
    reset_results(engine, ctx.archive_dir)
    redis_cleanup(ctx.site_id)
    workers = ctx.workers
    for which in workers_to_start:
        workers.start(which, ini)
    ready = workers.wait_ready()
    note(f"{label}: bulk worker ready after {ready:.1f} s; running update")
    before = cpu_snapshot(workers.pgids(), ctx.origin.proc.pid)
    t0 = time.time()
    took_update, output = run_ckan(ini, "archiver", "update")
    done, total, stalled = 0, 0, False
    progress = (0, time.time())
    while True:
        done, total = count_done(engine, final)
        if done >= n:
            break
        if done > progress[0]:
            progress = (done, time.time())
        elif time.time() - progress[1] > stall:
            stalled = True
            break
        time.sleep(0.05)
    t1 = progress[1] if stalled else time.time()
    after = cpu_snapshot(workers.pgids(), ctx.origin.proc.pid)
    with engine.connect() as conn:
        first_q, first_start, last = conn.execute(sa.text(
            "SELECT min(queued_at), min(started_at), max(updated) FROM archival")).one()
    statuses = status_counts(engine)
    workers.stop()
    wall = t1 - t0
    pipeline = (last - first_q).total_seconds() if first_q and last else float("nan")
    return {
        "label": label, "n": n, "done": done, "stalled": stalled, "update_s": took_update,
        "wall": wall,
        "rate": done / wall, "pipeline_s": pipeline, "pipeline_rate": done / pipeline,
        "update_out": output.splitlines()[-1] if output else "", "statuses": statuses,
        "cpu": cpu_line(before, after), "t0": t0,
        "worker_cpu": after["workers"] - before["workers"],
        "other_cpu": (after["machine"] - before["machine"]) - sum(
            after[k] - before[k] for k in ("workers", "origin", "postgres", "redis", "bench")),
    }


def part1(ctx) -> dict:
    import sqlalchemy as sa

    s = ctx.scale
    n, hosts = s["resources"], s["hosts"]
    say(f"\n== 1. Throughput: {n:,} resources on {hosts} hosts "
        f"(origin answers after {FAST_DELAY * 1000:.0f} ms, ~1 KB body, ETag) ==")
    reset_data(ctx.engine)
    redis_cleanup(ctx.site_id)
    seed(ctx.engine, "tp", n, s["per_dataset"],
         ":base || (2 + mod(i, :hosts)) || ':' || :port || '/fast/' || i || '.csv'",
         base="http://" + FAST_NET, hosts=hosts, port=ctx.origin.port)
    with ctx.engine.connect() as conn:
        sample = conn.execute(sa.text(
            "SELECT id, package_id, url FROM resource ORDER BY random() LIMIT :n"),
            {"n": s["sample"]}).all()
    note(f"sequential baseline on {len(sample)} resources")
    base = sequential_baseline(ctx.engine, sample, os.path.join(ctx.workdir, "seq"))
    results = [
        throughput_run(ctx, "worker bulk, default politeness", ctx.ini, n),
        throughput_run(ctx, "worker bulk, politeness relaxed", ctx.ini_free, n),
    ]
    width = 52
    say(f"{'':{width}} {'res/s':>8} {'wall s':>8}  notes")
    say(f"{'sequential baseline (get + write + 1 row each)':{width}} {base['rate']:8.1f} "
        f"{base['seconds']:8.1f}  {base['n']} resources, extrapolated: "
        f"{n / base['rate']:.0f} s for {n:,}")
    for r in results:
        say(f"{r['label'] + ', end to end':{width}} {r['rate']:8.1f} {r['wall']:8.1f}  "
            f"{r['done']:,}/{r['n']:,} with a status; `update` took {r['update_s']:.1f} s "
            f"({r['update_out']})")
        if r["stalled"]:
            say(f"{'':{width}} {'':8} {'':8}  STALLED: no progress for {STALL_SECONDS} s "
                f"with {r['n'] - r['done']:,} rows left (rate up to the last progress)")
        say(f"{'  first queued_at -> last updated':{width}} {r['pipeline_rate']:8.1f} "
            f"{r['pipeline_s']:8.1f}  statuses {r['statuses']}")
        say(f"{'':{width}} {'':8} {'':8}  {r['cpu']}")
    stats = ctx.origin.stats()
    say(f"origin so far: {stats['requests']:,} requests, {stats['not_modified']} answered 304, "
        f"at most {stats['max_open']} connections open at once")
    return {"baseline": base, "runs": results}


# ===========================================================================
# Part 2: priority latency


def _wait_row(engine, rid: str, url: str, timeout: float):
    """(updated, seen_at) once the row of ``rid`` records a check of ``url``."""
    import sqlalchemy as sa

    query = sa.text("SELECT updated FROM archival WHERE resource_id = :rid AND url = :url "
                    "AND status_id IS NOT NULL")
    end = time.time() + timeout
    with engine.connect() as conn:
        while time.time() < end:
            row = conn.execute(query, {"rid": rid, "url": url}).first()
            conn.commit()
            if row is not None:
                return row[0], time.time()
            time.sleep(0.01)
    return None, None


def _utc_naive(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).replace(tzinfo=None)


def do_edits(ctx, edits: list[tuple[str, str]], version: str, timeout: float,
             quiet: bool = False) -> list:
    """Change the URL of each (resource id, host) through resource_patch;
    return the latencies (seconds; None when no row came in ``timeout``)."""
    import ckan.plugins.toolkit as tk
    import sqlalchemy as sa
    from ckan import model

    from ckanext.archiver import queue

    marks: list[float] = []
    early: list[str] = []
    original = queue.enqueue
    expected = {}

    def timed_enqueue(items, queue_name="bulk", force=False):
        if queue_name == "priority":  # from the hook, on the session's after_commit event
            marks.append(time.time())
            # is the edit visible to other connections (a worker) yet?
            with ctx.engine.connect() as conn:
                for rid, _pid in items:
                    url = conn.execute(sa.text("SELECT url FROM resource WHERE id = :id"),
                                       {"id": rid}).scalar()
                    if rid in expected and url != expected[rid]:
                        early.append(rid)
        return original(items, queue_name, force)

    latencies = []
    queue.enqueue = timed_enqueue
    try:
        for k, (rid, host) in enumerate(edits):
            url = f"http://{host}:{ctx.origin.port}/fast/edit-{k}-{version}.csv"
            expected[rid] = url
            marks.clear()
            with ctx.flask_app.test_request_context():
                tk.get_action("resource_patch")(
                    {"user": ctx.site_user, "ignore_auth": True}, {"id": rid, "url": url})
            model.Session.remove()
            if not marks:
                latencies.append(None)
                if not quiet:
                    note(f"edit {k}: nothing queued on priority")
                continue
            updated, _seen = _wait_row(ctx.engine, rid, url, timeout)
            latencies.append(None if updated is None
                             else (updated - _utc_naive(marks[0])).total_seconds())
            if updated is None and not quiet:
                import sqlalchemy as sa

                with ctx.engine.connect() as conn:
                    row = conn.execute(sa.text(
                        "SELECT status_id, url, queued_at, started_at, updated FROM archival "
                        "WHERE resource_id = :rid"), {"rid": rid}).first()
                note(f"edit {k} ({rid}, committed {_utc_naive(marks[0])}): no row after "
                     f"{timeout:.0f} s; row now {tuple(row) if row else None}, pending mark "
                     f"{queue.redis_client().get(queue.pending_key(rid))}")
            time.sleep(0.2)
    finally:
        queue.enqueue = original
    ctx.early_enqueues = getattr(ctx, "early_enqueues", 0) + len(early)
    return latencies


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _latency_line(label: str, lat: list, timeout: float) -> str:
    got = [v for v in lat if v is not None]
    missing = len(lat) - len(got)
    if not got:
        return f"{label:52} no edit archived within {timeout:.0f} s ({len(lat)} edits)"
    text = (f"{label:52} p50 {_pct(got, 50):6.2f} s  p95 {_pct(got, 95):6.2f} s  "
            f"max {max(got):6.2f} s  ({len(got)} edits")
    if missing:
        text += f"; {missing} not archived within {timeout:.0f} s"
    return text + ")"


def part2(ctx) -> dict:
    import sqlalchemy as sa
    from ckan import model

    from ckanext.archiver import queue, tasks

    s = ctx.scale
    slow, nedits = s["slow"], s["edits"]
    say(f"\n== 2. Priority latency: {slow:,} resources on {s['slow_hosts']} hosts answering "
        f"after {SLOW_DELAY:.0f} s queued on bulk; {nedits} URL edits (resource_patch) ==")
    reset_data(ctx.engine)
    reset_results(ctx.engine, ctx.archive_dir)
    redis_cleanup(ctx.site_id)
    seed(ctx.engine, "slow", slow, s["per_dataset"],
         ":base || (1 + mod(i, :hosts)) || ':' || :port || '/slow/' || i || '.csv'",
         base="http://" + SLOW_NET, hosts=s["slow_hosts"], port=ctx.origin.port)
    took, output = run_ckan(ctx.ini, "archiver", "update")
    note(f"update: {output.splitlines()[-1]} in {took:.1f} s")
    # the resources to edit: one dataset each, on their own hosts, checked once
    edit_hosts = [f"{EDIT_NET}{k + 1}" for k in range(nedits + s["all_edits"])]
    seed(ctx.engine, "edit", len(edit_hosts), 1,
         ":base || (1 + i) || ':' || :port || '/fast/edit-' || i || '-v1.csv'",
         base="http://" + EDIT_NET, port=ctx.origin.port)
    with ctx.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT r.id, r.url FROM resource r JOIN package p ON p.id = r.package_id "
            "WHERE p.name LIKE 'bq-edit-%' ORDER BY p.name")).all()
    edit_ids = [rid for rid, _url in sorted(rows, key=lambda r: int(
        re.search(r"/fast/edit-(\d+)-", r[1]).group(1)))]
    tasks.archive_batch(edit_ids, polite=False)
    model.Session.remove()

    workers = ctx.workers
    workers.start("priority", ctx.ini)
    workers.start("bulk", ctx.ini)
    ready = workers.wait_ready()
    note(f"priority + bulk workers ready after {ready:.1f} s")
    time.sleep(3)  # let the bulk worker fill up
    before = cpu_snapshot(workers.pgids(), ctx.origin.proc.pid)
    queued_before = queue.lengths()
    done_before = count_done(ctx.engine)[0] - len(edit_ids)
    timeout = 30.0
    ctx.early_enqueues = 0
    edits = [(rid, edit_hosts[k]) for k, rid in enumerate(edit_ids[:nedits])]
    lat = do_edits(ctx, edits, "v2", timeout)
    early = ctx.early_enqueues
    after = cpu_snapshot(workers.pgids(), ctx.origin.proc.pid)
    queued_after = queue.lengths()
    done_after = count_done(ctx.engine)[0] - len(edit_ids)

    # an edit of a resource that waits on bulk and was never checked
    probe = {}
    with ctx.engine.connect() as conn:
        waiting = conn.execute(sa.text(
            "SELECT resource_id FROM archival WHERE status_id IS NULL AND started_at IS NULL "
            "LIMIT 1")).scalar()
    if waiting:
        r = queue.redis_client()
        probe["pending_before"] = r.get(queue.pending_key(waiting))
        lat_probe = do_edits(ctx, [(waiting, edit_hosts[-1])], "probe", 10.0, quiet=True)
        probe["pending_after"] = r.get(queue.pending_key(waiting))
        probe["latency"] = lat_probe[0]
    workers.stop(grace=1)
    clear_host_leases(ctx.site_id)

    # the same with the default single worker (`worker all`)
    lat_all = []
    if s["all_edits"]:
        workers.start("all", ctx.ini)
        workers.wait_ready()
        time.sleep(3)
        backlog_all = queue.lengths()["bulk"]
        all_edits = [(rid, edit_hosts[nedits + k])
                     for k, rid in enumerate(edit_ids[nedits:nedits + s["all_edits"]])]
        lat_all = do_edits(ctx, all_edits, "v2", 60.0)
        workers.stop(grace=1)
    queue.purge()
    redis_cleanup(ctx.site_id)

    say(f"bulk backlog during the edits: {queued_before['bulk']} -> {queued_after['bulk']} "
        f"bulk messages waiting ({ctx.batch_size} resources each); the bulk worker "
        f"archived {done_after - done_before} slow resources meanwhile")
    say(_latency_line("priority worker + bulk worker (commit -> row)", lat, timeout))
    say(f"  {early} of {nedits} edits were queued on priority while their new "
        "URL was not yet visible to other connections (the hook fired on CKAN's SAVEPOINT "
        "release, before the real commit)")
    say("  each edit (s): " + " ".join("-" if v is None else f"{v:.2f}" for v in lat))
    say(f"  {cpu_line(before, after)}")
    if s["all_edits"]:
        say(_latency_line("default `worker all` only (commit -> row)", lat_all, 60.0))
        say("  each edit (s): " + " ".join("-" if v is None else f"{v:.2f}" for v in lat_all)
            + f"; {backlog_all} bulk messages waiting when the edits began")
    if probe:
        p_lat = probe["latency"]
        mark_before = (probe["pending_before"] or b"-").decode()
        after_mark = (probe["pending_after"] or b"-").decode()
        outcome = (f"archived after {p_lat:.2f} s" if p_lat is not None
                   else "not queued on priority (it waits for its bulk turn)")
        say(f"edit of a never-checked resource waiting on bulk: pending mark {mark_before} -> "
            f"{after_mark}; {outcome}")
    return {"latencies": lat, "all": lat_all, "probe": probe}


# ===========================================================================
# Part 3: enqueue rate


def part3(ctx) -> dict:
    from ckan import model

    from ckanext.archiver import queue
    from ckanext.archiver.model import selection

    n = ctx.scale["enqueue"]
    say(f"\n== 3. Enqueue rate: {n:,} resources (`ckan archiver update`, no workers) ==")
    reset_data(ctx.engine)
    reset_results(ctx.engine, ctx.archive_dir)
    redis_cleanup(ctx.site_id)
    t0 = time.perf_counter()
    seed(ctx.engine, "enq", n, ctx.scale["per_dataset"],
         "'http://" + FAST_NET + "2:' || :port || '/fast/' || i || '.csv'",
         port=ctx.origin.port)
    note(f"inserted {n:,} resources in {time.perf_counter() - t0:.1f} s")
    with ctx.engine.begin() as conn:
        import sqlalchemy as sa

        conn.execute(sa.text("ANALYZE package; ANALYZE resource"))
    startup, _ = run_ckan(ctx.ini, "archiver", "--help")
    took_cli, output = run_ckan(ctx.ini, "archiver", "update")
    queued_cli = int(re.search(r"Queued (\d+)", output).group(1))
    lengths_cli = queue.lengths()
    queue.purge()
    reset_results(ctx.engine, ctx.archive_dir)

    items = list(selection.select())
    model.Session.remove()
    phases = {"claim": 0.0, "mark_queued": 0.0}
    originals = {"claim": queue._claim, "mark_queued": queue._mark_queued}

    def timer(name):
        def wrapped(*args, **kwargs):
            t = time.perf_counter()
            try:
                return originals[name](*args, **kwargs)
            finally:
                phases[name] += time.perf_counter() - t
        return wrapped

    queue._claim, queue._mark_queued = timer("claim"), timer("mark_queued")
    try:
        t0 = time.perf_counter()
        queued_inproc = queue.enqueue(items, "bulk")
        took_inproc = time.perf_counter() - t0
    finally:
        queue._claim, queue._mark_queued = originals["claim"], originals["mark_queued"]
    lengths_inproc = queue.lengths()
    model.Session.remove()
    took_purge, purge_out = run_ckan(ctx.ini, "archiver", "purge-queues")
    after_purge = queue.lengths()
    publish = took_inproc - phases["claim"] - phases["mark_queued"]

    say(f"{'':52} {'res/s':>8} {'wall s':>8}")
    say(f"{'`ckan archiver update`, end to end':52} {queued_cli / took_cli:8.0f} "
        f"{took_cli:8.1f}  queued {queued_cli:,} in {lengths_cli['bulk']:,} messages; "
        f"CKAN start-up alone {startup:.1f} s")
    say(f"{'  without the CLI start-up':52} {queued_cli / (took_cli - startup):8.0f} "
        f"{took_cli - startup:8.1f}")
    say(f"{'queue.enqueue() in process':52} {queued_inproc / took_inproc:8.0f} "
        f"{took_inproc:8.1f}  queued {queued_inproc:,} in {lengths_inproc['bulk']:,} messages")
    say(f"  phases: Redis pending marks {phases['claim']:.2f} s, archival rows "
        f"(queued_at upsert) {phases['mark_queued']:.2f} s, batching + apply_async "
        f"{publish:.2f} s")
    say(f"`ckan archiver purge-queues` ({took_purge:.1f} s): {purge_out.splitlines()[-1]}; "
        f"queues now {after_purge}")
    return {"cli_rate": queued_cli / took_cli, "inproc_rate": queued_inproc / took_inproc}


# ===========================================================================


# ===========================================================================
# Part 4: hanging hosts


HANG_OPTIONS = {"ckanext.archiver.read_timeout": "2", "ckanext.archiver.total_timeout": "5"}


def part4(ctx) -> dict:
    """Hosts that accept connections and never answer, 5% of them: whole
    runs (every row, the hanging hosts' included) beside a clean run, with
    the batch hand-off and the not-answering hosts (this archiver's
    defaults) and without them (``batch_wait = 0``, ``host_down_after =
    0``: every batch waits for its slowest download and every resource of a
    hanging host is tried)."""
    s = ctx.scale
    n, hosts = s["hang_resources"], s["hosts"]
    hanging = max(1, hosts * 5 // 100)  # every 20th host
    read = HANG_OPTIONS["ckanext.archiver.read_timeout"]
    say(f"\n== 4. Hanging hosts: {n:,} resources on {hosts} hosts, {hanging} of them "
        f"hanging (read_timeout {read} s) ==")
    url_sql = (":base || (2 + mod(i, :hosts)) || ':' || :port || CASE WHEN mod(i, :hosts) "
               "< :hanging * 20 AND mod(mod(i, :hosts), 20) = 0 THEN '/hang/' ELSE '/fast/' "
               "END || i || '.csv'")
    runs = []
    for label, hang, options in (
            ("clean (no host hanging)", 0, {}),
            ("5% hanging, batches wait, every resource tried", hanging,
             {"ckanext.archiver.batch_wait": "0", "ckanext.archiver.host_down_after": "0"}),
            ("5% hanging, defaults (hand-off, not-answering hosts)", hanging, {})):
        reset_data(ctx.engine)
        redis_cleanup(ctx.site_id)
        seed(ctx.engine, "hang", n, s["per_dataset"], url_sql, base="http://" + FAST_NET,
             hosts=hosts, port=ctx.origin.port, hanging=hang)
        ini = os.path.join(ctx.workdir, f"bench-hang-{len(runs)}.ini")
        write_ini(ini, ctx.workdir, ctx.db_url, ctx.site_id, **HANG_OPTIONS, **options)
        runs.append(throughput_run(ctx, label, ini, n))
    clean = runs[0]["rate"]
    width = 56
    say(f"{'':{width}} {'res/s':>8} {'wall s':>8}  notes")
    for r in runs:
        say(f"{r['label']:{width}} {r['rate']:8.1f} {r['wall']:8.1f}  "
            f"{100 * r['rate'] / clean:.0f}% of clean; statuses {r['statuses']}")
        if r["stalled"]:
            say(f"{'':{width}} {'':8} {'':8}  STALLED: no progress for {STALL_SECONDS} s "
                f"with {r['n'] - r['done']:,} rows left")
        say(f"{'':{width}} {'':8} {'':8}  {r['cpu']}")
    return {"runs": runs}


# ===========================================================================
# Part 5: links clustered on few hosts


CLUSTER_NET = "127.0.3."  # .1 one host (100 ms), .2 one host (2 s), .10 + .11-.20 the mix
SPREAD_NETS = ("127.0.4.", "127.0.5.")  # .1-.250 each: the mix's 500 small hosts
EDITS = 24
EDIT_TIMEOUT = 90.0
LOG_ROWS = """
CREATE TABLE IF NOT EXISTS bq_row_log (resource_id text, url text, at timestamp);
CREATE OR REPLACE FUNCTION bq_log_row() RETURNS trigger AS $$
BEGIN
  -- a check written (updated changes), not a mark (queued_at, started_at)
  IF NEW.status_id IS NOT NULL
     AND (TG_OP = 'INSERT' OR NEW.updated IS DISTINCT FROM OLD.updated) THEN
    INSERT INTO bq_row_log VALUES (NEW.resource_id, NEW.url,
                                   clock_timestamp() AT TIME ZONE 'utc');
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS bq_log ON archival;
CREATE TRIGGER bq_log AFTER INSERT OR UPDATE ON archival
  FOR EACH ROW EXECUTE FUNCTION bq_log_row();
"""


def cluster_hosts() -> list[str]:
    return ([f"{CLUSTER_NET}{k}" for k in (1, 2, *range(10, 21))]
            + [f"{net}{k}" for net in SPREAD_NETS for k in range(1, 251)])


def _politeness() -> tuple[int, float]:
    """(per_host_concurrency, per_host_min_interval) of the code under test."""
    import ckan.plugins.toolkit as tk

    return (int(tk.config.get("ckanext.archiver.per_host_concurrency")),
            float(tk.config.get("ckanext.archiver.per_host_min_interval")))


def politeness_ceiling(hosts: dict[str, int], latency: float) -> float:
    """Resources/s politeness allows at best: each host at most
    min(concurrency / latency, 1 / min_interval) requests a second; the run
    lasts as long as its busiest host needs."""
    conc, gap = _politeness()
    per_host = min(conc / latency, 1 / gap if gap > 0 else float("inf"))
    return sum(hosts.values()) / (max(hosts.values()) / per_host)


def _by_host(engine, t0: float) -> dict[str, tuple[int, float]]:
    """host -> (rows, seconds from t0 to its last row)."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT split_part(split_part(url, '/', 3), ':', 1), count(*), max(updated) "
            "FROM archival WHERE status_id IS NOT NULL GROUP BY 1")).all()
    start = _utc_naive(t0)
    return {h: (n, (last - start).total_seconds()) for h, n, last in rows}


def _history_rows(engine) -> int:
    import sqlalchemy as sa

    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM archival_history")).scalar()


def _checked_twice(engine) -> list[str]:
    """The history rows of resources checked more than once (at most 20)."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT h.resource_id, h.checked_at, h.status_id, h.attempt, h.duration "
            "FROM archival_history h WHERE h.resource_id IN (SELECT resource_id "
            "FROM archival_history GROUP BY 1 HAVING count(*) > 1 LIMIT 20) "
            "ORDER BY 1, 2")).all()
    return [f"{r[0]} {r[1]:%H:%M:%S.%f} status {r[2]} attempt {r[3]} "
            f"{'-' if r[4] is None else f'{r[4]:.3f}'} s" for r in rows]


def cluster_run(ctx, label: str, n: int, url_sql: str, hosts: dict[str, int],
                latency: float, **params) -> dict:
    reset_data(ctx.engine)
    redis_cleanup(ctx.site_id)
    seed(ctx.engine, "cl", n, ctx.scale["per_dataset"], url_sql, port=ctx.origin.port,
         **params)
    ctx.origin.per_host(reset=True)
    run = throughput_run(ctx, label, ctx.ini, n, final=True, stall=100)
    seen = ctx.origin.per_host()
    gaps = [h["least_gap"] for h in seen.values() if h["least_gap"] is not None]
    ceiling = politeness_ceiling(hosts, latency)
    run.update({
        "ceiling": ceiling, "ratio": run["rate"] / ceiling,
        "cpu_ms": 1000 * run["worker_cpu"] / max(run["done"], 1),
        "attempts": _history_rows(ctx.engine) / n,
        "requests": sum(h["requests"] for h in seen.values()) / n,
        "most_in_flight": max((h["most_in_flight"] for h in seen.values()), default=0),
        "least_gap": min(gaps) if gaps else None,
        "by_host": _by_host(ctx.engine, run["t0"]),
        "seen": seen,
        "twice": _checked_twice(ctx.engine),
    })
    _conc, min_gap = _politeness()
    floor = max(min_gap - LATE_SLACK, 0)  # what the workers keep (worker.hosts.keep_pace)
    close = [b - a for h in seen.values() for a, b in zip(h["starts"], h["starts"][1:])
             if b - a < floor]
    run.update(close=len(close), close_floor=floor)
    busiest = max(seen.values(), key=lambda h: h["requests"], default=None)
    if busiest and busiest["span"] > WINDOW * 3:
        # its requests per WINDOW s, leaving out the first and the last
        # window (the run's start and end): did it run at one pace throughout?
        counts = [0] * (int(busiest["starts"][-1] // WINDOW) + 1)
        for t in busiest["starts"]:
            counts[int(t // WINDOW)] += 1
        run["busiest_windows"] = [c / WINDOW for c in counts[1:-1]]
    if busiest and busiest["span"] > 0:
        # the busiest host from its first request's start to its last one's
        # end, as the origin saw them (leaves out the CLI and the worker's
        # start): requests/s, and the mean requests in flight to it
        run["busiest_rate"] = busiest["requests"] / busiest["span"]
        run["busiest_in_flight"] = busiest["busy"] / busiest["span"]
    return run


LATE_SLACK = 0.01  # worker.hosts.LATE_SLACK
WINDOW = 5.0  # seconds: the busiest host's pace is shown per window


def _cluster_line(r: dict) -> str:
    gap = "-" if r["least_gap"] is None else f"{1000 * r['least_gap']:.0f}"
    mark = f"  STALLED at {r['done']:,}/{r['n']:,}" if r["stalled"] else ""
    return (f"{r['label']:34} {r['rate']:7.1f} {r['ceiling']:8.1f} {r['ratio']:6.2f} "
            f"{r['cpu_ms']:7.1f} {r['attempts']:6.2f} {r['requests']:6.2f} "
            f"{r['most_in_flight']:5d} {gap:>6}{mark}")


PART5_RUNS = ("one", "ten", "slow", "mix", "edits")


def part5(ctx, big: bool = False, only: tuple = PART5_RUNS) -> dict:
    """``only``: which of PART5_RUNS (``ten``: with ``big`` only)."""
    s = ctx.scale
    conc, gap = _politeness()
    one, mix_n, slow_n = s["one_host"], s["mix"], s["slow_one"]
    say(f"\n== 5. Links clustered on few hosts (per_host_concurrency {conc}, "
        f"per_host_min_interval {gap} s; origin answers after {FAST_DELAY * 1000:.0f} ms, "
        f"/slow/ after {SLOW_DELAY:.0f} s) ==")
    port_url = "'http://' || {host} || ':' || :port || '/{kind}/' || i || '.csv'"
    runs = []
    one_host = CLUSTER_NET + "1"
    if "one" in only:
        runs.append(cluster_run(
            ctx, f"{one:,} links on one host", one,
            port_url.format(host=f"'{one_host}'", kind="fast"), {one_host: one}, FAST_DELAY))
    if big and "ten" in only:
        runs.append(cluster_run(
            ctx, f"{10 * one:,} links on one host", 10 * one,
            port_url.format(host=f"'{one_host}'", kind="fast"), {one_host: 10 * one},
            FAST_DELAY))
    slow_host = CLUSTER_NET + "2"
    if "slow" in only:
        runs.append(cluster_run(
            ctx, f"{slow_n} links on one 2 s host", slow_n,
            port_url.format(host=f"'{slow_host}'", kind="slow"), {slow_host: slow_n},
            SLOW_DELAY))
    half, eighty = mix_n // 2, mix_n * 8 // 10
    mix_host = ("CASE WHEN i < :half THEN '127.0.3.10' "
                "WHEN i < :eighty THEN '127.0.3.' || (11 + mod(i, 10)) "
                "WHEN mod(i, 500) < 250 THEN '127.0.4.' || (1 + mod(i, 500)) "
                "ELSE '127.0.5.' || (mod(i, 500) - 249) END")
    mix_hosts = {"127.0.3.10": half}
    for i in range(half, eighty):
        mix_hosts[f"127.0.3.{11 + i % 10}"] = mix_hosts.get(f"127.0.3.{11 + i % 10}", 0) + 1
    for i in range(eighty, mix_n):
        h = (f"127.0.4.{1 + i % 500}" if i % 500 < 250 else f"127.0.5.{i % 500 - 249}")
        mix_hosts[h] = mix_hosts.get(h, 0) + 1
    mix = None
    if "mix" in only:
        mix = cluster_run(ctx, f"heavy-tailed mix, {mix_n:,} links", mix_n,
                          port_url.format(host=mix_host, kind="fast"), mix_hosts, FAST_DELAY,
                          half=half, eighty=eighty)
        runs.append(mix)

    say(f"{'':34} {'res/s':>7} {'ceiling':>8} {'ratio':>6} {'CPU ms':>7} {'att.':>6} "
        f"{'req.':>6} {'most':>5} {'gap ms':>6}")
    for r in runs:
        say(_cluster_line(r))
        say(f"{'':34} {r['cpu']}")
        if r["attempts"] > 1:  # which checks were recorded more than once
            say(f"{'':34} {r['attempts'] * r['n'] - r['n']:.0f} checks more than "
                f"resources; statuses: {r['statuses']}")
            for line in r.get("twice", ()):
                say(f"{'':34} {line}")
    say("  (res/s until every row has a final status; ceiling: what per-host politeness "
        "allows at best; CPU ms: worker CPU per resource; att.: checks recorded per "
        "resource (history rows); req.: requests the origin got per resource; most: "
        "most requests in flight to one host; gap: least time between two requests to "
        "one host, both as the origin saw them)")
    host_ceiling = politeness_ceiling({"x": 1}, FAST_DELAY)
    for r in runs:
        if "busiest_rate" in r:
            ceiling = politeness_ceiling({"x": 1}, SLOW_DELAY if "2 s" in r["label"]
                                         else FAST_DELAY)
            say(f"  {r['label']}: busiest host, first request to last, "
                f"{r['busiest_rate']:.1f} requests/s against its ceiling of {ceiling:.1f}/s "
                f"({100 * r['busiest_rate'] / ceiling:.0f}%), "
                f"{r['busiest_in_flight']:.2f} requests in flight on average")
        if r.get("busiest_windows"):
            w = r["busiest_windows"]
            say(f"  {r['label']}: busiest host, requests/s in each {WINDOW:.0f} s "
                f"(first and last left out): least {min(w):.1f}, most {max(w):.1f}, "
                f"median {statistics.median(w):.1f}")
        say(f"  {r['label']}: {r['close']} requests reached their host less than "
            f"{1000 * r['close_floor']:.0f} ms (per_host_min_interval less "
            f"{1000 * LATE_SLACK:.0f} ms) after the one before")
    out = {"runs": runs}
    if "edits" in only:
        out["edits"] = part5_edits(ctx)
    if mix is None:
        return out
    groups = {"big host": ["127.0.3.10"],
              "ten medium hosts": [f"127.0.3.{11 + k}" for k in range(10)],
              "small hosts": [h for h in mix_hosts if h.startswith(SPREAD_NETS)]}
    finished = {}
    for name, members in groups.items():
        got = [mix["by_host"].get(h, (0, float("nan"))) for h in members]
        finished[name] = max(t for _n, t in got)
        rows = sum(n for n, _t in got)
        say(f"  mix, {name:17}: {rows:5,} links, last row after {finished[name]:6.1f} s")
    big_rate = half / finished["big host"]
    say(f"  mix, big host ran at {big_rate:.1f} requests/s against its ceiling of "
        f"{host_ceiling:.1f}/s ({100 * big_rate / host_ceiling:.0f}%) from the start of "
        "`update` to its last row")
    out.update(mix_finished=finished, big_rate=big_rate)
    return out


def part5_edits(ctx) -> dict:
    """A bulk backlog on one host (priority and bulk workers running); 24
    URL edits of resources in it that have no row yet, through
    resource_patch, half a second apart; then until each edit's new URL is
    checked or EDIT_TIMEOUT passes after the last edit."""
    import ckan.plugins.toolkit as tk
    import sqlalchemy as sa
    from ckan import model

    n = ctx.scale["one_host"]
    host = CLUSTER_NET + "1"
    say(f"\n-- priority edits on a busy host: {n:,} links on {host} queued on bulk, "
        f"{EDITS} URL edits of resources in that backlog (`worker priority` + "
        "`worker bulk`) --")
    reset_data(ctx.engine)
    redis_cleanup(ctx.site_id)
    seed(ctx.engine, "ed", n, ctx.scale["per_dataset"],
         "'http://" + host + ":' || :port || '/fast/' || i || '.csv'", port=ctx.origin.port)
    reset_results(ctx.engine, ctx.archive_dir)
    with ctx.engine.begin() as conn:
        conn.execute(sa.text(LOG_ROWS))
        conn.execute(sa.text("TRUNCATE bq_row_log"))
    workers = ctx.workers
    workers.start("bulk", ctx.ini)
    workers.start("priority", ctx.ini)
    workers.wait_ready()
    before = cpu_snapshot(workers.pgids(), ctx.origin.proc.pid)
    run_ckan(ctx.ini, "archiver", "update")
    while count_done(ctx.engine)[0] < max(10, n // 20):
        time.sleep(0.1)
    pick = sa.text(
        "SELECT r.id, r.url FROM resource r JOIN archival a ON a.resource_id = r.id "
        "WHERE a.status_id IS NULL AND NOT r.id = ANY(:done) ORDER BY random() LIMIT 1")
    edits = []
    for k in range(EDITS):
        with ctx.engine.connect() as conn:  # one not checked yet, right now
            found = conn.execute(pick, {"done": [e[0] for e in edits]}).first()
        if found is None:
            break
        rid, old = found
        new = f"http://{host}:{ctx.origin.port}/fast/edited-{k}.csv"
        with ctx.flask_app.test_request_context():
            tk.get_action("resource_patch")(
                {"user": ctx.site_user, "ignore_auth": True}, {"id": rid, "url": new})
        model.Session.remove()
        edits.append((rid, old, new, _utc_naive(time.time())))
        time.sleep(0.5)
    end = time.time() + EDIT_TIMEOUT
    query = sa.text("SELECT url, updated FROM archival WHERE resource_id = :rid "
                    "AND status_id IS NOT NULL")
    latencies: dict[str, float] = {}
    while time.time() < end and len(latencies) < len(edits):
        with ctx.engine.connect() as conn:
            for rid, _old, new, at in edits:
                if rid in latencies:
                    continue
                row = conn.execute(query, {"rid": rid}).first()
                if row is not None and row[0] == new:
                    latencies[rid] = (row[1] - at).total_seconds()
        time.sleep(0.1)
    after = cpu_snapshot(workers.pgids(), ctx.origin.proc.pid)
    with ctx.engine.connect() as conn:
        late_old = sum(conn.execute(sa.text(
            "SELECT count(*) FROM bq_row_log WHERE resource_id = :rid AND url = :old "
            "AND at > :at"), {"rid": rid, "old": old, "at": at}).scalar()
            for rid, old, _new, at in edits)
        conn.execute(sa.text("DROP TRIGGER IF EXISTS bq_log ON archival"))
        conn.commit()
    workers.stop(grace=1)
    clear_host_leases(ctx.site_id)
    lat = [latencies.get(rid) for rid, *_ in edits]
    got = [v for v in lat if v is not None]
    say(f"checked at their new URL within {EDIT_TIMEOUT:.0f} s: {len(got)} of {len(edits)}; "
        + (_latency_line("edit to row", lat, EDIT_TIMEOUT).strip() if got else "none"))
    say(f"rows recording an old URL written after its edit: {late_old}")
    say("  each edit (s): " + " ".join("-" if v is None else f"{v:.2f}" for v in lat))
    say(f"  {cpu_line(before, after)}")
    return {"edits": len(edits), "at_new_url": len(got),
            "p95": _pct(got, 95) if got else None, "late_old_rows": late_old}


class Context:
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Scaled-down smoke run.")
    parser.add_argument("--parts", default="12345",
                        help="Which parts to run (default 12345; 6 adds 10,000 links on "
                             "one host to part 5).")
    parser.add_argument("--only", default=",".join(PART5_RUNS),
                        help="Part 5's runs (comma-separated, default all: "
                             + ", ".join(PART5_RUNS) + "; ten needs --parts ...6).")
    parser.add_argument("--keep-logs", action="store_true",
                        help="Keep the work folder (worker and origin logs, bench ini).")
    args = parser.parse_args()

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    ctx = Context()
    ctx.scale = SCALES["quick" if args.quick else "full"]
    ctx.site_id = f"archiver_bench_queue_{os.getpid()}"
    ctx.db = f"{DB_PREFIX}{os.getpid()}"
    ctx.workdir = tempfile.mkdtemp(prefix="bench_queue-")
    ctx.archive_dir = os.path.join(ctx.workdir, "archive")
    ctx.engine = None
    ctx.workers = Workers(ctx.workdir, ctx.site_id)
    ctx.origin = None
    started = time.perf_counter()
    results = {}
    created_db = False
    try:
        drop_stale_databases()
        s = ctx.scale
        hosts = ([f"{FAST_NET}{k + 2}" for k in range(s["hosts"])]
                 + [f"{SLOW_NET}{k + 1}" for k in range(s["slow_hosts"])]
                 + [f"{EDIT_NET}{k + 1}" for k in range(s["edits"] + s["all_edits"])]
                 + ["127.0.0.1"] + cluster_hosts())
        ctx.origin = Origin(hosts, ctx.workdir)
        ctx.origin.start()
        note(f"origin on {len(hosts)} addresses, port {ctx.origin.port}; work dir {ctx.workdir}")

        _as_postgres("createdb", "-O", "ckan_default", "-E", "utf-8", "-T", "template0", ctx.db)
        created_db = True
        db_url = ctx.db_url = f"postgresql://ckan_default:pass@127.0.0.1/{ctx.db}"
        ctx.ini = os.path.join(ctx.workdir, "bench.ini")
        ctx.ini_free = os.path.join(ctx.workdir, "bench-relaxed.ini")
        write_ini(ctx.ini, ctx.workdir, db_url, ctx.site_id)
        write_ini(ctx.ini_free, ctx.workdir, db_url, ctx.site_id,
                  **{"ckanext.archiver.per_host_concurrency": "1000",
                     "ckanext.archiver.per_host_min_interval": "0",
                     "ckanext.archiver.per_host_start_interval": "0"})
        t0 = time.perf_counter()
        run_ckan(ctx.ini, "db", "init")
        run_ckan(ctx.ini, "db", "upgrade", "-p", "archiver")
        note(f"database {ctx.db} made in {time.perf_counter() - t0:.1f} s")

        # CKAN in this process too (the edits, the in-process enqueue)
        import ckan.plugins.toolkit as tk
        import sqlalchemy as sa
        from ckan.cli import load_config
        from ckan.config.middleware import make_app

        app = make_app(load_config(ctx.ini))
        ctx.flask_app = app._wsgi_app
        ctx.engine = sa.create_engine(db_url, pool_size=2)
        ctx.batch_size = int(tk.config.get("ckanext.archiver.batch_size"))
        ctx.site_user = tk.get_action("get_site_user")({"ignore_auth": True}, {})["name"]
        say(f"bench_queue: {os.cpu_count()} cores, batch_size {ctx.batch_size}, "
            f"per_host_concurrency {tk.config.get('ckanext.archiver.per_host_concurrency')}, "
            f"per_host_min_interval {tk.config.get('ckanext.archiver.per_host_min_interval')} s"
            f"{' (--quick)' if args.quick else ''}")
        if "1" in args.parts:
            results["1"] = part1(ctx)
        if "2" in args.parts:
            results["2"] = part2(ctx)
        if "3" in args.parts:
            results["3"] = part3(ctx)
        if "4" in args.parts:
            results["4"] = part4(ctx)
        if "5" in args.parts:
            results["5"] = part5(ctx, big="6" in args.parts,
                                 only=tuple(args.only.split(",")))
        summary(results)
    except KeyboardInterrupt:
        say("\ninterrupted: cleaning up")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        ctx.workers.stop(grace=2)
        if ctx.origin is not None:
            ctx.origin.stop()
        with contextlib.suppress(Exception):
            redis_cleanup(ctx.site_id)
        with contextlib.suppress(Exception):
            from ckan import model

            model.Session.remove()
            model.meta.engine.dispose()
        if ctx.engine is not None:
            ctx.engine.dispose()
        if created_db:
            _drop_db(ctx.db)
        if args.keep_logs:
            say(f"(logs kept in {ctx.workdir})")
        else:
            shutil.rmtree(ctx.workdir, ignore_errors=True)
        say(f"(cleaned up: workers killed, database {ctx.db} dropped; "
            f"run took {time.perf_counter() - started:.0f} s)")


def summary(results: dict) -> None:
    say("\n== Summary (goals on 2 cores) ==")
    if "1" in results:
        base = results["1"]["baseline"]
        for r in results["1"]["runs"]:
            mark = "ok" if r["rate"] >= GOALS["bulk"] else "BELOW GOAL"
            if r["stalled"]:
                mark += f", STALLED at {r['done']:,}/{r['n']:,}"
            say(f"{r['label']:44} {r['rate']:8.1f} res/s end to end "
                f"(goal >= {GOALS['bulk']:.0f}) {mark}")
        say(f"{'sequential baseline':44} {base['rate']:8.1f} res/s "
            f"(x{results['1']['runs'][1]['rate'] / base['rate']:.0f} for the worker, "
            "default politeness)")
    if "2" in results:
        for key, label in (("latencies", "priority latency p95, priority worker"),
                           ("all", "priority latency p95, `worker all` only")):
            lat = results["2"][key]
            got = [v for v in lat if v is not None]
            if not lat:
                continue
            if not got:
                say(f"{label:44} no edit archived: ABOVE GOAL")
                continue
            p95 = _pct(got, 95)
            lost = len(lat) - len(got)
            mark = "ok" if p95 <= GOALS["p95"] and not lost else "ABOVE GOAL"
            extra = f", {lost} of {len(lat)} edits never archived" if lost else ""
            say(f"{label:44} {p95:8.2f} s (goal <= {GOALS['p95']:.0f} s{extra}) {mark}")
    if "3" in results:
        for key, label in (("cli_rate", "`update` enqueue, end to end"),
                           ("inproc_rate", "queue.enqueue() in process")):
            rate = results["3"][key]
            mark = "ok" if rate >= GOALS["enqueue"] else "BELOW GOAL"
            say(f"{label:44} {rate:8.0f} res/s (goal >= {GOALS['enqueue']:.0f}) {mark}")
    if "5" in results:
        r5 = results["5"]
        conc, _gap = _politeness()
        for r in r5["runs"]:
            held = r["ratio"] >= 0.5  # held back by politeness
            marks = []
            if held:
                marks.append("CPU ok" if r["cpu_ms"] <= GOALS["cpu_ms"] else "CPU ABOVE GOAL")
            marks.append("attempts ok" if r["attempts"] <= 1.0 else "attempts ABOVE GOAL")
            marks.append("in flight ok" if r["most_in_flight"] <= conc
                         else "in flight ABOVE per_host_concurrency")
            say(f"{r['label'][:44]:44} {r['rate']:8.1f} res/s, {r['cpu_ms']:.1f} ms CPU, "
                f"{r['attempts']:.2f} attempts, {r['most_in_flight']} in flight: "
                + ", ".join(marks))
        one = next((r for r in r5["runs"] if r["label"].endswith("links on one host")), None)
        if one is not None:
            mark = "ok" if one["rate"] >= GOALS["one_host"] else "BELOW GOAL"
            say(f"{'one host, 100 ms':44} {one['rate']:8.1f} res/s (goal >= "
                f"{GOALS['one_host']:.1f}) {mark}")
        e = r5.get("edits")
        if e is not None:
            p95 = "-" if e["p95"] is None else f"{e['p95']:.2f} s"
            mark = ("ok" if e["at_new_url"] == e["edits"] and e["p95"] is not None
                    and e["p95"] <= GOALS["p95"] and not e["late_old_rows"] else "BELOW GOAL")
            say(f"{'edits on the busy host':44} {e['at_new_url']}/{e['edits']} at new URL, "
                f"p95 {p95}, {e['late_old_rows']} old-URL rows after their edit {mark}")
    if "4" in results:
        clean, *hung = results["4"]["runs"]
        for r in hung:
            share = r["rate"] / clean["rate"]
            mark = "ok" if share >= GOALS["hanging"] else "BELOW GOAL"
            say(f"{r['label'][:44]:44} {100 * share:8.0f} % of the clean run "
                f"(goal >= {100 * GOALS['hanging']:.0f} %) {mark}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_origin":
        origin_main(int(sys.argv[2]), sys.argv[3:])
    else:
        main()
