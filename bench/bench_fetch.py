#!/usr/bin/env python
"""Benchmark of the download engine (ckanext/archiver/engine/).

Prints numbers; not a test. Everything runs on 127.0.0.1:

1. one big file (1 GB by default, ``--size-mb``): ``fetch()`` MB/s and the
   peak RSS growth of a fresh process doing it, beside ``curl -o`` on the same
   file, and beside a naive ``requests.get(url).content`` download;
2. ``--small`` (1,000) small resources fetched, then fetched again with the
   validators stored the first time (``Previous``); the server counts the body
   bytes it sends. 80% of the resources carry ETag/Last-Modified, 20% do not.
   The naive baseline (no validators, whole body in memory) runs the same two
   passes.

The origin is a threaded Python server using ``sendfile`` running in its own
process (nginx is used by nobody here: it is not installed). Each measured
client runs in a fresh subprocess so that its peak RSS (VmHWM) is its own.

    .venv/bin/python bench/bench_fetch.py [--size-mb 1024] [--small 1000]
"""

from __future__ import annotations

import argparse
import email.utils
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root, for ckanext.archiver

from procstat import status_kb  # noqa: E402  (bench/ is on sys.path: the script's folder)

VALIDATED, UNVALIDATED = "v-", "n-"


# --------------------------------------------------------------------------
# The origin server (runs in its own process)


