"""What the operator's commands read from the ``archival`` rows: a run's
progress, cached files and their sizes, rows too large for a new limit,
rows of resources that are gone (``status``, ``view``, ``size-report``,
``clean-cached --larger-than``, ``orphans``, ``update --wait``)."""

from __future__ import annotations

from typing import Any, Sequence

import sqlalchemy as sa
from ckan import model

from ckanext.archiver.model import Archival

__all__ = ["progress", "checked_counts", "cached_totals", "largest", "by_type",
           "larger_than", "orphan_rows", "cached_paths", "delete_rows"]

_PROGRESS = sa.text("""
    SELECT count(*) AS done, count(*) FILTER (WHERE is_broken) AS broken
    FROM archival
    WHERE resource_id = ANY(CAST(:ids AS text[]))
      AND updated IS NOT NULL AND (queued_at IS NULL OR updated >= queued_at)
""")


def progress(resource_ids: Sequence[str]) -> tuple[int, int]:
    """(checked since queued, broken among them) of ``resource_ids``; ends
    the transaction, so that the next call sees a fresh snapshot."""
    done = broken = 0
    for start in range(0, len(resource_ids), 50000):
        row = model.Session.execute(
            _PROGRESS, {"ids": list(resource_ids[start:start + 50000])}).one()
        done += row.done
        broken += row.broken
    model.Session.rollback()
    return done, broken


def checked_counts() -> tuple[int, int]:
    """(checked resources, broken links)."""
    total = model.Session.query(Archival).filter(Archival.status_id.isnot(None)).count()
    broken = model.Session.query(Archival).filter(Archival.is_broken.is_(True)).count()
    return total, broken


def cached_totals() -> tuple[int, int]:
    """(cached files, their bytes) as the rows record them."""
    files, size = model.Session.query(
        sa.func.count(Archival.id), sa.func.coalesce(sa.func.sum(Archival.size), 0),
    ).filter(Archival.cache_filepath.isnot(None)).one()
    return int(files), int(size)


def largest(limit: int) -> list[Any]:
    """The ``limit`` largest cached files: (resource_id, size, mimetype,
    dataset name, url)."""
    a, r = Archival.__table__, model.Resource.__table__
    p = model.Package.__table__
    return model.Session.execute(
        sa.select(a.c.resource_id, a.c.size, a.c.mimetype, p.c.name, r.c.url)
        .select_from(a.join(r, r.c.id == a.c.resource_id)
                     .join(p, p.c.id == r.c.package_id))
        .where(a.c.cache_filepath.isnot(None))
        .order_by(a.c.size.desc().nulls_last()).limit(limit)).all()


def by_type() -> list[Any]:
    """(mimetype, files, bytes) of the cached files, largest total first."""
    a = Archival.__table__
    mimetype = sa.func.coalesce(a.c.mimetype, "unknown")
    total = sa.func.coalesce(sa.func.sum(a.c.size), 0)
    return model.Session.execute(
        sa.select(mimetype, sa.func.count(), total)
        .where(a.c.cache_filepath.isnot(None)).group_by(mimetype)
        .order_by(total.desc())).all()


def larger_than(limit: int) -> list[Archival]:
    """Archival rows whose cached file is over ``limit`` bytes."""
    return model.Session.query(Archival).filter(
        Archival.cache_filepath.isnot(None), Archival.size > limit).all()


def orphan_rows() -> list[Any]:
    """(resource_id, package_id, cache_filepath) of the rows of deleted or
    missing resources (or datasets)."""
    a, r = Archival.__table__, model.Resource.__table__
    p = model.Package.__table__
    active = (sa.select(r.c.id).select_from(r.join(p, p.c.id == r.c.package_id))
              .where(r.c.state == "active", p.c.state == "active"))
    return model.Session.execute(
        sa.select(a.c.resource_id, a.c.package_id, a.c.cache_filepath)
        .where(a.c.resource_id.notin_(active))).all()


def cached_paths() -> list[str]:
    """Every ``cache_filepath`` a row names."""
    a = Archival.__table__
    return [path for (path,) in model.Session.execute(
        sa.select(a.c.cache_filepath).where(a.c.cache_filepath.isnot(None)))]


def delete_rows(resource_ids: Sequence[str]) -> None:
    """Delete the archival rows of ``resource_ids`` (and commit)."""
    a = Archival.__table__
    for start in range(0, len(resource_ids), 10000):
        model.Session.execute(sa.delete(a).where(
            a.c.resource_id.in_(list(resource_ids[start:start + 10000]))))
    model.Session.commit()
