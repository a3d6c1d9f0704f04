#!/usr/bin/env python
"""Throughput with 1, 2 and 3 worker hosts sharing one Redis, PostgreSQL and
an S3 store (SeaweedFS). Prints numbers; not a test. Needs root (network
namespaces).

Each "host" is a network namespace made here (``tests/netns.py``: a veth
pair, 10.200.x.y addresses, no route beyond its own veth) running
``ckan -c <host ini> archiver worker bulk --concurrency=2``. Redis (a private
``redis-server``), PostgreSQL (the local service) and SeaweedFS listen on
127.0.0.1 in the root namespace, reached through TCP forwarders bound to the
veth ends; the origin is bench_queue.py's (``/fast/`` answers after 100 ms,
~1 KB with an ETag) on the veth ends, under one name for every host. The
workload is the same for each run: ``--resources`` (600) resources queued by
``ckan archiver update``, politeness relaxed (one origin host), copies
streamed into the bucket. Figures: resources/s until every row has a status,
and the CPU seconds per resource of the workers (and of the whole machine).
Everything runs on the same 2 cores, so more hosts add processes, not CPU.

    .venv/bin/python bench/bench_multihost.py [--resources 600] [--hosts 1,2,3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import bench_queue as bq  # noqa: E402  (bench/ is on sys.path)

ORIGIN = "origin.bench.test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resources", type=int, default=600)
    parser.add_argument("--hosts", default="1,2,3")
    args = parser.parse_args()
    from ckanext.archiver.tests import netns, seaweed

    reason = netns.unavailable()
    if reason:
        raise SystemExit(f"bench_multihost needs network namespaces: {reason}")
    work = tempfile.mkdtemp(prefix="bench-multihost-")
    site_id = f"archiver_bench_multihost_{os.getpid()}"
    db = f"{bq.DB_PREFIX}mh_{os.getpid()}"
    redis_port = _free_port()
    redis_proc = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"], stdout=subprocess.DEVNULL, start_new_session=True)
    weed = lab = origin = engine = None
    workers: list[subprocess.Popen] = []
    created = False
    try:
        weed = seaweed.start(os.path.join(work, "seaweedfs"))
        weed.make_bucket("bench")
        lab = netns.Lab(max(int(n) for n in args.hosts.split(",")))
        lab.alias(ORIGIN)
        fwd = {"redis": lab.forward(0, redis_port), "pg": lab.forward(0, 5432),
               "s3": lab.forward(0, int(weed.endpoint.rsplit(":", 1)[1]))}
        origin = bq.Origin([lab.root_ip(i) for i in range(len(lab.names))], work)
        origin.start()
        bq._as_postgres("createdb", "-O", "ckan_default", "-E", "utf-8", "-T", "template0", db)
        created = True
        s3 = {"ckanext.archiver." + k: v for k, v in weed.options("bench").items()}
        common = {**s3, "ckanext.archiver.per_host_concurrency": "1000",
                  "ckanext.archiver.per_host_min_interval": "0",
                  "ckanext.archiver.allowed_networks": "10.200.0.0/16 127.0.0.0/8"}
        root_ini = os.path.join(work, "root.ini")
        db_url = f"postgresql://ckan_default:pass@127.0.0.1/{db}"
        bq.write_ini(root_ini, work, db_url, site_id, **common,
                     **{"ckan.redis.url": f"redis://127.0.0.1:{redis_port}/0"})
        inis = []
        for i in range(len(lab.names)):
            at = lab.root_ip(i)
            ini = os.path.join(work, f"host-{i}.ini")
            bq.write_ini(ini, work, f"postgresql://ckan_default:pass@{at}:{fwd['pg']}/{db}",
                         site_id, **{
                             **common, "ckan.redis.url": f"redis://{at}:{fwd['redis']}/0",
                             "ckanext.archiver.s3_endpoint_url": f"http://{at}:{fwd['s3']}",
                             "ckanext.archiver.archive_dir": os.path.join(work, f"disk-{i}")})
            inis.append(ini)
        bq.run_ckan(root_ini, "db", "init")
        bq.run_ckan(root_ini, "db", "upgrade", "-p", "archiver")
        import sqlalchemy as sa

        engine = sa.create_engine(db_url, pool_size=2)
        bq.seed(engine, "mh", args.resources, 5,
                "'http://" + ORIGIN + ":' || :port || '/fast/r' || i || '.csv'",
                port=origin.port)
        print(f"bench_multihost: {args.resources} resources, origin after "
              f"{bq.FAST_DELAY * 1000:.0f} ms, {os.cpu_count()} cores, "
              f"load {os.getloadavg()[0]:.2f}")
        rows = []
        for k in (int(n) for n in args.hosts.split(",")):
            bq.reset_results(engine, os.path.join(work, "archive"))
            logs = [os.path.join(work, f"run{k}-host-{i}.log") for i in range(k)]
            workers = [lab.popen(i, [bq.CKAN, "-c", inis[i], "archiver", "worker", "bulk",
                                     "--concurrency=2"], stdout=open(logs[i], "wb"),
                                 stderr=subprocess.STDOUT, cwd=bq.ROOT) for i in range(k)]
            give_up = time.monotonic() + 120
            while not all(" ready." in open(log, errors="replace").read() for log in logs):
                if time.monotonic() > give_up or any(w.poll() is not None for w in workers):
                    raise RuntimeError(f"workers did not start; see {work}")
                time.sleep(0.3)
            before = bq.cpu_snapshot([w.pid for w in workers], origin.proc.pid)
            started = time.monotonic()
            bq.run_ckan(root_ini, "archiver", "update")
            last, moved = 0, time.monotonic()
            while True:
                done, _total = bq.count_done(engine)
                if done >= args.resources:
                    break
                if done != last:
                    last, moved = done, time.monotonic()
                if time.monotonic() - moved > 60:
                    raise RuntimeError(f"stuck at {done}/{args.resources}; see {work}")
                time.sleep(0.2)
            seconds = time.monotonic() - started
            after = bq.cpu_snapshot([w.pid for w in workers], origin.proc.pid)
            for w in workers:
                lab.kill(w, 15)
            workers = []
            cpu = after["workers"] - before["workers"]
            machine = after["machine"] - before["machine"]
            rows.append((k, args.resources / seconds, cpu / args.resources,
                         machine / args.resources, bq.status_counts(engine)))
            print(f"  {k} host(s): {bq.cpu_line(before, after)}")
        print(f"{'worker hosts':<14}{'resources/s':>12}{'worker CPU s/res':>18}"
              f"{'machine CPU s/res':>19}  statuses")
        for k, rate, cpu, machine, statuses in rows:
            print(f"{k:<14}{rate:>12.1f}{cpu:>18.4f}{machine:>19.4f}  {statuses}")
    finally:
        for w in workers:
            lab.kill(w)
        if origin is not None:
            origin.stop()
        if lab is not None:
            lab.close()
        if weed is not None:
            weed.stop()
        if engine is not None:
            engine.dispose()
        redis_proc.kill()
        redis_proc.wait()
        if created:
            bq._drop_db(db)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