class _Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as nginx does on keep-alive connections
    root = ""
    lock = threading.Lock()
    stats = {"requests": 0, "body_bytes": 0, "not_modified": 0}

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        if self.path == "/__stats":
            return self._send_json(dict(self.stats))
        if self.path == "/__reset":
            with self.lock:
                self.stats.update(requests=0, body_bytes=0, not_modified=0)
            return self._send_json({"ok": True})
        name = os.path.basename(self.path)
        path = os.path.join(self.root, name)
        if not name or not os.path.isfile(path):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        st = os.stat(path)
        with self.lock:
            self.stats["requests"] += 1
        headers = {
            "Content-Type": "text/csv" if name.endswith(".csv") else "application/octet-stream"
        }
        if name.startswith(VALIDATED):
            etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
            last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
            headers.update({"ETag": etag, "Last-Modified": last_modified})
            if self.headers.get("If-None-Match") == etag or (
                not self.headers.get("If-None-Match")
                and self.headers.get("If-Modified-Since") == last_modified
            ):
                with self.lock:
                    self.stats["not_modified"] += 1
                self.send_response(304)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                return
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(st.st_size))
        self.end_headers()
        self.wfile.flush()
        sent = 0
        with open(path, "rb") as f:
            try:
                while sent < st.st_size:
                    n = os.sendfile(self.connection.fileno(), f.fileno(), sent, st.st_size - sent)
                    if n == 0:
                        break
                    sent += n
            finally:
                with self.lock:
                    self.stats["body_bytes"] += sent

    def _send_json(self, data):
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(root: str, port_file: str) -> None:
    _Origin.root = root
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    server.daemon_threads = True
    with open(port_file + ".part", "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(port_file + ".part", port_file)
    server.serve_forever()


def _stats(base: str, reset: bool = False) -> dict:
    with urllib.request.urlopen(base + ("/__reset" if reset else "/__stats")) as response:
        return json.load(response)


# --------------------------------------------------------------------------
# Workers (each runs in a fresh process)



def _settings(**kw):
    from ckanext.archiver.engine.outcome import FetchSettings

    base = dict(allow_private_networks=True, total_timeout=600, read_timeout=30)
    base.update(kw)
    return FetchSettings(**base)


def worker_fetch_big(url: str, max_bytes: int, tmp_dir: str) -> dict:
    from ckanext.archiver.engine.attempt import fetch
    from ckanext.archiver.engine.session import get_session

    settings = _settings(max_content_length=max_bytes)
    get_session(settings)
    rss_before = status_kb("VmRSS")
    cpu = time.process_time()
    started = time.perf_counter()
    outcome = fetch(url, settings, tmp_dir=tmp_dir)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    peak = status_kb("VmHWM")
    if outcome.tmp_path:
        os.unlink(outcome.tmp_path)
    return {
        "status": outcome.status_id,
        "reason": outcome.reason,
        "bytes": outcome.size or 0,
        "seconds": seconds,
        "cpu": cpu,
        "rss_before_kb": rss_before,
        "peak_kb": peak,
    }


def worker_naive_big(url: str, out_path: str) -> dict:
    import requests

    rss_before = status_kb("VmRSS")
    cpu = time.process_time()
    started = time.perf_counter()
    body = requests.get(url, timeout=600).content
    with open(out_path, "wb") as f:
        f.write(body)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    peak = status_kb("VmHWM")
    size = len(body)
    del body
    os.unlink(out_path)
    return {
        "bytes": size,
        "seconds": seconds,
        "cpu": cpu,
        "rss_before_kb": rss_before,
        "peak_kb": peak,
    }


def worker_fetch_many(base: str, names: list, archive_dir: str) -> dict:
    from ckanext.archiver import status
    from ckanext.archiver.engine.attempt import fetch
    from ckanext.archiver.engine.outcome import Previous
    from ckanext.archiver.engine.storage import Storage

    storage = Storage(archive_dir)
    settings = _settings(max_content_length=50_000_000)
    previous = {}
    passes = []
    for _run in (1, 2):
        _stats(base, reset=True)
        counts: dict = {}
        store_seconds = 0.0
        started = time.perf_counter()
        cpu = time.process_time()
        for i, name in enumerate(names):
            url = f"{base}/files/{name}"
            outcome = fetch(url, settings, previous.get(name), tmp_dir=storage.tmp_dir())
            rid = f"{i:08d}-0000-4000-8000-000000000000"
            cache_filepath = previous.get(name, Previous()).cache_filepath
            if outcome.tmp_path:
                store_started = time.perf_counter()
                cache_filepath = storage.store(rid, outcome.tmp_path, outcome.filename)
                store_seconds += time.perf_counter() - store_started
            previous[name] = Previous(
                url=outcome.url,
                etag=outcome.etag,
                last_modified=outcome.last_modified,
                sha256=outcome.sha256,
                fresh_until=outcome.fresh_until,
                cache_filepath=cache_filepath,
            )
            key = status.text(outcome.status_id)
            counts[key] = counts.get(key, 0) + 1
        seconds = time.perf_counter() - started
        passes.append(
            {
                "seconds": seconds,
                "cpu": time.process_time() - cpu,
                "store_seconds": store_seconds,
                "statuses": counts,
                "server": _stats(base),
            }
        )
    return {"passes": passes}


def worker_naive_many(base: str, names: list, out_dir: str) -> dict:
    import requests

    passes = []
    for _run in (1, 2):
        _stats(base, reset=True)
        started = time.perf_counter()
        cpu = time.process_time()
        for name in names:
            body = requests.get(f"{base}/files/{name}", timeout=30).content
            with open(os.path.join(out_dir, name), "wb") as f:
                f.write(body)
        passes.append({"seconds": time.perf_counter() - started,
                       "cpu": time.process_time() - cpu, "server": _stats(base)})
    return {"passes": passes}


def _run_worker(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------
# Main


def _make_big(path: str, size: int) -> None:
    block = os.urandom(16 * 1024 * 1024)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)


def _make_small(root: str, count: int) -> list:
    rng = random.Random(42)
    names = []
    for i in range(count):
        prefix = VALIDATED if i % 5 else UNVALIDATED  # 80% / 20%
        name = f"{prefix}{i:05d}.csv"
        rows = rng.randint(20, 1500)
        with open(os.path.join(root, name), "w") as f:
            f.write("id,name,value\n")
            for r in range(rows):
                f.write(f"{r},item-{rng.randint(0, 10**6)},{rng.random():.6f}\n")
        names.append(name)
    return names


def _mb_s(nbytes: int, seconds: float) -> float:
    return nbytes / 1e6 / seconds if seconds else 0.0


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def _row(*cells, widths=(32, 9, 9, 9, 13, 15)) -> str:
    out = ""
    for cell, width in zip(cells, widths):
        text = f"{cell:,.0f}" if isinstance(cell, int) else cell
        text = f"{cell:.2f}" if isinstance(cell, float) else text
        out += f"{text:<{width}}" if out == "" else f"{text:>{width}}"
    return out


def bench_big(base: str, work: str, size: int) -> dict:
    url = f"{base}/files/big.bin"
    tmp_dir = os.path.join(work, "tmp")
    os.makedirs(tmp_dir, exist_ok=True)
    print(f"\n== 1. One {size / 1e6:,.0f} MB file over loopback ({_load()}) ==")
    _run_worker("fetch-big", url, str(size + 1), tmp_dir)  # warm-up (page cache, imports)
    fetched = _run_worker("fetch-big", url, str(size + 1), tmp_dir)
    curl_out = os.path.join(work, "curl.out")
    started = time.perf_counter()
    subprocess.run(["curl", "-s", "-o", curl_out, url], check=True)
    curl = {"seconds": time.perf_counter() - started, "bytes": os.path.getsize(curl_out)}
    os.unlink(curl_out)
    naive = _run_worker("naive-big", url, os.path.join(work, "naive.out"))
    for result in (fetched, curl, naive):
        result["mb_s"] = _mb_s(result["bytes"], result["seconds"])
    for result in (fetched, naive):
        result["growth_mb"] = (result["peak_kb"] - result["rss_before_kb"]) / 1024

    print(f"fetch() said: {fetched['reason']} (status {fetched['status']})")
    print(_row("", "MB/s", "seconds", "CPU s", "peak RSS MB", "RSS growth MB"))
    for label, r in (("fetch() stream+sha1+sha256", fetched), ("naive requests .content", naive)):
        print(
            _row(
                label,
                f"{r['mb_s']:.0f}",
                r["seconds"],
                r["cpu"],
                f"{r['peak_kb'] / 1024:.1f}",
                f"{r['growth_mb']:.1f}",
            )
        )
    print(_row("curl -o", f"{curl['mb_s']:.0f}", curl["seconds"], "", "", ""))
    ok_speed = "OK" if fetched["mb_s"] >= 250 else "MISSED"
    ok_rss = "OK" if fetched["growth_mb"] <= 64 else "MISSED"
    print(
        f"fetch()/curl speed ratio {fetched['mb_s'] / curl['mb_s']:.2f}; "
        f"goals: >= 250 MB/s {ok_speed}, RSS growth <= 64 MB {ok_rss}"
    )
    return {"fetch": fetched, "naive": naive, "curl": curl}


def bench_small(base: str, work: str, files: str, names: list) -> dict:
    sizes = {n: os.path.getsize(os.path.join(files, n)) for n in names}
    total = sum(sizes.values())
    validated = [n for n in names if n.startswith(VALIDATED)]
    unvalidated_bytes = total - sum(sizes[n] for n in validated)
    print(
        f"\n== 2. {len(names)} small resources ({total / 1e6:.1f} MB; {len(validated)} with "
        f"ETag/Last-Modified, {len(names) - len(validated)} without), fetched twice "
        f"({_load()}) =="
    )
    names_file = os.path.join(work, "names.json")
    with open(names_file, "w") as f:
        json.dump(names, f)
    many = _run_worker("fetch-many", base, names_file, os.path.join(work, "archive"))
    naive_dir = os.path.join(work, "naive-many")
    os.makedirs(naive_dir)
    naive = _run_worker("naive-many", base, names_file, naive_dir)

    print(
        _row(
            "",
            "pass",
            "seconds",
            "res/s",
            "body bytes",
            "304 answers",
            "CPU ms/res",
            widths=(32, 6, 9, 8, 14, 13, 12),
        )
    )
    for label, result in (("fetch() + Storage.store", many), ("naive requests .content", naive)):
        for i, p in enumerate(result["passes"], 1):
            print(
                _row(
                    label,
                    str(i),
                    p["seconds"],
                    f"{len(names) / p['seconds']:.0f}",
                    p["server"]["body_bytes"],
                    p["server"]["not_modified"],
                    f"{1000 * p['cpu'] / len(names):.2f}",
                    widths=(32, 6, 9, 8, 14, 13, 12),
                )
            )
    first, second = many["passes"]
    print(
        f"fetch() pass 1 statuses {first['statuses']}, of which Storage.store (fsync + "
        f"rename) took {first['store_seconds']:.2f} s"
    )
    print(f"fetch() pass 2 statuses {second['statuses']}")
    resent = second["server"]["body_bytes"]
    naive_resent = naive["passes"][1]["server"]["body_bytes"]
    with_validators = max(resent - unvalidated_bytes, 0)
    print(
        f"pass 2 bytes re-sent: fetch() {resent:,} ({100 * resent / total:.1f}%), "
        f"naive {naive_resent:,} ({100 * naive_resent / total:.1f}%)"
    )
    print(
        f"  resources with validators: {with_validators:,} bytes re-sent (goal 0: "
        f"{'OK' if with_validators == 0 else 'MISSED'}); without validators: "
        f"{min(resent, unvalidated_bytes):,} of {unvalidated_bytes:,} bytes re-sent, "
        "then recognised as unchanged by sha256"
    )
    return {"fetch": many, "naive": naive, "resent": resent, "naive_resent": naive_resent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="big file size (MiB)")
    parser.add_argument("--small", type=int, default=1000, help="number of small resources")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="bench-fetch-")
    files = os.path.join(work, "files")
    os.makedirs(files)
    server = None
    try:
        size = args.size_mb * 1024 * 1024
        print(
            f"Generating a {args.size_mb} MiB file and {args.small} small CSV files "
            f"in {work} ({os.cpu_count()} CPUs, {_load()})"
        )
        _make_big(os.path.join(files, "big.bin"), size)
        names = _make_small(files, args.small)
        os.sync()
        port_file = os.path.join(work, "port")
        server = subprocess.Popen([sys.executable, __file__, "--serve", files, port_file])
        for _ in range(200):
            if os.path.exists(port_file):
                break
            time.sleep(0.05)
        with open(port_file) as f:
            base = f"http://127.0.0.1:{f.read()}"

        big = bench_big(base, work, size)
        small = bench_small(base, work, files, names)

        n = len(names)
        f1, f2 = small["fetch"]["passes"]
        n1, n2 = small["naive"]["passes"]
        print("\n== 3. Side by side ==")
        print(_row("", "fetch()", "naive", widths=(40, 14, 14)))
        rows = [
            ("big file MB/s", f"{big['fetch']['mb_s']:.0f}", f"{big['naive']['mb_s']:.0f}"),
            (
                "big file peak RSS growth MB",
                f"{big['fetch']['growth_mb']:.1f}",
                f"{big['naive']['growth_mb']:.1f}",
            ),
            ("small, pass 1 resources/s", f"{n / f1['seconds']:.0f}", f"{n / n1['seconds']:.0f}"),
            (
                "small, pass 2 (unchanged) resources/s",
                f"{n / f2['seconds']:.0f}",
                f"{n / n2['seconds']:.0f}",
            ),
            ("small, pass 2 body bytes re-sent", small["resent"], small["naive_resent"]),
        ]
        for row in rows:
            print(_row(*row, widths=(40, 14, 14)))
        print(f"({_load()})")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _worker(args: list) -> None:
    kind, rest = args[0], args[1:]
    if kind == "fetch-big":
        result = worker_fetch_big(rest[0], int(rest[1]), rest[2])
    elif kind == "naive-big":
        result = worker_naive_big(rest[0], rest[1])
    elif kind in ("fetch-many", "naive-many"):
        with open(rest[1]) as f:
            names = json.load(f)
        worker = worker_fetch_many if kind == "fetch-many" else worker_naive_many
        result = worker(rest[0], names, rest[2])
    else:
        raise SystemExit(f"unknown worker {kind}")
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2:])
    else:
        main()
