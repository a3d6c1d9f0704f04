"""When is a dataset done? Decides, race-free, which commit of results
ends a dataset's round of checks (the ``package-archived`` event).

A resource is *waiting* while its row was queued after its last result
(``queued_at > updated``): queued, running, handed off, or a retry due
later (its row's ``queued_at`` is set to when the retry is due, in the
transaction that records the attempt). A dataset is done when none of its
active resources is waiting.

Every transaction that writes results (or forgets deleted resources) first
takes a PostgreSQL transaction lock per dataset it touches (in one order,
so no deadlock), writes, then asks which of those datasets have nothing
waiting (only datasets with a resource of the commit still active: a late
result for a deleted resource ends no round). Two workers committing a
dataset's last two results are thus serialised: the second one sees the
first one's row, and only it finds the dataset done. The locks go with the commit.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

import sqlalchemy as sa

__all__ = ["lock_datasets", "finished_datasets", "active_datasets", "QUEUED", "WAITING"]

# SQL condition on an archival row: the resource is waiting. It is also the
# predicate of the partial index ``ix_archival_queued`` (model.Archival):
# a query of the waiting rows must say it like this (or imply it, as
# PostgreSQL sees implication: ``queued_at > updated`` does not), or the
# planner cannot use the index and reads the whole table.
QUEUED = "queued_at IS NOT NULL AND queued_at > coalesce(updated, 'epoch'::timestamp)"
# the same, on the archival row ``a``
WAITING = "a.queued_at IS NOT NULL AND a.queued_at > coalesce(a.updated, 'epoch'::timestamp)"

# one statement, locks taken in the array's (sorted) order
_LOCK = sa.text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k")
_WAITING_DATASETS = sa.text(f"""
    SELECT DISTINCT r.package_id
    FROM resource r JOIN archival a ON a.resource_id = r.id
    WHERE r.package_id = ANY(CAST(:pids AS text[])) AND r.state = 'active' AND {WAITING}
""")


_ACTIVE_DATASETS = sa.text("""
    SELECT DISTINCT package_id FROM resource
    WHERE id = ANY(CAST(:rids AS text[])) AND state = 'active'
""")


def _key(package_id: str) -> int:
    """A signed 64-bit lock key for a dataset."""
    digest = hashlib.sha1(b"ckanext-archiver:dataset:" + package_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_datasets(conn: Any, package_ids: Iterable[str]) -> None:
    """Take the round lock of each dataset in ``conn``'s transaction (a
    Session or a Connection), until it commits or rolls back."""
    keys = sorted({_key(pid) for pid in package_ids if pid})
    if keys:
        conn.execute(_LOCK, {"keys": keys}).fetchall()


def finished_datasets(conn: Any, package_ids: Iterable[str]) -> set[str]:
    """Those of ``package_ids`` with no active resource waiting (call with
    their locks held, after writing)."""
    pids = sorted({pid for pid in package_ids if pid})
    if not pids:
        return set()
    waiting = {row[0] for row in conn.execute(_WAITING_DATASETS, {"pids": pids})}
    return set(pids) - waiting


def active_datasets(conn: Any, resource_ids: Iterable[str]) -> set[str]:
    """Datasets of those of ``resource_ids`` still active: a result written
    for a resource deleted meanwhile ends no round (its deletion did)."""
    rids = sorted(set(resource_ids))
    if not rids:
        return set()
    return {row[0] for row in conn.execute(_ACTIVE_DATASETS, {"rids": rids})}
