"""Tables of the archiver: ``archival`` (one row per resource, its id the
resource's id), ``archival_history`` (one row per check). The migrations also
make ``archiver_status`` (ids and texts of the statuses, for SQL users); code
reads those from ``status.py``.

Every read and write of the archiver's rows is in this package:
``checks`` (a batch's rows), ``rows`` (queue marks and housekeeping),
``report`` (the broken-links report), ``selection`` (which resources a
command means), ``org_notify`` (digest state and changes), ``figures``
(service figures).

The tables are created by the alembic scripts in ``migration/archiver``
(``ckan db upgrade -p archiver``); these classes only map them.
"""

from __future__ import annotations

import datetime
from typing import Any, Iterable, Optional

import ckan.plugins.toolkit as tk
import sqlalchemy as sa
from ckan import model
from sqlalchemy import Column, types

from ckanext.archiver import status as st
from ckanext.archiver.model import rounds
from ckanext.archiver.model.legacy import Status, broken_enum, init_tables

__all__ = [
    "Archival", "ArchivalHistory", "utcnow", "iso", "active_dataset", "dataset_summary",
    "add_to_package_dict", "remove_from_package_dict", "PUBLIC_COLUMNS",
    # the older archiver's names (model/legacy.py)
    "Status", "broken_enum", "aggregate_archivals_for_a_dataset", "init_tables",
]


def utcnow() -> datetime.datetime:
    """Naive UTC now, as CKAN stores its own timestamps."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def iso(value: Optional[datetime.datetime], *, offset: bool = False) -> Optional[str]:
    """A timestamp as the API and exports show it (None stays None); with
    ``offset``, ISO 8601 with the UTC offset (stored times are naive UTC),
    as the report's exports give it."""
    if not value:
        return None
    if offset and value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.isoformat()


def active_dataset(id_or_name: Optional[str]) -> Optional[model.Package]:
    """The dataset (by id or name) unless it is missing or deleted: the one
    "active dataset or not found" rule of actions, views and builds."""
    package = model.Package.get(id_or_name) if id_or_name else None
    if package is None or package.state == "deleted":
        return None
    return package


def _resource_id(context: Any) -> str:
    """The id of a new row: its resource's id, as every writer makes it
    (``archival`` has one row per resource)."""
    return context.get_current_parameters()["resource_id"]


# Columns shown in package_show / archiver_resource_show, in this order.
# The first block is the older archiver's (compatibility contract).
PUBLIC_COLUMNS = (
    "resource_timestamp", "status_id", "is_broken", "reason",
    "url_redirected_to", "cache_filepath", "cache_url", "size", "mimetype",
    "hash", "etag", "last_modified", "first_failure", "last_success",
    "failure_count", "created", "updated",
    # added by this archiver
    "url", "http_status", "cache_control", "fresh_until", "sha256",
    "is_web_page", "queued_at", "started_at", "next_check_at",
    "last_checked", "fresh_skip_at", "site_fault_at", "moved_to", "retries",
)
# shown to sysadmins only (with cache_filepath): the real cause of a fault
# of the site, which may name its folders
PRIVATE_COLUMNS = ("site_fault",)


class Archival(tk.BaseModel):  # type: ignore[misc, valid-type]
    """The latest archival result of one resource."""

    __tablename__ = "archival"

    id = Column(types.UnicodeText, primary_key=True, default=_resource_id)
    package_id = Column(types.UnicodeText, nullable=False, index=True)
    resource_id = Column(types.UnicodeText, nullable=False, unique=True)
    resource_timestamp = Column(types.DateTime)
    status_id = Column(types.Integer)
    is_broken = Column(types.Boolean)
    reason = Column(types.UnicodeText)
    url_redirected_to = Column(types.UnicodeText)
    cache_filepath = Column(types.UnicodeText)
    cache_url = Column(types.UnicodeText)
    size = Column(types.BigInteger)
    mimetype = Column(types.UnicodeText)
    hash = Column(types.UnicodeText)
    etag = Column(types.UnicodeText)
    last_modified = Column(types.UnicodeText)
    first_failure = Column(types.DateTime)
    last_success = Column(types.DateTime)
    failure_count = Column(types.Integer, default=0)
    created = Column(types.DateTime, default=utcnow)
    updated = Column(types.DateTime)

    url = Column(types.UnicodeText)
    http_status = Column(types.Integer)
    cache_control = Column(types.UnicodeText)
    fresh_until = Column(types.DateTime)
    sha256 = Column(types.UnicodeText)
    is_web_page = Column(types.Boolean)
    queued_at = Column(types.DateTime)
    started_at = Column(types.DateTime)
    next_check_at = Column(types.DateTime)
    last_checked = Column(types.DateTime)
    fresh_skip_at = Column(types.DateTime)
    site_fault = Column(types.UnicodeText)
    site_fault_at = Column(types.DateTime)
    moved_to = Column(types.UnicodeText)
    retries = Column(types.Integer)

    __table_args__ = (
        # the queued rows (rounds.QUEUED): the lost-check sweep's query
        # (rows.lost) reads them and nothing else (migration c5d8f3a0b912)
        sa.Index("ix_archival_queued", "queued_at", postgresql_where=sa.text(rounds.QUEUED)),
    )

    @classmethod
    def get_for_resource(cls, resource_id: str) -> Optional[Archival]:
        return model.Session.query(cls).filter(
            cls.resource_id == resource_id).one_or_none()

    @classmethod
    def get_for_package(cls, package_id: str) -> list[Archival]:
        return model.Session.query(cls).filter(
            cls.package_id == package_id).all()

    @classmethod
    def get_for_packages(
            cls, package_ids: Iterable[str]) -> dict[str, list[Archival]]:
        """Rows of several datasets in one query, keyed by package id."""
        ids = list(package_ids)
        found: dict[str, list[Archival]] = {pid: [] for pid in ids}
        if ids:
            for row in model.Session.query(cls).filter(
                    cls.package_id.in_(ids)):
                found[row.package_id].append(row)
        return found

    @classmethod
    def create(cls, resource_id: str) -> Archival:
        """The resource's row to fill in (older archiver's API): the row
        made when it was queued if there is one (already in the session),
        else a new one for the caller to ``Session.add``."""
        row = cls.get_for_resource(resource_id)
        if row is not None:
            return row
        resource = model.Resource.get(resource_id)
        return cls(id=resource_id, resource_id=resource_id,
                   package_id=resource.package_id if resource else None,
                   failure_count=0, created=utcnow())

    @property
    def status(self) -> Optional[str]:
        return st.text(self.status_id)

    @property
    def is_broken_printable(self) -> str:
        return st.is_broken_printable(self.is_broken)

    def as_dict(self, show_path: bool = True) -> dict[str, Any]:
        """The row as the API shows it (no ids; dates in ISO format).
        Unless ``show_path``, ``cache_filepath`` (the server's path) is left
        out and ``cache_filename`` (its last part) given instead, and so is
        ``site_fault`` (the real cause of a fault of the site)."""
        out: dict[str, Any] = {}
        if not show_path:
            out["cache_filename"] = (self.cache_filepath or "").replace(
                "\\", "/").rsplit("/", 1)[-1] or None
        for name in PUBLIC_COLUMNS:
            if name == "cache_filepath" and not show_path:
                continue
            value = getattr(self, name)
            if isinstance(value, datetime.datetime):
                value = value.isoformat()
            out[name] = value
        if show_path:
            for name in PRIVATE_COLUMNS:
                out[name] = getattr(self, name)
        out["status"] = self.status
        out["is_broken_printable"] = self.is_broken_printable
        return out


