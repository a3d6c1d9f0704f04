"""Rows and SQL of publisher notifications (``ckan archiver notify``): each
organization's notification state (``archiver_org_notify``, table made by the
``e38bdd52cb23`` migration) and the links that became broken or recovered
in a window (from ``archival_history``). Sending is ``worker.digest``."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
from typing import Any, Iterable, Iterator, Optional

import ckan.plugins.toolkit as tk
import sqlalchemy as sa
from ckan import model
from sqlalchemy import Column, types

from ckanext.archiver import status as st
from ckanext.archiver.model import iso, utcnow
from ckanext.archiver.urls import dataset_url

__all__ = ["OrgNotify", "Change", "changes", "admins", "active_organizations", "set_opt_out",
           "run_lock", "remember_windows", "AlreadyRunning"]

_LOCK_KEY = 0x61726368  # pg advisory lock id of a notify run ("arch")


class AlreadyRunning(RuntimeError):
    pass


class OrgNotify(tk.BaseModel):  # type: ignore[misc, valid-type]
    """Notification state of one organization (table made by the
    ``e38bdd52cb23`` migration)."""

    __tablename__ = "archiver_org_notify"

    organization_id = Column(types.UnicodeText, primary_key=True)
    opt_out = Column(types.Boolean, nullable=False, default=False)
    opt_out_by = Column(types.UnicodeText)
    opt_out_changed = Column(types.DateTime)
    last_digest_at = Column(types.DateTime)
    last_webhook_at = Column(types.DateTime)

    @classmethod
    def get(cls, organization_id: str) -> Optional[OrgNotify]:
        return model.Session.get(cls, organization_id)

    @classmethod
    def get_or_new(cls, organization_id: str) -> OrgNotify:
        row = cls.get(organization_id)
        if row is None:
            row = cls(organization_id=organization_id, opt_out=False)
            model.Session.add(row)
        return row

    def as_dict(self) -> dict[str, Any]:
        return {"organization_id": self.organization_id, "opt_out": bool(self.opt_out),
                "opt_out_changed": iso(self.opt_out_changed),
                "last_digest_at": iso(self.last_digest_at),
                "last_webhook_at": iso(self.last_webhook_at)}


@dataclasses.dataclass
class Change:
    """A link that became broken (``broken`` True) or recovered."""

    broken: bool
    resource_id: str
    resource_name: Optional[str]
    url: Optional[str]
    format: Optional[str]
    package_id: str
    package_name: str
    package_title: Optional[str]
    package_type: Optional[str]
    private: bool
    maintainer_email: Optional[str]
    status_id: int
    reason: Optional[str]
    checked_at: datetime.datetime
    first_failure: Optional[datetime.datetime]

    @property
    def status(self) -> Optional[str]:
        return st.text(self.status_id)

    @property
    def dataset_url(self) -> str:
        return dataset_url(self.package_type, self.package_name, qualified=True)

    @property
    def resource_url(self) -> str:
        return dataset_url(self.package_type, self.package_name, self.resource_id,
                           qualified=True)

    def as_dict(self) -> dict[str, Any]:
        return {
            "change": "broken" if self.broken else "recovered",
            "dataset": self.package_name, "dataset_title": self.package_title,
            "dataset_url": self.dataset_url, "private": self.private,
            "resource_id": self.resource_id, "resource_name": self.resource_name,
            "resource_url": self.resource_url, "url": self.url, "format": self.format,
            "status_id": self.status_id, "status": self.status, "reason": self.reason,
            "checked_at": self.checked_at.isoformat(),
            "first_failure": self.first_failure.isoformat() if self.first_failure else None,
        }


_CHANGES_SQL = """
    WITH win AS (
        SELECT DISTINCT ON (h.resource_id)
               h.resource_id, h.is_broken, h.status_id, h.checked_at
        FROM package p
        JOIN resource r ON r.package_id = p.id AND r.state = 'active'
        JOIN archival_history h ON h.resource_id = r.id
        WHERE p.owner_org = :org_id AND p.state = 'active'
          AND h.checked_at > :since AND h.checked_at <= :until
        ORDER BY h.resource_id, h.checked_at DESC, h.id DESC
    )
    SELECT win.resource_id, win.is_broken, win.status_id, win.checked_at,
           r.name AS resource_name, coalesce(a.url, r.url) AS url, r.format,
           p.id AS package_id, p.name AS package_name, p.title AS package_title,
           p.type AS package_type, p.private, p.maintainer_email,
           a.reason, a.first_failure
    FROM win
    JOIN resource r ON r.id = win.resource_id
    JOIN package p ON p.id = r.package_id
    LEFT JOIN archival a ON a.resource_id = win.resource_id
    LEFT JOIN LATERAL (
        SELECT h2.is_broken FROM archival_history h2
        WHERE h2.resource_id = win.resource_id AND h2.checked_at <= :since
        ORDER BY h2.checked_at DESC, h2.id DESC LIMIT 1
    ) before ON TRUE
    WHERE (win.is_broken AND before.is_broken IS NOT TRUE)
       OR (win.is_broken IS FALSE AND before.is_broken)
    ORDER BY lower(coalesce(p.title, p.name)), p.name, r.position, r.id
