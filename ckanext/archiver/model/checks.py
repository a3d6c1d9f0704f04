"""The rows of a batch: what the worker loads before checking resources
(``load_jobs``) and what it writes after (``save``: the ``archival`` row of
each, and one ``archival_history`` row per check).

A :class:`Job` is one resource of a batch: what the database says about it,
then the engine's :class:`~ckanext.archiver.engine.outcome.Outcome`.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

import sqlalchemy as sa
from ckan import model
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ckanext.archiver import status as st
from ckanext.archiver.engine import site_faults, untrusted
from ckanext.archiver.engine.hostqueue import Grant
from ckanext.archiver.engine.outcome import Outcome, Previous
from ckanext.archiver.engine.storage import Staged
from ckanext.archiver.model import Archival, ArchivalHistory, rounds, utcnow

__all__ = ["Job", "load_jobs", "previous_of", "row_values", "save", "write_rows",
           "mark_started", "naive", "aware"]

log = logging.getLogger(__name__)


@dataclass
class Job:
    resource_id: str
    package_id: Optional[str] = None
    url: Optional[str] = None
    url_type: Optional[str] = None
    format: Optional[str] = None
    timestamp: Optional[datetime.datetime] = None
    active: bool = False
    previous: Optional[dict[str, Any]] = None
    outcome: Optional[Outcome] = None
    cache_filepath: Optional[str] = None
    cache_url: Optional[str] = None
    skip_reason: Optional[str] = None
    retry: bool = False
    attempt: int = 0  # 0: first attempt of this check; n: its n-th retry
    staged: Optional[Staged] = None  # the new file, until its row is committed
    retry_countdown: Optional[int] = None  # seconds, when a retry is queued
    grant: Optional[Grant] = None  # its host's slot, given while it waited
    deferred: bool = False  # waits on its host's list: recorded by whoever runs it
    superseded: bool = False  # its URL changed since: recorded in the history only


def naive(value: Optional[datetime.datetime]) -> Optional[datetime.datetime]:
    if value is not None and value.tzinfo is not None:
        value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return value


def aware(value: Optional[datetime.datetime]) -> Optional[datetime.datetime]:
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value


def load_jobs(resource_ids: list[str]) -> list[Job]:
    r, p = model.Resource, model.Package
    rows = model.Session.query(
        r.id, r.package_id, r.url, r.url_type, r.format, r.last_modified, r.created,
        r.state, p.state,
    ).join(p, p.id == r.package_id).filter(r.id.in_(resource_ids)).all()
    found = {row[0]: row for row in rows}
    table = Archival.__table__  # rows as dicts (no ORM objects: a busy host loads many)
    previous = {row.resource_id: dict(row._mapping) for row in model.Session.execute(
        sa.select(table).where(table.c.resource_id.in_(resource_ids)))}
    jobs = []
    for rid in dict.fromkeys(resource_ids):
        row = found.get(rid)
        job = Job(resource_id=rid, previous=previous.get(rid))
        if row is not None:
            (_, job.package_id, job.url, job.url_type, job.format, last_modified,
             created, state, pkg_state) = row
            job.timestamp = last_modified or created
            job.active = state == "active" and pkg_state == "active"
        jobs.append(job)
    return jobs


def previous_of(job: Job) -> Optional[Previous]:
    prev = job.previous
    if not prev or prev.get("status_id") is None:
        return None
    return Previous(url=prev["url"], etag=prev["etag"], last_modified=prev["last_modified"],
                    sha256=prev["sha256"], fresh_until=aware(prev["fresh_until"]),
                    cache_filepath=prev["cache_filepath"])


def row_values(job: Job, now: datetime.datetime, recheck_days: int) -> dict[str, Any]:
    out = job.outcome
    prev = job.previous or {}
    if out.fresh_skip and prev.get("status_id") is not None:
        return _skip_values(job, now, recheck_days)
    if site_faults.is_site_fault(out.status_id):
        return _site_fault_values(job, now)
    broken = st.is_broken(out.status_id)
    values: dict[str, Any] = {
        "resource_id": job.resource_id, "package_id": job.package_id,
        "resource_timestamp": job.timestamp, "status_id": out.status_id,
        "is_broken": broken, "reason": out.reason,
        "url": (job.url or "").strip(), "url_redirected_to": out.url_redirected_to,
        "http_status": out.http_status, "is_web_page": out.is_web_page,
        "updated": now, "last_checked": naive(out.checked_at) or now,
        "fresh_skip_at": None, "site_fault": None, "site_fault_at": None,
        "moved_to": out.moved_to, "retries": job.attempt,
        "next_check_at": now + datetime.timedelta(
            days=recheck_days),
    }
    if out.status_id in (st.ARCHIVED, st.UNCHANGED, st.CHECKED):
        values.update(cache_control=out.cache_control, fresh_until=naive(out.fresh_until),
                      etag=out.etag, last_modified=out.last_modified)
    if job.cache_filepath:  # a new file was stored
        values.update(cache_filepath=job.cache_filepath, cache_url=job.cache_url,
                      size=out.size, mimetype=out.mimetype, hash=out.hash,
                      sha256=out.sha256)
    elif out.status_id == st.CHECKED:
        values.update(size=out.size, mimetype=out.mimetype)
    elif out.status_id == st.UNCHANGED and out.mimetype and not prev.get("mimetype"):
        values["mimetype"] = out.mimetype
    # else: the cached copy of the last success is kept, as are its hashes
    if broken is False:
        values.update(last_success=now, first_failure=None, failure_count=0)
    else:
        # a check is one attempt and its retries: only its first attempt counts
        count = prev.get("failure_count") or 0
        values.update(first_failure=prev.get("first_failure") or now,
                      failure_count=count + 1 if job.attempt == 0 else max(count, 1))
    # the boundary for untrusted text: nothing a server sent reaches the
    # database unchecked (one NUL byte used to lose the whole batch)
    changed = untrusted.clean_row(values, _FROM_SERVER)
    if changed:
        values["reason"] = untrusted.clean((values["reason"] or "") + untrusted.note(changed),
                                           untrusted.LIMITS["reason"])
    return values


def _skip_values(job: Job, now: datetime.datetime, recheck_days: int) -> dict[str, Any]:
    """A freshness skip: the server was not contacted, so the verdict, the
    time of the last real check and of the last success stay."""
    return {"resource_id": job.resource_id, "package_id": job.package_id,
            "updated": now, "fresh_skip_at": now,
            "next_check_at": now + datetime.timedelta(days=recheck_days)}


def _site_fault_values(job: Job, now: datetime.datetime) -> dict[str, Any]:
    """A fault of the site: the link keeps its verdict; the fault is
    recorded beside it (a row never checked says "system error")."""
    values: dict[str, Any] = {
        "resource_id": job.resource_id, "package_id": job.package_id,
        "updated": now, "site_fault_at": now,
        "site_fault": untrusted.clean(job.outcome.reason, untrusted.LIMITS["reason"]),
    }
    if (job.previous or {}).get("status_id") is None:
        values.update(status_id=st.SYSTEM_ERROR, is_broken=None,
                      reason=site_faults.PUBLIC_REASON,
                      resource_timestamp=job.timestamp,
                      url=(job.url or "").strip(), failure_count=0)
    return values


# columns whose value the server sent (the reason says when one was changed)
_FROM_SERVER = ("etag", "last_modified", "cache_control", "mimetype", "url_redirected_to")


def save(jobs: list[Job], recheck_days: int,
         discard: Optional[Callable[[Job], None]] = None) -> tuple[list[Job], set[str]]:
    """Write the rows (and a history row each) of ``jobs`` and commit;
    returns the jobs whose rows were committed and the datasets this commit
    finished (``model.rounds``: nothing of theirs is waiting any more). The
    round locks of the jobs' datasets are held for the whole transaction.

    If the batch cannot be written, its rows are written one by one, each
    in a savepoint: a row that still fails is recorded as a system error
    naming the cause (``discard(job)`` is called first: its new file goes,
    the row keeps naming the previous one), the others keep their real
    outcome. A database that is not answering (OperationalError) is raised
    after rolling back. The files themselves are the caller's
    (``worker.resource.settle_files``)."""
    if not jobs:
        return [], set()
    now = utcnow()
    try:
        _lock_datasets(jobs)
        write_rows(jobs, now, recheck_days)
        finished = _finished(jobs)
        model.Session.commit()
        return list(jobs), finished
    except sa.exc.OperationalError:
        model.Session.rollback()
        raise
    except Exception as e:  # noqa: BLE001 - any row's fault: save them one by one
        model.Session.rollback()
        log.warning("Saving a batch of %d results failed (%s): saving them one by one",
                    len(jobs), _cause(e))
        return _save_one_by_one(jobs, now, recheck_days, discard)


def _save_one_by_one(jobs: list[Job], now: datetime.datetime, recheck_days: int,
                     discard: Optional[Callable[[Job], None]]) -> tuple[list[Job], set[str]]:
    committed = []
    _lock_datasets(jobs)  # for the whole transaction, not one savepoint
    for job in jobs:
        try:
            with model.Session.begin_nested():
                write_rows([job], now, recheck_days)
            committed.append(job)
            continue
        except sa.exc.OperationalError:
            raise
        except Exception as e:  # noqa: BLE001 - this row's fault
            cause = _cause(e)
        log.error("Could not save the result of resource %s (%s): recorded as a system error",
                  job.resource_id, cause)
        if discard is not None:
            discard(job)
        job.cache_filepath = job.cache_url = None
        job.outcome = Outcome(
            status_id=st.SYSTEM_ERROR, url=job.url or "", checked_at=job.outcome.checked_at,
            reason=f"System error during archival: the result could not be saved ({cause})")
        try:
            with model.Session.begin_nested():
                write_rows([job], now, recheck_days)
            committed.append(job)
        except sa.exc.OperationalError:
            raise
        except Exception:  # noqa: BLE001 - logged; the other rows are saved
            log.exception("Could not record the system error of resource %s", job.resource_id)
    finished = _finished(committed)
    model.Session.commit()
    return committed, finished


def _lock_datasets(jobs: list[Job]) -> None:
    rounds.lock_datasets(model.Session, {job.package_id for job in jobs})


def _finished(jobs: list[Job]) -> set[str]:
    """The datasets of ``jobs`` whose rows, as written in this transaction,
    leave nothing of theirs waiting."""
    if not jobs:
        return set()
    return rounds.finished_datasets(model.Session, rounds.active_datasets(
        model.Session, [job.resource_id for job in jobs]))


def _cause(e: BaseException) -> str:
    """``Type: first line of the message`` of a database error, as a
    reason can show it (the driver's error, not SQLAlchemy's wrapper)."""
    orig = getattr(e, "orig", None) or e
    lines = str(orig).strip().splitlines()
    text = f"{type(orig).__name__}: {lines[0]}" if lines else type(orig).__name__
    return untrusted.clean(text, 300) or type(orig).__name__


def _superseded(jobs: list[Job]) -> set[str]:
    """Resources whose URL is no longer the one their job checked (an edit
    came in meanwhile; its own check is queued on priority). Their rows
    are locked (FOR SHARE) until the caller commits, so an edit cannot
    slip in between this look and the rows written."""
    ids = [job.resource_id for job in jobs if job.url_type != "upload"]
    if not ids:
        return set()
    r = model.Resource.__table__
    current = dict(model.Session.execute(
        sa.select(r.c.id, r.c.url).where(r.c.id.in_(ids)).with_for_update(read=True)).all())
    return {job.resource_id for job in jobs if job.resource_id in current
            and (current[job.resource_id] or "").strip() != (job.url or "").strip()}


_upserts: dict[tuple[str, ...], Any] = {}


def _upsert(columns: tuple[str, ...]) -> Any:
    """The ``INSERT .. ON CONFLICT`` of rows with ``columns`` (built once:
    a check that waited for its host is written with few others)."""
    stmt = _upserts.get(columns)
    if stmt is None:
        stmt = pg_insert(Archival.__table__)
        stmt = _upserts[columns] = stmt.on_conflict_do_update(
            index_elements=["resource_id"],
            set_={c: stmt.excluded[c] for c in columns if c != "resource_id"})
    return stmt


def write_rows(jobs: list[Job], now: datetime.datetime, recheck_days: int) -> None:
    """The statements of ``save``, without the commit. A job whose resource
    has another URL by now (``job.superseded``) gets its history row only."""
    # a result for a URL the resource no longer has goes to the history only
    superseded = _superseded(jobs)
    for job in jobs:
        if job.resource_id in superseded:
            job.superseded = True
    # one statement per set of columns (rows differ: a failure keeps the
    # cached copy's columns), each run for all its rows at once
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for job in jobs:
        if job.superseded:
            continue
        values = row_values(job, now, recheck_days)
        if job.retry_countdown is not None:  # waiting again, until its retry is due
            values["queued_at"] = now + datetime.timedelta(
                seconds=max(job.retry_countdown, 0.001))
        groups.setdefault(tuple(sorted(values)), []).append(
            dict(values, id=job.resource_id, created=now))
    for columns, rows in groups.items():
        model.Session.execute(_upsert(columns), rows)
    # one history row per attempt (a freshness skip is no check)
    history = [{
        "resource_id": job.resource_id, "package_id": job.package_id,
        "checked_at": naive(job.outcome.checked_at) or now,
        "status_id": job.outcome.status_id, "is_broken": st.is_broken(job.outcome.status_id),
        "http_status": job.outcome.http_status, "duration": job.outcome.duration,
        "bytes_received": job.outcome.bytes_received, "attempt": job.attempt,
        "site_fault": site_faults.is_site_fault(job.outcome.status_id),
    } for job in jobs if not job.outcome.fresh_skip]
    if history:
        model.Session.execute(sa.insert(ArchivalHistory.__table__), history)


def mark_started(jobs: list[Job]) -> None:
    ids = [j.resource_id for j in jobs if j.previous is not None]
    if ids:
        model.Session.query(Archival).filter(Archival.resource_id.in_(ids)).update(
            {"started_at": utcnow()}, synchronize_session=False)
        model.Session.commit()
