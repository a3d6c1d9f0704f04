"""Migrations up, down, and in place over the older archiver's table."""

import pytest
import sqlalchemy as sa
from ckan import model

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db")

LEGACY_DDL = """
CREATE TABLE archival (
    id text PRIMARY KEY, package_id text NOT NULL, resource_id text NOT NULL,
    resource_timestamp timestamp, status_id integer, is_broken boolean,
    reason text, url_redirected_to text, cache_filepath text, cache_url text,
    size bigint, mimetype text, hash text, etag text, last_modified text,
    first_failure timestamp, last_success timestamp, failure_count integer,
    created timestamp, updated timestamp);
CREATE INDEX ix_archival_package_id ON archival (package_id);
CREATE INDEX ix_archival_resource_id ON archival (resource_id);
"""


def _tables():
    model.Session.remove()
    return set(sa.inspect(model.meta.engine).get_table_names())


def _columns(table):
    return {c["name"] for c in sa.inspect(model.meta.engine).get_columns(table)}


def test_down_and_up(migrate_db_for):
    assert {"archival", "archival_history", "archiver_status"} <= _tables()
    migrate_db_for("archiver", "6a1f0c2b7d10", forward=False)
    tables = _tables()
    assert "archival" in tables and "archival_history" not in tables
    assert "sha256" not in _columns("archival")
    migrate_db_for("archiver", "base", forward=False)
    assert not {"archival", "archival_history", "archiver_status"} & _tables()
    migrate_db_for("archiver")
    assert {"archival", "archival_history", "archiver_status"} <= _tables()
    assert {"sha256", "next_check_at", "http_status"} <= _columns("archival")


def test_upgrade_in_place_keeps_older_archiver_rows(migrate_db_for):
    migrate_db_for("archiver", "base", forward=False)
    with model.meta.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS archiver_alembic_version"))
        for stmt in LEGACY_DDL.split(";"):
            if stmt.strip():
                conn.execute(sa.text(stmt))
        conn.execute(sa.text("""
            INSERT INTO archival (id, package_id, resource_id, status_id, is_broken,
                                  reason, hash, failure_count, created, updated) VALUES
            ('a1', 'p1', 'r1', 0, false, 'ok', 'sha1-one', 0, now(), now()),
            ('a2', 'p1', 'r2', 12, true, 'Server returned 404', NULL, 4, now(), now()),
            ('a3', 'p1', 'r2', 12, true, 'older dup', NULL, 1, now(), now() - interval '1d'),
            ('a4', 'p2', 'r3', 21, NULL, 'big', NULL, NULL, now(), NULL)
        """))
    migrate_db_for("archiver")
    with model.meta.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT id, resource_id, reason, hash, failure_count, sha256 "
            "FROM archival ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [
        ("a1", "r1", "ok", "sha1-one", 0, None),
        ("a2", "r2", "Server returned 404", None, 4, None),
        ("a4", "r3", "big", None, 0, None),
    ]
    indexes = {i["name"]: i for i in sa.inspect(model.meta.engine).get_indexes("archival")}
    assert indexes["ix_archival_resource_id"]["unique"]


def test_checks_migration_recounts_failures_and_restores_verdicts(migrate_db_for):
    """a4c9e2f71b36: failure_count becomes failed checks (attempts less than
    20 minutes apart are one check); a status 23 row gets back the verdict
    of its last real check and keeps the system error as its site fault."""
    migrate_db_for("archiver", "e38bdd52cb23", forward=False)
    assert "site_fault" not in _columns("archival")
    with model.meta.engine.begin() as conn:
        conn.execute(sa.text("""
            INSERT INTO archival (id, package_id, resource_id, status_id, is_broken, reason,
                                  first_failure, last_success, failure_count, created, updated)
            VALUES
            ('f', 'p', 'r-flaky', 12, true, 'Server returned 500', now() - interval '2 days',
             now() - interval '3 days', 6, now(), now()),
            ('n', 'p', 'r-nohist', 12, true, 'Server returned 404', now(), NULL, 4, now(), now()),
            ('s', 'p', 'r-sys', 23, NULL, 'System error during archival: the archive folder '
             'is not usable (File exists)', NULL, now() - interval '1 day', 1, now(), now())
        """))
        # two checks of three attempts each (a retry 30 s and 90 s later),
        # one success before them (not counted), and a check of r-sys
        conn.execute(sa.text("""
            INSERT INTO archival_history (resource_id, package_id, checked_at, status_id,
                                          is_broken)
            SELECT 'r-flaky', 'p', t, 12, true FROM (VALUES
                (now() - interval '2 days'), (now() - interval '2 days' + interval '30 s'),
                (now() - interval '2 days' + interval '90 s'),
                (now() - interval '1 day'), (now() - interval '1 day' + interval '30 s'),
                (now() - interval '1 day' + interval '90 s')) AS v(t)
            UNION ALL SELECT 'r-flaky', 'p', now() - interval '3 days', 0, false
            UNION ALL SELECT 'r-sys', 'p', now() - interval '1 day', 0, false
            UNION ALL SELECT 'r-sys', 'p', now(), 23, NULL
        """))
    migrate_db_for("archiver")
    with model.meta.engine.connect() as conn:
        rows = {r.resource_id: r for r in conn.execute(sa.text(
            "SELECT resource_id, status_id, is_broken, reason, failure_count, site_fault, "
            "site_fault_at, last_checked, updated FROM archival"))}
        faults = conn.execute(sa.text(
            "SELECT count(*) FROM archival_history WHERE site_fault")).scalar()
    assert rows["r-flaky"].failure_count == 2
    assert rows["r-nohist"].failure_count == 4  # no history: kept
    sys_row = rows["r-sys"]
    assert (sys_row.status_id, sys_row.is_broken, sys_row.failure_count) == (0, False, 0)
    assert sys_row.site_fault.endswith("(File exists)") and sys_row.site_fault_at
    assert sys_row.last_checked < sys_row.updated
    assert faults == 1
    migrate_db_for("archiver", "e38bdd52cb23", forward=False)  # and back
    assert "site_fault" not in _columns("archival")
    migrate_db_for("archiver")