"""


def changes(org_id: str, since: datetime.datetime,
            until: datetime.datetime) -> list[Change]:
    """Links of the organization's active datasets that became broken or
    recovered between ``since`` (excluded) and ``until`` (naive UTC)."""
    rows = model.Session.execute(sa.text(_CHANGES_SQL),
                                 {"org_id": org_id, "since": since, "until": until})
    return [Change(
        broken=bool(row.is_broken), resource_id=row.resource_id,
        resource_name=row.resource_name, url=row.url, format=row.format,
        package_id=row.package_id, package_name=row.package_name,
        package_title=row.package_title, package_type=row.package_type,
        private=bool(row.private), maintainer_email=row.maintainer_email,
        status_id=row.status_id, reason=row.reason, checked_at=row.checked_at,
        first_failure=row.first_failure) for row in rows]


def admins(org_id: str) -> list[model.User]:
    u, m = model.User, model.Member
    return model.Session.query(u).join(m, m.table_id == u.id).filter(
        m.group_id == org_id, m.table_name == "user", m.state == "active",
        m.capacity == "admin", u.state == "active", u.email.isnot(None),
        u.email != "").order_by(u.name).all()


def active_organizations(ids: Iterable[str] = ()) -> list[model.Group]:
    query = model.Session.query(model.Group).filter(
        model.Group.is_organization.is_(True), model.Group.state == "active")
    ids = list(ids)
    if ids:
        query = query.filter(sa.or_(model.Group.id.in_(ids), model.Group.name.in_(ids)))
    return query.order_by(model.Group.name).all()


@contextlib.contextmanager
def run_lock() -> Iterator[None]:
    """One ``notify`` run at a time (a PostgreSQL advisory lock).

    :raises AlreadyRunning: another run holds it.
    """
    # begin(): a transaction that works alike on SQLAlchemy 1.4 and 2.0
    with model.meta.engine.begin() as lock:
        if not lock.execute(sa.text("SELECT pg_try_advisory_lock(:k)"),
                            {"k": _LOCK_KEY}).scalar():
            raise AlreadyRunning("Another `ckan archiver notify` is running")
        try:
            yield
        finally:
            lock.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})


def remember_windows(org_id: str, state: Optional[OrgNotify], until: datetime.datetime,
                     digest: bool, webhook: bool) -> None:
    """The digest and/or webhook of the organization reported up to ``until``."""
    state = state or OrgNotify.get_or_new(org_id)
    if digest:
        state.last_digest_at = until
    if webhook:
        state.last_webhook_at = until
    model.Session.commit()


def set_opt_out(organization_id: str, opt_out: bool, user_id: Optional[str]) -> OrgNotify:
    """Switch an organization's digest emails off (or on again)."""
    state = OrgNotify.get_or_new(organization_id)
    if bool(state.opt_out) != bool(opt_out) or state.opt_out_changed is None:
        state.opt_out = bool(opt_out)
        state.opt_out_by = user_id
        state.opt_out_changed = utcnow()
        if not opt_out:
            # back on: start from now, not from before the opt-out
            state.last_digest_at = utcnow()
    model.Session.commit()
    return state
