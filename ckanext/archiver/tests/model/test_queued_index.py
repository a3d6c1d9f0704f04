"""The partial index of the queued rows (``ix_archival_queued``): made by the
migrations as the model declares it, and read by the lost-check sweep's
query (``rows.lost``) and ``rows.unqueue_all``, which must say their
condition so that PostgreSQL can use it."""

import datetime

import pytest
import sqlalchemy as sa
from ckan import model

from ckanext.archiver.model import Archival, rows, utcnow

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db")

INDEX = "ix_archival_queued"


def _indexdef():
    model.Session.remove()
    with model.meta.engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'archival' AND indexname = :n"),
            {"n": INDEX}).scalar()


def _model_indexdef():
    """The index as the model declares it, made by PostgreSQL on a scratch
    copy of the table, so that both definitions are in PostgreSQL's words."""
    index = next(i for i in Archival.__table__.indexes if i.name == INDEX)
    ddl = str(sa.schema.CreateIndex(index).compile(dialect=model.meta.engine.dialect))
    with model.meta.engine.connect() as conn:
        trans = conn.begin()
        try:
            conn.execute(sa.text("CREATE TEMP TABLE archival_scratch (LIKE archival)"))
            conn.execute(sa.text(ddl.replace(" ON archival ", " ON archival_scratch ")))
            return conn.execute(sa.text(
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'archival_scratch'")).scalar()
        finally:
            trans.rollback()


def test_the_migration_makes_the_index_the_model_declares(migrate_db_for):
    made = _indexdef()
    assert made and "WHERE ((queued_at IS NOT NULL) AND (queued_at > COALESCE(updated" in made
    assert _model_indexdef().replace("archival_scratch", "archival").replace(
        "pg_temp", "public") == made.replace("pg_temp", "public")
    migrate_db_for("archiver", "a4c9e2f71b36", forward=False)
    assert _indexdef() is None
    migrate_db_for("archiver")
    assert _indexdef() == made


def _insert(conn, rid, queued, updated, started):
    conn.execute(sa.text(
        "INSERT INTO archival (id, resource_id, package_id, queued_at, updated, started_at, "
        "failure_count) VALUES (:r, :r, 'p', :q, :u, :s, 0)"),
        {"r": rid, "q": queued, "u": updated, "s": started})


@pytest.fixture
def rows_of_every_kind(with_plugins, clean_db):
    """Rows around the edges of ``lost``'s condition, among 20,000 rows
    checked since they were queued (so that the planner has a choice)."""
    now = utcnow()
    old, recent = now - datetime.timedelta(hours=1), now - datetime.timedelta(seconds=5)
    cases = {
        # name: (queued_at, updated, started_at), and whether lost() finds it
        # when started and queued before now - 10 min
        "never checked, queued long ago": ((old, None, None), True),
        "never checked, started long ago": ((old, None, old), True),
        "queued again after a check": ((old, old - datetime.timedelta(days=1), old), True),
        "started recently": ((old, None, recent), False),
        "queued recently": ((recent, None, None), False),
        "checked since queued": ((old, recent, old), False),
        "checked at the very time it was queued": ((old, old, old), False),
        "never queued, never checked": ((None, None, None), False),
        "never queued, checked": ((None, old, None), False),
    }
    with model.meta.engine.begin() as conn:
        for name, (values, _found) in cases.items():
            _insert(conn, name, *values)
        conn.execute(sa.text("""
            INSERT INTO archival (id, resource_id, package_id, queued_at, updated, started_at,
                                  failure_count)
            SELECT 'checked-' || i, 'checked-' || i, 'p' || (i % 100),
                   now() - interval '2 days', now() - interval '1 day',
                   now() - interval '2 days', 0
            FROM generate_series(1, 20000) i"""))
        conn.execute(sa.text("ANALYZE archival"))
    return {name: found for name, (_values, found) in cases.items()}, now


def test_lost_finds_the_queued_rows_not_started_recently(rows_of_every_kind):
    cases, now = rows_of_every_kind
    cutoff = now - datetime.timedelta(minutes=10)
    found = {rid for rid, _pid in rows.lost(cutoff, cutoff)}
    assert found == {name for name, lost in cases.items() if lost}
    # without queued_before (requeue-lost, a worker's start): queued recently too
    assert {rid for rid, _pid in rows.lost(cutoff)} == found | {"queued recently"}
    assert rows.lost(cutoff, cutoff, among=["queued again after a check", "queued recently"]) \
        == [("queued again after a check", "p")]


def _statements(call):
    """The SQL statements (and their parameters) that ``call()`` sends."""
    seen = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement, parameters))

    sa.event.listen(model.meta.engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        sa.event.remove(model.meta.engine, "before_cursor_execute", record)
    return seen


def _plan(statement, parameters):
    with model.meta.engine.connect() as conn:
        cursor = conn.connection.cursor()
        cursor.execute("EXPLAIN " + statement, parameters)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        conn.rollback()
    return plan


def test_the_sweeps_query_reads_the_index_not_the_table(rows_of_every_kind):
    cutoff = utcnow() - datetime.timedelta(minutes=10)
    [(statement, parameters)] = [
        s for s in _statements(lambda: rows.lost(cutoff, cutoff)) if "FROM archival" in s[0]]
    plan = _plan(statement, parameters)
    assert INDEX in plan, plan
    assert "Seq Scan" not in plan, plan


@pytest.mark.usefixtures("rows_of_every_kind")
def test_unqueue_all_reads_the_index_and_unqueues_only_the_queued():
    plan = _plan(str(rows._UNQUEUE), {})
    assert INDEX in plan and "Seq Scan" not in plan, plan
    rows.unqueue_all()
    model.Session.remove()
    assert rows.lost(utcnow() + datetime.timedelta(days=1)) == []
    with model.meta.engine.connect() as conn:
        kept = conn.execute(sa.text(
            "SELECT count(*) FROM archival WHERE queued_at IS NOT NULL")).scalar()
    # the rows checked since they were queued keep their queued_at
    assert kept == 20000 + 2  # "checked since queued", "... at the very time ..."
