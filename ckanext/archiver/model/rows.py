"""Queue marks and housekeeping of ``archival`` rows (beside a batch's own
writes in ``checks``): what ``worker.dispatch`` records when it queues, what
``forget`` and the ``clean-*`` commands change, what ``migrate-storage``
switches."""

from __future__ import annotations

import datetime
from typing import Iterable, Optional, Sequence

import sqlalchemy as sa
from ckan import model

from ckanext.archiver.model import Archival, rounds, utcnow

__all__ = ["mark_queued", "mark_started", "lost", "unqueue_all", "forget", "delete_orphans",
           "clear_cache_columns", "active_resource_ids", "named_files", "counts", "store_bytes",
           "named_copies", "local_copies", "switch_copy"]

Item = tuple[str, str]  # (resource_id, package_id)

# Two arrays in one statement: far faster than a many-row VALUES list.
_MARK_QUEUED = sa.text("""
    INSERT INTO archival (id, resource_id, package_id, queued_at, created, failure_count)
    SELECT rid, rid, pid, :when, :when, 0
    FROM unnest(CAST(:rids AS text[]), CAST(:pids AS text[])) AS t(rid, pid)
    ON CONFLICT (resource_id) DO UPDATE
    SET queued_at = excluded.queued_at, package_id = excluded.package_id
""")


def mark_queued(items: Sequence[Item], when: datetime.datetime) -> None:
    """Record queued_at (making rows for never-checked resources), on a
    connection of its own: the caller's transaction is not touched."""
    with model.meta.engine.begin() as conn:
        for start in range(0, len(items), 10000):
            chunk = items[start:start + 10000]
            conn.execute(_MARK_QUEUED, {"rids": [rid for rid, _pid in chunk],
                                        "pids": [pid for _rid, pid in chunk], "when": when})


def mark_started(resource_ids: Sequence[str]) -> None:
    """``started_at`` = now, on a connection of its own (checks granted
    their host's slot: from then on they look started, not waiting)."""
    ids = list(resource_ids)
    if ids:
        table = Archival.__table__
        with model.meta.engine.begin() as conn:
            conn.execute(sa.update(table).where(table.c.resource_id.in_(ids)).values(
                started_at=utcnow()))


def lost(started_before: datetime.datetime,
         queued_before: Optional[datetime.datetime] = None,
         among: Optional[Sequence[str]] = None) -> list[Item]:
    """Rows queued but not checked since, and not started after
    ``started_before`` (a worker may still be on those); with
    ``queued_before``, also queued before then; with ``among``, only
    those of these resources. Reads the partial index ``ix_archival_queued``
    (the queued rows only), not the table."""
    query = model.Session.query(Archival.resource_id, Archival.package_id).filter(
        sa.text(rounds.QUEUED),  # as the index ix_archival_queued says it
        sa.or_(Archival.started_at.is_(None), Archival.started_at < started_before),
    )
    if queued_before is not None:
        query = query.filter(Archival.queued_at < queued_before)
    if among is not None:
        query = query.filter(Archival.resource_id.in_(list(among)))
    return [(rid, pid) for rid, pid in query.all()]


_UNQUEUE = sa.text(f"UPDATE archival SET queued_at = NULL WHERE {rounds.QUEUED}")


def unqueue_all() -> None:
    """Nothing is queued any more (``purge-queues``): else a worker's start
    (``lost``) would queue it all again."""
    with model.meta.engine.begin() as conn:
        conn.execute(_UNQUEUE)


def forget(resource_ids: Sequence[str], busy: Iterable[str] = ()) -> set[str]:
    """Deleted resources: their rows say so and keep no file (history is
    kept). Returns their datasets, except those of ``busy``, that this
    leaves with nothing waiting (``model.rounds``)."""
    table, resource = Archival.__table__, model.Resource.__table__
    with model.meta.engine.begin() as conn:
        packages = {row[0] for row in conn.execute(sa.select(resource.c.package_id).where(
            resource.c.id.in_(list(resource_ids))))} - set(busy)
        rounds.lock_datasets(conn, packages)
        conn.execute(sa.update(table).where(table.c.resource_id.in_(list(resource_ids))).values(
            cache_filepath=None, cache_url=None, reason="Resource deleted", updated=utcnow()))
        return rounds.finished_datasets(conn, packages)


def delete_orphans() -> int:
    """Delete the rows of resources that are no longer active."""
    r = model.Resource.__table__
    a = Archival.__table__
    active = sa.select(r.c.id).where(r.c.state == "active")
    deleted = model.Session.execute(sa.delete(a).where(a.c.resource_id.notin_(active))).rowcount
    model.Session.commit()
    return deleted


def active_resource_ids() -> set[str]:
    """Ids of the active resources of active datasets."""
    return {row[0] for row in model.Session.query(model.Resource.id).join(
        model.Package, model.Package.id == model.Resource.package_id).filter(
        model.Resource.state == "active", model.Package.state == "active")}


def named_files(keep: set[str]) -> dict[str, Optional[str]]:
    """{resource id: the file its row names} of the resources in ``keep``."""
    return {rid: path for rid, path in model.Session.query(
        Archival.resource_id, Archival.cache_filepath) if rid in keep}


def clear_cache_columns(keep: set[str]) -> None:
    """Rows of resources not in ``keep`` no longer point at a file."""
    a = Archival.__table__
    model.Session.execute(sa.update(a).where(a.c.resource_id.notin_(keep)).values(
        cache_filepath=None, cache_url=None))
    model.Session.commit()


def counts() -> tuple[int, int]:
    """(rows, rows with a broken link)."""
    total = model.Session.query(Archival).count()
    broken = model.Session.query(Archival).filter(Archival.is_broken.is_(True)).count()
    return total, broken


def store_bytes() -> int:
    """Bytes of the copies kept in the object store, as the rows say (the
    quota in S3 mode: listing a large bucket per check would be too slow)."""
    a = Archival.__table__
    with model.meta.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(a.c.size), 0)).where(
            a.c.cache_filepath.isnot(None), ~a.c.cache_filepath.startswith("/"))).scalar())


def named_copies() -> set[str]:
    """Every ``cache_filepath`` a row names (the orphan sweep of the store)."""
    a = Archival.__table__
    return {row[0] for row in model.Session.execute(
        sa.select(a.c.cache_filepath).where(a.c.cache_filepath.isnot(None)))}


def local_copies() -> list[tuple[str, str, str, Optional[str], Optional[int]]]:
    """``(resource_id, package_id, cache_filepath, hash, size)`` of the rows
    whose copy is a local file (an absolute path)."""
    a = Archival.__table__
    return [tuple(r) for r in model.Session.execute(sa.select(
        a.c.resource_id, a.c.package_id, a.c.cache_filepath, a.c.hash, a.c.size).where(
        a.c.cache_filepath.startswith("/")).order_by(a.c.resource_id)).all()]


def switch_copy(resource_id: str, path: str, key: str, cache_url: str) -> bool:
    """The row names ``key`` instead of ``path``, only if it still names
    ``path`` (a worker may have archived a newer copy meanwhile)."""
    a = Archival.__table__
    with model.meta.engine.begin() as conn:
        return bool(conn.execute(sa.update(a).where(
            a.c.resource_id == resource_id, a.c.cache_filepath == path).values(
            cache_filepath=key, cache_url=cache_url)).rowcount)