def dataset_summary(archivals: Iterable[Archival]) -> dict[str, Any]:
    """Dataset-level ``archiver`` summary: the worst resource's status.

    Broken beats not sure, which beats ok; with no rows, everything is None.
    """
    def badness(a: Archival) -> tuple[int, int]:
        rank = {True: 2, None: 1, False: 0}[a.is_broken]
        return rank, a.status_id or 0

    rows = [a for a in archivals if a.status_id is not None]
    if not rows:
        return {"status_id": None, "status": None, "reason": None,
                "is_broken": None}
    worst = max(rows, key=badness)
    return {"status_id": worst.status_id, "status": worst.status,
            "reason": worst.reason, "is_broken": worst.is_broken}


def aggregate_archivals_for_a_dataset(archivals: Iterable[Archival]) -> dict[str, Any]:
    """The older archiver's name of ``dataset_summary`` (ckanext-qa calls
    it): the same summary as ``package_show`` shows (broken beats not sure,
    which beats ok; rows only queued are left out). The older archiver took
    the highest status id, so a "not sure" (20+) hid a broken link (10..19)."""
    return dataset_summary(archivals)


class ArchivalHistory(tk.BaseModel):  # type: ignore[misc, valid-type]
    """One row per check of a resource, for trends and uptime."""

    __tablename__ = "archival_history"

    id = Column(types.BigInteger, primary_key=True, autoincrement=True)
    resource_id = Column(types.UnicodeText, nullable=False)
    package_id = Column(types.UnicodeText, nullable=False)
    checked_at = Column(types.DateTime, nullable=False, default=utcnow)
    status_id = Column(types.Integer, nullable=False)
    is_broken = Column(types.Boolean)
    http_status = Column(types.Integer)
    duration = Column(types.Float)
    bytes_received = Column(types.BigInteger)
    attempt = Column(types.Integer, nullable=False, default=0)
    site_fault = Column(types.Boolean, nullable=False, default=False)

    __table_args__ = (
        sa.Index("ix_archival_history_resource_checked",
                 "resource_id", "checked_at"),
        sa.Index("ix_archival_history_checked_at", "checked_at"),
    )

    @classmethod
    def delete_older_than(cls, days: int) -> int:
        cutoff = utcnow() - datetime.timedelta(days=days)
        deleted = model.Session.query(cls).filter(
            cls.checked_at < cutoff).delete(synchronize_session=False)
        model.Session.commit()
        return deleted


def add_to_package_dict(pkg_dict: dict[str, Any], show_path: bool = True) -> None:
    """Put the ``archiver`` dicts into a package_show dict, in place: one per
    resource (the row, or nothing for a resource never checked; its
    ``cache_filepath`` only with ``show_path``) and the dataset-level
    summary. One query per dataset, whatever its size."""
    rows = {a.resource_id: a for a in Archival.get_for_package(
        pkg_dict["id"])}
    current = []
    for res in pkg_dict.get("resources") or []:
        row = rows.get(res.get("id"))
        if row is not None:
            res["archiver"] = row.as_dict(show_path)
            current.append(row)
    pkg_dict["archiver"] = dataset_summary(current)


def remove_from_package_dict(pkg_dict: dict[str, Any]) -> None:
    """Undo ``add_to_package_dict`` (archival data is not indexed: it
    changes far more often than the metadata)."""
    pkg_dict.pop("archiver", None)
    for res in pkg_dict.get("resources") or []:
        if isinstance(res, dict):
            res.pop("archiver", None)
