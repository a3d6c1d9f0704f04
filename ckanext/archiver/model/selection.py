"""Which resources a command or action means: ids and names of datasets,
resources, organizations and groups, narrowed to stale or broken ones."""

from __future__ import annotations

import datetime
from typing import Iterator, Optional, Sequence

import sqlalchemy as sa
from ckan import model

from ckanext.archiver.model import Archival, utcnow

Item = tuple[str, str]  # (resource_id, package_id)


class UnknownIds(LookupError):
    def __init__(self, ids: Sequence[str]):
        super().__init__(", ".join(ids))
        self.ids = list(ids)


def _base_query() -> sa.Select:
    r, p = model.Resource.__table__, model.Package.__table__
    return (sa.select(r.c.id, r.c.package_id)
            .select_from(r.join(p, p.c.id == r.c.package_id))
            .where(r.c.state == "active", p.c.state == "active"))


def _package_ids_for(ident: str) -> Optional[list[str]]:
    """Dataset ids meant by ``ident`` (a dataset, organization or group),
    None when it is none of those."""
    pkg = model.Package.get(ident)
    if pkg is not None:
        return [pkg.id]
    group = model.Group.get(ident)
    if group is None:
        return None
    if group.is_organization:
        rows = model.Session.query(model.Package.id).filter(
            model.Package.owner_org == group.id)
    else:
        rows = model.Session.query(model.Member.table_id).filter(
            model.Member.group_id == group.id, model.Member.table_name == "package",
            model.Member.state == "active")
    return [row[0] for row in rows]


def select(ids: Sequence[str] = (), stale_days: Optional[float] = None,
           broken_only: bool = False) -> Iterator[Item]:
    """(resource_id, package_id) of the active resources meant. No ids: all
    active datasets, private ones included. Raises UnknownIds."""
    query = _base_query()
    r = model.Resource.__table__
    if ids:
        resource_ids, package_ids, unknown = [], [], []
        for ident in ids:
            if model.Session.get(model.Resource, ident) is not None:
                resource_ids.append(ident)
                continue
            found = _package_ids_for(ident)
            if found is None:
                unknown.append(ident)
            else:
                package_ids += found
        if unknown:
            raise UnknownIds(unknown)
        query = query.where(sa.or_(r.c.id.in_(resource_ids), r.c.package_id.in_(package_ids)))
    if stale_days is not None or broken_only:
        a = Archival.__table__
        query = query.outerjoin(a, a.c.resource_id == r.c.id)
        if stale_days is not None:
            cutoff = utcnow() - datetime.timedelta(days=stale_days)
            query = query.where(sa.or_(a.c.updated.is_(None), a.c.updated < cutoff))
        if broken_only:
            query = query.where(a.c.is_broken.is_(True))
    query = query.order_by(r.c.package_id, r.c.position)
    for row in model.Session.execute(query).yield_per(10000):
        yield row[0], row[1]
