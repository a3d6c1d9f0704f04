#!/usr/bin/env python
"""Benchmark of the live workers' lost-check sweep query (``worker.lost`` ->
``dispatch.requeue_lost(..., queued_too=True)`` -> ``model.rows.lost``),
with and without the partial index of the queued rows
(``ix_archival_queued``, migration c5d8f3a0b912).

Prints numbers; not a test. Makes a throwaway database
``ckan_archiver_bench_sweep_<pid>`` (``ckan db init`` + ``db upgrade -p
archiver``, an ini derived from test.ini), fills ``archival`` with plain
bulk SQL, and drops the database at the end (also on failure or Ctrl-C):

* ``--rows`` rows (1,000,000), as a portal's rows look between rounds:
  most checked since they were last queued (``queued_at <= updated``),
  some checked by the older archiver and never queued here (``queued_at``
  NULL), some never checked and not queued (queued then purged);
* ``--queued`` of them (1,000) waiting (``queued_at > coalesce(updated,
  'epoch')``): never checked and queued, queued again after a check, a
  retry due later, started recently, and a few lost (queued and started
  long ago, what the sweep is for).

Then, in one run: ``rows.lost(cutoff, cutoff)`` (the sweep's own call,
cutoff = now - (total_timeout + 30 s)) timed ``--runs`` times after a
warm-up, median and best, with the index; the same after ``DROP INDEX``
(the baseline: the query as it ran before the index); then the index built
again (the time ``db upgrade`` takes on such a table). Each with
EXPLAIN (ANALYZE, BUFFERS)'s plan lines. Also the cost of the index on
writes: ``rows.mark_queued``'s upsert of 10,000 checked rows (a
``ckan archiver update`` chunk) in a transaction rolled back, with and
without it.

    .venv/bin/python bench/bench_sweep.py [--rows 1000000] [--queued 1000] [--runs 15]
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
import bench_queue as bq  # noqa: E402  (bench/ is on sys.path)

DB_PREFIX = "ckan_archiver_bench_sweep_"
REDIS_URL = "redis://127.0.0.1:6379/5"  # not touched; kept off the others' dbs
INDEX = "ix_archival_queued"
MARK = 10_000  # rows of the mark_queued measure
TOTAL_TIMEOUT = 300  # the default ckanext.archiver.total_timeout


def seed_sql(total: int, queued: int) -> list[str]:
    """Rows 1..total. The last ``queued`` rows wait: 50 % never checked,
    30 % queued again after a check, 5 % a retry due in 10 minutes, 10 %
    started a minute ago, 5 % lost (queued and started an hour ago). Of the
    others, 10 % were checked by the older archiver and never queued, 1 %
    never checked nor queued (purged), the rest checked since queued."""
    checked = total - queued
    return [
        f"""INSERT INTO archival (id, resource_id, package_id, url, status_id, is_broken,
                reason, cache_filepath, cache_url, size, mimetype, hash, sha256, etag,
                failure_count, created, updated, last_checked, queued_at, started_at,
                next_check_at, http_status)
            SELECT id, id, 'bench-pkg-' || (i / 5), 'https://data.example.org/files/' || id,
                   0, false, NULL, '/var/archive/' || left(id, 2) || '/' || id || '/data.csv',
                   'https://portal.example.org/archive/' || id || '/data.csv', 10000 + i,
                   'text/csv', md5(id), md5(id) || md5(id), '"' || md5(id) || '"', 0,
                   now() - interval '400 days',
                   CASE WHEN k = 99 THEN NULL ELSE checked END,
                   CASE WHEN k = 99 THEN NULL ELSE checked END,
                   CASE WHEN k >= 89 THEN NULL ELSE checked - interval '5 minutes' END,
                   CASE WHEN k >= 89 THEN NULL ELSE checked - interval '1 minute' END,
                   checked + interval '30 days', 200
            FROM (SELECT i, 'bench-res-' || i AS id, i % 100 AS k,
                         now() - (i % 43200) * interval '1 minute' AS checked
                  FROM generate_series(1, {checked}) i) s""",
        # the waiting rows, by share j of 0..99
        f"""INSERT INTO archival (id, resource_id, package_id, url, failure_count, created,
                updated, last_checked, status_id, queued_at, started_at)
            SELECT id, id, 'bench-pkg-' || (i / 5), 'https://data.example.org/files/' || id, 0,
                   now() - interval '1 day',
                   CASE WHEN j >= 50 AND j < 80 THEN now() - interval '20 days' END,
                   CASE WHEN j >= 50 AND j < 80 THEN now() - interval '20 days' END,
                   CASE WHEN j >= 50 AND j < 80 THEN 0 END,
                   CASE WHEN j < 80 THEN now() - interval '2 minutes'
                        WHEN j < 85 THEN now() + interval '10 minutes'
                        WHEN j < 95 THEN now() - interval '2 minutes'
                        ELSE now() - interval '1 hour' END,
                   CASE WHEN j >= 85 AND j < 95 THEN now() - interval '1 minute'
                        WHEN j >= 95 THEN now() - interval '1 hour' END
            FROM (SELECT i, 'bench-res-' || i AS id, (i - {checked} - 1) * 100 / {queued} AS j
                  FROM generate_series({checked + 1}, {total}) i) s""",
    ]


def plan_lines(conn, statement: str, parameters) -> list[str]:
    cursor = conn.connection.cursor()
    cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
    return [row[0] for row in cursor.fetchall()]


def measure(runs: int, cutoff: datetime.datetime) -> dict:
    from ckan import model

    from ckanext.archiver.model import rows

    seen = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement, parameters))

    rows.lost(cutoff, cutoff)  # warm-up
    model.Session.remove()
    times, found = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        found = len(rows.lost(cutoff, cutoff))
        times.append(time.perf_counter() - t0)
        model.Session.remove()
    import sqlalchemy as sa
    sa.event.listen(model.meta.engine, "before_cursor_execute", record)
    try:
        rows.lost(cutoff, cutoff)
    finally:
        sa.event.remove(model.meta.engine, "before_cursor_execute", record)
        model.Session.remove()
    [(statement, parameters)] = [s for s in seen if "FROM archival" in s[0]]
    with model.meta.engine.connect() as conn:
        plan = plan_lines(conn, statement, parameters)
        conn.rollback()
    return {"median": statistics.median(times), "best": min(times), "found": found,
            "plan": plan}


def mark_cost(engine, runs: int = 3) -> float:
    """Median seconds of mark_queued's upsert of MARK checked rows, rolled back."""
    from ckanext.archiver.model import rows

    ids = [(f"bench-res-{i}", f"bench-pkg-{i // 5}") for i in range(1000, 1000 + MARK)]
    times = []
    for _ in range(runs):
        with engine.connect() as conn:
            trans = conn.begin()
            t0 = time.perf_counter()
            conn.execute(rows._MARK_QUEUED, {"rids": [r for r, _ in ids],
                                             "pids": [p for _, p in ids],
                                             "when": datetime.datetime.utcnow()})
            times.append(time.perf_counter() - t0)
            trans.rollback()
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queued", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    db = f"{DB_PREFIX}{os.getpid()}"
    work = tempfile.mkdtemp(prefix="bench_sweep-")
    created = False
    engine = None
    try:
        bq._as_postgres("createdb", "-O", "ckan_default", "-E", "utf-8", "-T", "template0", db)
        created = True
        db_url = f"postgresql://ckan_default:pass@127.0.0.1/{db}"
        ini = os.path.join(work, "bench.ini")
        bq.write_ini(ini, work, db_url, f"archiver_bench_sweep_{os.getpid()}",
                     **{"ckan.redis.url": REDIS_URL})
        t0 = time.perf_counter()
        bq.run_ckan(ini, "db", "init")
        bq.run_ckan(ini, "db", "upgrade", "-p", "archiver")
        bq.note(f"database {db} made in {time.perf_counter() - t0:.1f} s")

        import sqlalchemy as sa
        from ckan import model
        from ckan.cli import load_config

        load_config(ini)
        engine = sa.create_engine(db_url)
        model.init_model(engine)
        from ckanext.archiver.model import Archival, rounds
        from ckanext.archiver.worker import inflight

        t0 = time.perf_counter()
        with engine.begin() as conn:
            for statement in seed_sql(args.rows, args.queued):
                conn.execute(sa.text(statement))
        seeded = time.perf_counter() - t0
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE archival"))
            count, waiting = conn.execute(sa.text(
                f"SELECT count(*), count(*) FILTER (WHERE {rounds.QUEUED}) FROM archival")).one()
            sizes = conn.execute(sa.text(
                "SELECT pg_total_relation_size('archival'), pg_relation_size('archival'), "
                f"pg_relation_size('{INDEX}')")).one()
        age = TOTAL_TIMEOUT + inflight.TTL  # worker.lost.age() with the defaults
        cutoff = datetime.datetime.utcnow() - datetime.timedelta(seconds=age)

        bq.say(f"bench_sweep: {os.cpu_count()} cores, {count:,} archival rows "
               f"({waiting:,} waiting), seeded in {seeded:.1f} s; table {sizes[1] / 2**20:.0f} MB "
               f"({sizes[0] / 2**20:.0f} MB with its indexes), {INDEX} {sizes[2] / 2**10:.0f} kB; "
               f"sweep cutoff now - {age} s; {args.runs} runs each, one warm-up; load average "
               f"{os.getloadavg()[0]:.2f}")
        with_index = measure(args.runs, cutoff)
        mark_with = mark_cost(engine)
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP INDEX {INDEX}"))
            conn.execute(sa.text("ANALYZE archival"))
        without = measure(args.runs, cutoff)
        mark_without = mark_cost(engine)
        index = next(i for i in Archival.__table__.indexes if i.name == INDEX)
        t0 = time.perf_counter()
        with engine.begin() as conn:
            index.create(conn)
        build = time.perf_counter() - t0

        assert with_index["found"] == without["found"]
        bq.say(f"\nrows.lost(cutoff, cutoff): {with_index['found']} rows found (the lost ones)")
        bq.say(f"{'':24} {'median ms':>10} {'best ms':>9}")
        for name, r in (("with " + INDEX, with_index), ("without (baseline)", without)):
            bq.say(f"{name:24} {r['median'] * 1000:10.2f} {r['best'] * 1000:9.2f}")
        bq.say(f"speed-up (median)        {without['median'] / with_index['median']:10.0f} x")
        for name, r in (("with the index", with_index), ("without", without)):
            bq.say(f"\nEXPLAIN (ANALYZE, BUFFERS), {name}:")
            for line in r["plan"]:
                bq.say("    " + line)
        bq.say(f"\nindex built again (CREATE INDEX, as the migration): {build:.2f} s")
        bq.say(f"mark_queued upsert of {MARK:,} checked rows (rolled back), median of 3: "
               f"with the index {mark_with * 1000:.0f} ms, without {mark_without * 1000:.0f} ms")
        bq.say(f"load average at the end {os.getloadavg()[0]:.2f}")
    except KeyboardInterrupt:
        bq.say("\ninterrupted: cleaning up")
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if engine is not None:
            engine.dispose()
        try:
            from ckan import model
            model.Session.remove()
            model.meta.engine.dispose()
        except Exception:
            pass
        if created:
            bq._drop_db(db)
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
