#!/usr/bin/env python
"""Benchmark of the broken-links report (views.py + model/report.py).

Prints numbers; not a test. Writes, with plain bulk SQL (``INSERT ...
SELECT generate_series``), into the database of ``--ini`` (dev.ini by
default):

* 500 organizations, 20,000 datasets (every tenth private), 100,000
  resources, one ``archival`` row each (10% broken, a few not sure, some web
  pages);
* ``archival_history``: one check a week per resource over 98 days
  (~1.4 million rows), some links broken for a while then fixed;
* a member of three organizations and a sysadmin, with API tokens.

then asks the CKAN app (Flask test client, whole request: auth, SQL,
template) for the index and an organization page as an anonymous reader, a
member and a sysadmin, and prints the median of ``--runs`` requests after
one warm-up. Every row it wrote (ids starting ``bench-``) is deleted at the
end, also on failure (``--keep`` keeps them for a look in the browser).

    .venv/bin/python bench/bench_report.py [--ini dev.ini] [--runs 7]

Targets: index <= 500 ms, organization page <= 300 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

ORGS = 500
DATASETS = 20_000
RESOURCES = 100_000
WEEKS = 14
TARGETS = {"index": 0.500, "organization": 0.300}

SEED_SQL = [
    # resource number i -> dataset, and whether its link is broken: every
    # organization has its own share of broken links (0 to 19%)
    f"""CREATE TEMP TABLE bench_i ON COMMIT DROP AS
        SELECT i, (i - 1) % {DATASETS} + 1 AS p,
               (i / {ORGS}) % 100 < (i % {ORGS}) % 20 AS broken,
               (i / {ORGS}) % 100 = 99 AS unsure,
               (i * 37) % 90 AS first_days
        FROM generate_series(1, {RESOURCES}) i""",
    # organizations
    f"""INSERT INTO "group" (id, name, title, type, is_organization, state,
            approval_status, created, description, image_url)
        SELECT 'bench-org-' || i, 'bench-org-' || i, 'Bench organization ' || i,
               'organization', true, 'active', 'approved', now(), '', ''
        FROM generate_series(1, {ORGS}) i""",
    # datasets: every tenth private
    f"""INSERT INTO package (id, name, title, state, type, owner_org, private,
            metadata_created, metadata_modified, license_id, extras)
        SELECT 'bench-pkg-' || i, 'bench-pkg-' || i, 'Bench dataset ' || i,
               'active', 'dataset', 'bench-org-' || (i % {ORGS} + 1),
               (i / {ORGS}) % 10 = 0, now(), now(), 'cc-by', '{{}}'::jsonb
        FROM generate_series(1, {DATASETS}) i""",
    # five resources a dataset
    """INSERT INTO resource (id, package_id, url, format, name, state,
            position, created, url_type, extras)
        SELECT 'bench-res-' || i, 'bench-pkg-' || p,
               'http://data.example.org/files/' || i || '/data.csv',
               (ARRAY['CSV', 'XLS', 'JSON', 'HTML', 'PDF'])[i % 5 + 1],
               'Resource ' || i, 'active', i % 5, now(), '', '{}'
        FROM bench_i""",
    # the latest result of each (HTML links go to web pages)
    """INSERT INTO archival (id, package_id, resource_id, status_id,
            is_broken, reason, url, first_failure, last_success,
            failure_count, created, updated, is_web_page, http_status,
            mimetype, size)
        SELECT 'bench-arc-' || i, 'bench-pkg-' || p, 'bench-res-' || i,
               CASE WHEN broken THEN 12 WHEN unsure THEN 22 ELSE 0 END,
               CASE WHEN broken THEN true WHEN unsure THEN NULL ELSE false END,
               CASE WHEN broken THEN 'Server returned 404 Not Found'
                    WHEN unsure THEN 'Download failure' END,
               'http://data.example.org/files/' || i || '/data.csv',
               CASE WHEN broken THEN now() - first_days * interval '1 day' END,
               CASE WHEN broken THEN now() - (first_days + 7) * interval '1 day'
                    ELSE now() - (i % 7) * interval '1 day' END,
               CASE WHEN broken THEN first_days / 7 + 1 ELSE 0 END,
               now() - interval '200 days', now() - (i % 7) * interval '1 day',
               i % 5 = 3, CASE WHEN broken THEN 404 ELSE 200 END,
               'text/csv', 1000 + i
        FROM bench_i""",
    # weekly checks over 98 days: broken since the first failure for the
    # links broken now, and a wave of links that were broken for a month
    f"""INSERT INTO archival_history (resource_id, package_id, checked_at,
            status_id, is_broken, http_status, duration, bytes_received)
        SELECT 'bench-res-' || i, 'bench-pkg-' || p,
               now() - ((i % 7) + 7 * k) * interval '1 day',
               CASE WHEN b THEN 12 ELSE 0 END, b,
               CASE WHEN b THEN 404 ELSE 200 END, 0.1, 1000
        FROM (SELECT i, p, k,
                     (broken AND (i % 7) + 7 * k <= first_days)
                     OR ((i / {ORGS}) % 50 = 7 AND k BETWEEN 6 AND 9) AS b
              FROM bench_i, generate_series(0, {WEEKS - 1}) k) s""",
]

CLEAN_SQL = [
    "DELETE FROM archival_history WHERE resource_id LIKE 'bench-res-%'",
    "DELETE FROM archival WHERE resource_id LIKE 'bench-res-%'",
    "DELETE FROM resource WHERE id LIKE 'bench-res-%'",
    "DELETE FROM member WHERE id LIKE 'bench-%'",
    "DELETE FROM package WHERE id LIKE 'bench-pkg-%'",
    """DELETE FROM "group" WHERE id LIKE 'bench-org-%'""",
    "DELETE FROM api_token WHERE user_id LIKE 'bench-user-%'",
    """DELETE FROM "user" WHERE id LIKE 'bench-user-%'""",
]


def _engine(config):
    import sqlalchemy as sa
    return sa.create_engine(config["sqlalchemy.url"])


def seed(engine) -> float:
    import sqlalchemy as sa
    started = time.perf_counter()
    with engine.begin() as conn:
        for sql in CLEAN_SQL:
            conn.execute(sa.text(sql))
        for sql in SEED_SQL:
            conn.execute(sa.text(sql))
        for name, sysadmin in (("member", False), ("sysadmin", True)):
            conn.execute(sa.text(
                """INSERT INTO "user" (id, name, email, state, sysadmin,
                       created, password)
                   VALUES (:id, :id, :id || '@example.org', 'active', :sa,
                           now(), '')"""),
                {"id": f"bench-user-{name}", "sa": sysadmin})
        for n in (1, 2, 3):
            conn.execute(sa.text(
                """INSERT INTO member (id, table_id, table_name, capacity,
                       group_id, state)
                   VALUES (:id, 'bench-user-member', 'user', 'member', :org,
                           'active')"""),
                {"id": f"bench-member-{n}", "org": f"bench-org-{n}"})
    with engine.connect().execution_options(
            isolation_level="AUTOCOMMIT") as conn:
        for table in ("archival", "archival_history", "resource", "package",
                      '"group"', "member"):
            conn.execute(sa.text(f"VACUUM ANALYZE {table}"))
    return time.perf_counter() - started


def clean(engine) -> None:
    import sqlalchemy as sa
    with engine.begin() as conn:
        for sql in CLEAN_SQL:
            conn.execute(sa.text(sql))


def _tokens(flask_app) -> dict[str, str]:
    import ckan.plugins.toolkit as tk
    tokens = {}
    with flask_app.test_request_context():
        for name in ("member", "sysadmin"):
            tokens[name] = tk.get_action("api_token_create")(
                {"ignore_auth": True, "user": f"bench-user-{name}"},
                {"user": f"bench-user-{name}", "name": "bench"})["token"]
    return tokens


def measure(client, url: str, headers: dict, runs: int,
            base_url: str) -> tuple[float, int, int]:
    def one() -> tuple[float, int, int]:
        started = time.perf_counter()
        res = client.get(url, headers=headers, base_url=base_url)
        body = res.get_data()
        return time.perf_counter() - started, res.status_code, len(body)

    one()  # warm-up (template compilation, connection pool)
    results = [one() for _ in range(runs)]
    status = {r[1] for r in results}
    assert status == {200}, (url, status)
    return statistics.median(r[0] for r in results), results[0][2], len(results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ini", default=os.path.join(ROOT, "dev.ini"))
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--keep", action="store_true",
                        help="keep the bench rows (delete them later with "
                             "--clean-only)")
    parser.add_argument("--clean-only", action="store_true")
    args = parser.parse_args()

    from ckan.cli import load_config
    from ckan.config.middleware import make_app

    config = load_config(args.ini)
    engine = _engine(config)
    if args.clean_only:
        clean(engine)
        print("bench rows deleted")
        return 0
    app = make_app(config)
    flask_app = app._wsgi_app
    base_url = config["ckan.site_url"]

    import sqlalchemy as sa
    with engine.connect() as conn:
        missing = {"ix_archival_history_broken", "ix_archiver_resource_active",
                   "ix_archiver_package_owner_org"} - set(conn.execute(sa.text(
                       "SELECT indexname FROM pg_indexes")).scalars())
    if missing:
        print(f"WARNING: indexes missing ({', '.join(sorted(missing))}): "
              f"run `ckan -c {args.ini} db upgrade -p archiver` first")
    print("load average before: {:.2f} {:.2f} {:.2f} ({} CPUs)".format(
        *os.getloadavg(), os.cpu_count()))
    try:
        took = seed(engine)
        with engine.connect() as conn:
            counts = {t: conn.execute(sa.text(
                f"SELECT count(*) FROM {t}")).scalar_one()
                for t in ("archival", "archival_history", "package")}
        print(f"seeded in {took:.1f} s: {counts['archival']:,} archival rows, "
              f"{counts['archival_history']:,} history rows, "
              f"{counts['package']:,} datasets, {ORGS} organizations")

        tokens = _tokens(flask_app)
        client = flask_app.test_client()
        readers = {"anonymous": {},
                   "member": {"Authorization": tokens["member"]},
                   "sysadmin": {"Authorization": tokens["sysadmin"]}}
        pages = [
            ("index", "/report/broken-links"),
            ("organization", "/report/broken-links/bench-org-20"),
            ("organization p2", "/report/broken-links/bench-org-20?page=2"
                                "&sort=-failure_count"),
            ("organization csv", "/report/broken-links/bench-org-20?format=csv"),
            ("index csv", "/report/broken-links?format=csv"),
        ]
        print(f"median of {args.runs} requests after a warm-up "
              "(Flask test client, whole request)")
        print(f"{'page':<18} {'reader':<10} {'median ms':>10} {'bytes':>9}  target")
        failed = False
        for label, url in pages:
            for reader, headers in readers.items():
                median, size, _n = measure(client, url, headers, args.runs,
                                           base_url)
                target = TARGETS.get(label)
                verdict = ""
                if target:
                    ok = median <= target
                    failed |= not ok
                    verdict = f"<= {target * 1000:.0f} ms " + (
                        "ok" if ok else "MISSED")
                print(f"{label:<18} {reader:<10} {median * 1000:>10.1f} "
                      f"{size:>9,}  {verdict}")
        print("load average after: {:.2f} {:.2f} {:.2f}".format(
            *os.getloadavg()))
        return 1 if failed else 0
    finally:
        if args.keep:
            print("bench rows kept (--clean-only deletes them)")
        else:
            clean(engine)
            print("bench rows deleted")


if __name__ == "__main__":
    sys.exit(main())
