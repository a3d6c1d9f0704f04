"""The Celery tasks: the only place that joins fetch, storage and model.

``archive_resources(resource_ids, queue, ...)`` archives a batch: it loads the
resources and their previous rows in one query each, downloads concurrently
(threads: the work is network-bound), honours per-host politeness, moves the
files into place, then writes every row (and one history row per check) in
one transaction and tells downstream plugins. It is idempotent and safe to
kill at any line: files are written to a temp file and renamed, rows are
written in one transaction after the files, and a killed worker's message is
delivered again (acks_late, reject_on_worker_lost).

``archive_batch`` does the same without Celery (``ckan archiver update
--now`` and tests).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import logging
import mimetypes
import os
import random
import threading
import urllib.parse
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Optional

import ckan.plugins.toolkit as tk
import redis
import sqlalchemy as sa
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from ckan import model
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ckanext.archiver import celery_app, interfaces, pool
from ckanext.archiver import queue as archiver_queue
from ckanext.archiver import status as st
from ckanext.archiver.engine import freshness, untrusted
from ckanext.archiver.fetch import FetchSettings, Outcome, Previous, fetch, get_session
from ckanext.archiver.model import Archival, ArchivalHistory, utcnow
from ckanext.archiver.politeness import HostLimiter, HostNotAnswering
from ckanext.archiver.storage import Staged, Storage
from ckanext.archiver.worker import site_faults

log = logging.getLogger(__name__)

MAX_DELIVERIES = 3


# ---------------------------------------------------------------------------
# Configuration


def archive_dir() -> str:
    return tk.config.get("ckanext.archiver.archive_dir") or os.path.join(
        tk.config.get("ckan.storage_path") or "/var/lib/ckan", "archiver")


def storage() -> Storage:
    """The process's Storage (kept, so that its count of used bytes for the
    quota is not rebuilt by walking the archive for every batch)."""
    return _storage(archive_dir(), tk.config.get("ckanext.archiver.cache_url_root"),
                    int(tk.config.get("ckanext.archiver.max_archive_bytes") or 0))


@functools.lru_cache(maxsize=8)
def _storage(path: str, cache_url_root: Optional[str], max_archive_bytes: int) -> Storage:
    return Storage(path, cache_url_root, max_archive_bytes)


def user_agent() -> str:
    configured = tk.config.get("ckanext.archiver.user_agent")
    if configured:
        return configured
    return "ckanext-archiver/{} (+{})".format(_version(), tk.config.get("ckan.site_url"))


@functools.lru_cache(maxsize=1)
def _version() -> str:
    try:
        return metadata.version("ckanext-archiver")
    except metadata.PackageNotFoundError:
        return "dev"


def fetch_settings(download: bool = True) -> FetchSettings:
    c = tk.config
    return FetchSettings(
        user_agent=user_agent(),
        max_content_length=c.get("ckanext.archiver.max_content_length"),
        # numbers with a fraction: "float" options need CKAN 2.12, so these
        # are declared untyped and converted here
        connect_timeout=float(c.get("ckanext.archiver.connect_timeout")),
        read_timeout=float(c.get("ckanext.archiver.read_timeout")),
        total_timeout=float(c.get("ckanext.archiver.total_timeout")),
        max_redirects=c.get("ckanext.archiver.max_redirects"),
        verify_https=c.get("ckanext.archiver.verify_https"),
        allow_private_networks=c.get("ckanext.archiver.allow_private_networks"),
        allowed_networks=tuple(c.get("ckanext.archiver.allowed_networks")),
        proxy=c.get("ckanext.archiver.proxy") or None,
        download=download and c.get("ckanext.archiver.download"),
        max_fresh_seconds=c.get("ckanext.archiver.max_fresh_seconds"),
    )


def _limiter() -> HostLimiter:
    return HostLimiter(
        archiver_queue.redis_client(), "archiver:{}".format(tk.config.get("ckan.site_id")),
        int(tk.config.get("ckanext.archiver.per_host_concurrency")),
        float(tk.config.get("ckanext.archiver.per_host_min_interval")),
        lease=float(tk.config.get("ckanext.archiver.total_timeout")) + 30,
        down_after=int(tk.config.get("ckanext.archiver.host_down_after")))


# ---------------------------------------------------------------------------
# One batch


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


@dataclass
class BatchResult:
    recorded: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)
    retry: list[Job] = field(default_factory=list)
    late: list[Job] = field(default_factory=list)  # still downloading (handed off)

    def counts(self) -> dict[str, int]:
        out = {"archived": 0, "unchanged": 0, "broken": 0, "not sure": 0}
        for job in self.recorded:
            sid = job.outcome.status_id
            if sid in (st.UNCHANGED,):
                out["unchanged"] += 1
            elif st.is_broken(sid) is False:
                out["archived"] += 1
            elif st.is_broken(sid):
                out["broken"] += 1
            else:
                out["not sure"] += 1
        return out


def _naive(value: Optional[datetime.datetime]) -> Optional[datetime.datetime]:
    if value is not None and value.tzinfo is not None:
        value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return value


def _aware(value: Optional[datetime.datetime]) -> Optional[datetime.datetime]:
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value


def _load_jobs(resource_ids: list[str]) -> list[Job]:
    r, p = model.Resource, model.Package
    rows = model.Session.query(
        r.id, r.package_id, r.url, r.url_type, r.format, r.last_modified, r.created,
        r.state, p.state,
    ).join(p, p.id == r.package_id).filter(r.id.in_(resource_ids)).all()
    found = {row[0]: row for row in rows}
    previous = {a.resource_id: {c: getattr(a, c) for c in Archival.__table__.columns.keys()}
                for a in model.Session.query(Archival).filter(
                    Archival.resource_id.in_(resource_ids))}
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


def _download_wanted(job: Job) -> bool:
    check_only = {f.lower() for f in tk.config.get("ckanext.archiver.check_only_formats")}
    return (job.format or "").strip().lower() not in check_only


def _previous(job: Job) -> Optional[Previous]:
    prev = job.previous
    if not prev or prev.get("status_id") is None:
        return None
    return Previous(url=prev["url"], etag=prev["etag"], last_modified=prev["last_modified"],
                    sha256=prev["sha256"], fresh_until=_aware(prev["fresh_until"]),
                    cache_filepath=prev["cache_filepath"])


def _cache_url(job: Job, filename: str, store: Storage) -> Optional[str]:
    """``cache_url_root`` when a web server publishes archive_dir, else
    CKAN's own cached-copy view (which checks read permission)."""
    from ckanext.archiver.views import cached_copy_url

    return store.cache_url(job.resource_id, filename) or cached_copy_url(
        job.package_id, job.resource_id, filename)


def _from_upload(job: Job) -> Outcome:
    """An uploaded file is read where CKAN keeps it, not over HTTP."""
    from ckan.lib import uploader

    path = uploader.get_resource_uploader({"id": job.resource_id, "url_type": "upload",
                                           "url": job.url}).get_path(job.resource_id)
    path = str(path)
    if not os.path.isfile(path):
        return Outcome(status_id=st.DOWNLOAD_ERROR, url=job.url or "",
                       reason="The uploaded file is missing from CKAN's storage")
    sha1, sha256, size = hashlib.sha1(), hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha1.update(chunk)
            sha256.update(chunk)
            size += len(chunk)
    job.cache_filepath = path
    job.cache_url = job.url
    mimetype = mimetypes.guess_type(job.url or "")[0]
    return Outcome(status_id=st.ARCHIVED, reason="Uploaded file", url=job.url or "",
                   size=size, hash=sha1.hexdigest(), sha256=sha256.hexdigest(),
                   mimetype=mimetype)


def _run_one(job: Job, store: Storage, limiter: Optional[HostLimiter],
             force: bool) -> None:
    """Check one resource; sets job.outcome (never raises)."""
    tmp_path = None
    try:
        if job.url_type == "upload":
            job.outcome = _from_upload(job)
            return
        settings = fetch_settings(download=_download_wanted(job))
        previous = _previous(job)
        try:
            host = urllib.parse.urlsplit((job.url or "").strip()).hostname
        except ValueError:  # fetch() says what is wrong with the URL
            host = None
        token = None
        fresh = freshness.fresh_until(previous, job.url, download=settings.download,
                                      force=force) is not None
        if limiter is not None and host and not fresh:
            try:
                token = limiter.acquire(
                    host, timeout=float(tk.config.get("ckanext.archiver.host_wait")))
                reason = "Host busy: waited too long for a free slot"
            except redis.exceptions.RedisError:
                token, reason = None, "Queue broker unavailable (per-host limits)"
            except HostNotAnswering:
                job.outcome = Outcome(
                    status_id=st.REQUEST_FAILED, url=job.url or "", transient=True,
                    reason=f"Not tried: {host} timed out on its last {limiter.down_after} "
                           "requests or more (it is tried again once a minute)")
                return
            if token is None:
                job.retry = True
                job.outcome = Outcome(status_id=st.DOWNLOAD_FAILURE, url=job.url or "",
                                      reason=reason, transient=True)
                return
        outcome = None
        try:
            outcome = fetch(job.url or "", settings, previous, tmp_dir=_tmp_dir(store, job),
                            force=force, session=get_session(settings))
        finally:
            if token is not None:
                try:
                    limiter.release(host, token, outcome.host_answered if outcome else None)
                except redis.exceptions.RedisError:  # the lease expires by itself
                    log.warning("Could not release the slot of host %s", host)
        job.outcome = outcome
        tmp_path = outcome.tmp_path
        if tmp_path:
            if not store.has_room(outcome.size or 0, on_disk=True):
                # the site's quota, not the link: a site fault (verdict kept)
                outcome.status_id = st.SYSTEM_ERROR
                outcome.reason = ("System error during archival: " + site_faults.quota_full(
                    archive_dir(), store.max_archive_bytes))
                return
            filename = outcome.filename or "resource"
            job.staged = store.stage(job.resource_id, tmp_path, filename)
            job.cache_filepath = job.staged.path
            tmp_path = None
            job.cache_url = _cache_url(job, os.path.basename(job.cache_filepath), store)
    except SoftTimeLimitExceeded:
        raise
    except Exception as e:  # a bug or the disk: record it, do not crash the batch
        log.exception("Archiving resource %s failed", job.resource_id)
        reason = "System error during archival: " + site_faults.os_error_reason(
            e, archive_dir())
        job.outcome = Outcome(status_id=st.SYSTEM_ERROR, url=job.url or "", reason=reason)
        _discard_file(job, store)
    finally:
        if tmp_path and os.path.exists(tmp_path):
            os.unlink(tmp_path)
        with contextlib.suppress(OSError):
            os.rmdir(_tmp_dir(store, job, create=False))


def _tmp_dir(store: Storage, job: Job, create: bool = True) -> str:
    """A temp folder per resource: what a killed attempt left in it is
    removed when the resource is archived again."""
    path = os.path.join(store.tmp_dir(), hashlib.sha1(job.resource_id.encode()).hexdigest())
    if create:
        if os.path.isdir(path):
            for name in os.listdir(path):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(path, name))
        os.makedirs(path, exist_ok=True)
    return path


def _row_values(job: Job, now: datetime.datetime) -> dict[str, Any]:
    out = job.outcome
    prev = job.previous or {}
    if out.fresh_skip and prev.get("status_id") is not None:
        return _skip_values(job, now)
    if site_faults.is_site_fault(out.status_id):
        return _site_fault_values(job, now)
    broken = st.is_broken(out.status_id)
    values: dict[str, Any] = {
        "resource_id": job.resource_id, "package_id": job.package_id,
        "resource_timestamp": job.timestamp, "status_id": out.status_id,
        "is_broken": broken, "reason": out.reason,
        "url": (job.url or "").strip(), "url_redirected_to": out.url_redirected_to,
        "http_status": out.http_status, "is_web_page": out.is_web_page,
        "updated": now, "last_checked": _naive(out.checked_at) or now,
        "fresh_skip_at": None, "site_fault": None, "site_fault_at": None,
        "moved_to": out.moved_to, "retries": job.attempt,
        "next_check_at": now + datetime.timedelta(
            days=int(tk.config.get("ckanext.archiver.recheck_days"))),
    }
    if out.status_id in (st.ARCHIVED, st.UNCHANGED, st.CHECKED):
        values.update(cache_control=out.cache_control, fresh_until=_naive(out.fresh_until),
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


def _skip_values(job: Job, now: datetime.datetime) -> dict[str, Any]:
    """A freshness skip: the server was not contacted, so the verdict, the
    time of the last real check and of the last success stay."""
    return {"resource_id": job.resource_id, "package_id": job.package_id,
            "updated": now, "fresh_skip_at": now,
            "next_check_at": now + datetime.timedelta(
                days=int(tk.config.get("ckanext.archiver.recheck_days")))}


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


def _save(jobs: list[Job]) -> list[Job]:
    """Write the rows (and a history row each) of ``jobs`` and commit;
    returns the jobs whose rows were committed.

    If the batch cannot be written, its rows are written one by one, each
    in a savepoint: a row that still fails is recorded as a system error
    naming the cause, the others keep their real outcome. New files follow
    their rows: kept once committed (the files they replace removed only
    then), removed when not (the previous file stays). A database that is
    not answering (OperationalError) is raised after rolling back."""
    if not jobs:
        return []
    now = utcnow()
    committed: list[Job] = []
    try:
        try:
            _write_rows(jobs, now)
            model.Session.commit()
            committed = list(jobs)
        except sa.exc.OperationalError:
            model.Session.rollback()
            raise
        except Exception as e:  # noqa: BLE001 - any row's fault: save them one by one
            model.Session.rollback()
            log.warning("Saving a batch of %d results failed (%s): saving them one by one",
                        len(jobs), _cause(e))
            committed = _save_one_by_one(jobs, now)
    finally:
        _settle_files(jobs, committed)
    return committed


def _save_one_by_one(jobs: list[Job], now: datetime.datetime) -> list[Job]:
    committed = []
    for job in jobs:
        try:
            with model.Session.begin_nested():
                _write_rows([job], now)
            committed.append(job)
            continue
        except sa.exc.OperationalError:
            raise
        except Exception as e:  # noqa: BLE001 - this row's fault
            cause = _cause(e)
        log.error("Could not save the result of resource %s (%s): recorded as a system error",
                  job.resource_id, cause)
        _discard_file(job)
        job.outcome = Outcome(
            status_id=st.SYSTEM_ERROR, url=job.url or "", checked_at=job.outcome.checked_at,
            reason=f"System error during archival: the result could not be saved ({cause})")
        try:
            with model.Session.begin_nested():
                _write_rows([job], now)
            committed.append(job)
        except sa.exc.OperationalError:
            raise
        except Exception:  # noqa: BLE001 - logged; the other rows are saved
            log.exception("Could not record the system error of resource %s", job.resource_id)
    model.Session.commit()
    return committed


def _cause(e: BaseException) -> str:
    """``Type: first line of the message`` of a database error, as a
    reason can show it (the driver's error, not SQLAlchemy's wrapper)."""
    orig = getattr(e, "orig", None) or e
    lines = str(orig).strip().splitlines()
    text = f"{type(orig).__name__}: {lines[0]}" if lines else type(orig).__name__
    return untrusted.clean(text, 300) or type(orig).__name__


def _settle_files(jobs: list[Job], committed: list[Job]) -> None:
    """Keep the new files of committed rows (removing what they replace),
    remove those of rows not committed."""
    done = {id(job) for job in committed}
    for job in jobs:
        if job.staged is None:
            continue
        if id(job) in done:
            try:
                storage().keep(job.staged)
            except (OSError, ValueError):  # an orphan: clean-cached removes it
                log.exception("Could not remove the replaced files of resource %s",
                              job.resource_id)
            job.staged = None
        else:
            _discard_file(job)


def _discard_file(job: Job, store: Optional[Storage] = None) -> None:
    """The new file of ``job`` goes; the row keeps naming the previous one."""
    if job.staged is None:
        return
    try:
        (store or storage()).discard(job.staged)
    except (OSError, ValueError):
        log.exception("Could not remove the new file of resource %s", job.resource_id)
    job.staged = None
    job.cache_filepath = job.cache_url = None


def _write_rows(jobs: list[Job], now: datetime.datetime) -> None:
    table = Archival.__table__
    # one statement per set of columns (rows differ: a failure keeps the
    # cached copy's columns), each run for all its rows at once
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for job in jobs:
        values = _row_values(job, now)
        groups.setdefault(tuple(sorted(values)), []).append(
            dict(values, id=job.resource_id, created=now))
    for columns, rows in groups.items():
        stmt = pg_insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=["resource_id"],
            set_={c: stmt.excluded[c] for c in columns if c != "resource_id"})
        model.Session.execute(stmt, rows)
    # one history row per attempt (a freshness skip is no check)
    history = [{
        "resource_id": job.resource_id, "package_id": job.package_id,
        "checked_at": _naive(job.outcome.checked_at) or now,
        "status_id": job.outcome.status_id, "is_broken": st.is_broken(job.outcome.status_id),
        "http_status": job.outcome.http_status, "duration": job.outcome.duration,
        "bytes_received": job.outcome.bytes_received, "attempt": job.attempt,
        "site_fault": site_faults.is_site_fault(job.outcome.status_id),
    } for job in jobs if not job.outcome.fresh_skip]
    if history:
        model.Session.execute(sa.insert(ArchivalHistory.__table__), history)


def _mark_started(jobs: list[Job]) -> None:
    ids = [j.resource_id for j in jobs if j.previous is not None]
    if ids:
        model.Session.query(Archival).filter(Archival.resource_id.in_(ids)).update(
            {"started_at": utcnow()}, synchronize_session=False)
        model.Session.commit()


def _already_done(job: Job, queued_at: Optional[datetime.datetime]) -> bool:
    """Checked since it was queued (a priority check overtook this one)."""
    updated = (job.previous or {}).get("updated")
    return bool(queued_at and updated and updated >= queued_at
                and (job.previous or {}).get("status_id") is not None)


def archive_batch(resource_ids: list[str], queue_name: str = "bulk",
                  queued_at: Optional[str] = None, force: bool = False,
                  attempt: int = 0, polite: bool = True,
                  wait_max: Optional[float] = None,
                  on_late: Optional[Callable[[BatchResult], None]] = None,
                  handed_off_at: Optional[str] = None,
                  max_retries: Optional[int] = None) -> BatchResult:
    """Archive resources now, in this process.

    ``max_retries`` (default: the ``max_retries`` option) caps the attempts
    of a transient failure; ``attempt`` is this attempt's number (0: the
    first of a check, which alone counts in ``failure_count``).

    With ``wait_max``, downloads still running when the batch is mostly done
    (``pool.run_batch``) are handed off: they are in ``result.late``, and
    each is recorded (and announced) on its own thread when it ends, then
    given to ``on_late`` as a BatchResult of its own. ``handed_off_at``
    skips resources recorded since then (a check of handed-off downloads
    whose worker may have died), even with ``force``.
    """
    result = BatchResult()
    queued = datetime.datetime.fromisoformat(queued_at) if queued_at else None
    handed_off = datetime.datetime.fromisoformat(handed_off_at) if handed_off_at else None
    jobs = _load_jobs(list(resource_ids))
    todo = []
    for job in jobs:
        job.attempt = attempt
        if not job.active:
            job.skip_reason = "resource deleted or missing"
        elif _already_done(job, handed_off) or (not force and _already_done(job, queued)):
            job.skip_reason = "already checked since queued"
        (result.skipped if job.skip_reason else todo).append(job)
    # started_at first, then the pending marks go: never a moment when a
    # queued resource looks lost (requeue_lost would queue it twice)
    _mark_started(todo)
    # a check of handed-off downloads holds no pending marks, and without
    # Redis (polite=False: `update --now` with the broker down) there are none
    if handed_off is None and polite:
        archiver_queue.release(resource_ids)
    if not todo:
        return result
    try:
        store = storage()
        store.tmp_dir()
    except OSError as e:
        problem = site_faults.archive_dir_problem(archive_dir(), e)
        reason = f"System error during archival: {problem}"
        log.error("%s: %s", problem, e)
        for job in todo:
            job.outcome = Outcome(status_id=st.SYSTEM_ERROR, url=job.url or "", reason=reason)
        result.recorded = todo
        _save(todo)
        return result
    limiter = _limiter() if polite else None
    if max_retries is None:
        max_retries = int(tk.config.get("ckanext.archiver.max_retries"))
    if len(todo) == 1:
        _run_one(todo[0], store, limiter, force)
        done, late = todo, []
    else:
        late_batch = _LateBatch(queue_name, attempt, max_retries, on_late)
        done, late = pool.run_batch(todo, lambda j: _run_one(j, store, limiter, force),
                                    late_batch.finish, wait_max)
    result.recorded, result.retry = _split(done, attempt, max_retries)
    result.late = late
    # every attempt is recorded, so the page says what happened last; only
    # final results whose rows were committed are announced downstream
    saved = {id(job) for job in _save(result.recorded + result.retry)}
    _notify([job for job in result.recorded if id(job) in saved], queue_name, packages={
        job.package_id for job in result.recorded} - {job.package_id for job in late})
    if late:
        late_batch.handed_off(result.recorded, late)
    return result


def _split(jobs: list[Job], attempt: int, max_retries: int) -> tuple[list[Job], list[Job]]:
    """(final, to retry): a transient failure is tried again while attempts
    are left, and its row says so."""
    final, retry = [], []
    for job in jobs:
        if (job.retry or job.outcome.transient) and attempt < max_retries:
            job.outcome.reason += " (will retry)"
            retry.append(job)
        else:
            final.append(job)
    return final, retry


class _LateBatch:
    """Records the handed-off downloads of one batch, each on its own
    thread when it ends. Once the batch is complete, its datasets that had
    late downloads are announced (those without were announced at once)."""

    def __init__(self, queue_name: str, attempt: int, max_retries: int,
                 on_late: Optional[Callable[[BatchResult], None]]):
        self.queue_name, self.on_late = queue_name, on_late
        self.attempt, self.max_retries = attempt, max_retries
        self.lock = threading.Lock()
        self.final: list[Job] = []  # recorded for good, in time or late
        self.finished = 0
        self.late: Optional[list[Job]] = None  # known once the batch hands off

    def finish(self, job: Job) -> None:
        """One late download ended (on its thread)."""
        try:
            result = BatchResult()
            result.recorded, result.retry = _split([job], self.attempt, self.max_retries)
            saved = {id(j) for j in _save(result.recorded + result.retry)}
            announced = [j for j in result.recorded if id(j) in saved]
            _notify(announced, self.queue_name, packages=set())
            with self.lock:
                self.final += announced
                self.finished += 1
                complete = self.late is not None and self.finished == len(self.late)
            if complete:
                self._announce()
            if self.on_late is not None:
                self.on_late(result)
        finally:
            model.Session.remove()

    def handed_off(self, final: list[Job], late: list[Job]) -> None:
        """The batch returned: ``final`` were recorded, ``late`` run on."""
        with self.lock:
            self.final += final
            self.late = late
            complete = self.finished == len(late)
        if late and complete:
            self._announce()

    def _announce(self) -> None:
        _notify([], self.queue_name, packages={job.package_id for job in self.late},
                complete=self.final)


def _notify(jobs: list[Job], queue_name: str, packages: Optional[set] = None,
            complete: Optional[list[Job]] = None) -> None:
    """Announce ``jobs``, then each dataset of ``packages`` (default: those
    of ``jobs``) whose active resources are all in ``complete`` (default:
    ``jobs``)."""
    for job in jobs:
        interfaces.notify("archived", queue_name, resource_id=job.resource_id,
                          cache_filepath=job.cache_filepath or (job.previous or {}).get(
                              "cache_filepath"))
    complete = jobs if complete is None else complete
    packages = {job.package_id for job in jobs} if packages is None else packages
    done: dict[str, set[str]] = {}
    for job in complete:
        if job.package_id in packages:
            done.setdefault(job.package_id, set()).add(job.resource_id)
    if not done:
        return
    active = model.Session.query(model.Resource.package_id, model.Resource.id).filter(
        model.Resource.package_id.in_(list(done)), model.Resource.state == "active").all()
    expected: dict[str, set[str]] = {}
    for pid, rid in active:
        expected.setdefault(pid, set()).add(rid)
    for pid, rids in done.items():
        if expected.get(pid, set()) <= rids:
            interfaces.notify("package-archived", queue_name, package_id=pid)


def backoff(attempt: int, retry_after: Optional[float] = None) -> int:
    """Seconds before retry number ``attempt + 1``: exponential, with
    jitter, at least the server's Retry-After, at most MAX_COUNTDOWN."""
    base = float(tk.config.get("ckanext.archiver.retry_delay"))
    delay = base * (2 ** attempt) * random.uniform(0.75, 1.25)
    if retry_after:
        delay = max(delay, retry_after)
    return int(min(delay, celery_app.MAX_COUNTDOWN))


# ---------------------------------------------------------------------------
# Celery


_guard_lock = threading.Lock()


def _too_many_deliveries(task_id: Optional[str]) -> bool:
    """A message that killed its worker MAX_DELIVERIES times is not given
    out again (no endless redelivery loop)."""
    if not task_id:
        return False
    key = "archiver:{}:deliveries:{}".format(tk.config.get("ckan.site_id"), task_id)
    r = archiver_queue.redis_client()
    with _guard_lock:
        count = r.incr(key)
        r.expire(key, 24 * 3600)
    return count > MAX_DELIVERIES


def _record_system_error(resource_ids: list[str], reason: str) -> None:
    jobs = [j for j in _load_jobs(resource_ids) if j.active]
    for job in jobs:
        job.outcome = Outcome(status_id=st.SYSTEM_ERROR, url=job.url or "", reason=reason)
    _save(jobs)


def forget(resource_ids: list[str]) -> int:
    """Deleted resources: remove their archived files and say so on their
    rows (history is kept). Returns bytes freed."""
    store = storage()
    freed = sum(store.remove(rid) for rid in resource_ids)
    with model.meta.engine.begin() as conn:
        conn.execute(sa.update(Archival.__table__).where(
            Archival.__table__.c.resource_id.in_(resource_ids)).values(
            cache_filepath=None, cache_url=None, reason="Resource deleted",
            updated=utcnow()))
    return freed


@shared_task(bind=True, name="ckanext.archiver.archive_resources")
def archive_resources(self: Any, resource_ids: list[str], queue: str = "bulk",
                      queued_at: Optional[str] = None, force: bool = False,
                      attempt: int = 0, handed_off_at: Optional[str] = None) -> dict[str, int]:
    """Archive a batch of resources (one, for the priority queue).

    Downloads still running when the batch is mostly done are handed off
    (``pool.run_batch``) and recorded when they end; a check of them is
    queued for when they must have ended (``handed_off_at``), which does
    nothing unless this worker died first."""
    try:
        if _too_many_deliveries(f"{self.request.id}:{self.request.retries}"):
            _record_system_error(resource_ids, "System error during archival: "
                                 "the worker stopped every time it archived this")
            return {"gave up": len(resource_ids)}

        def retry_late(late: BatchResult) -> None:
            _queue_retries(late.retry, queue, force, attempt)

        wait = float(tk.config.get("ckanext.archiver.batch_wait"))
        result = archive_batch(resource_ids, queue, queued_at, force, attempt,
                               wait_max=wait if wait > 0 else None,  # 0: wait for all
                               on_late=retry_late, handed_off_at=handed_off_at)
        _queue_retries(result.retry, queue, force, attempt)
        if result.late:
            archive_resources.apply_async(
                args=[[job.resource_id for job in result.late]],
                kwargs={"queue": queue, "force": force, "attempt": attempt,
                        "handed_off_at": utcnow().isoformat()},
                queue=celery_app.queue_name(queue), countdown=late_check_delay())
        counts = result.counts()
        counts["retrying"] = len(result.retry)
        counts["handed off"] = len(result.late)
        return counts
    except sa.exc.OperationalError as e:  # database unavailable: retry later
        model.Session.rollback()
        max_retries = int(tk.config.get("ckanext.archiver.max_retries"))
        raise self.retry(exc=e, countdown=backoff(self.request.retries),
                         max_retries=max_retries) from e
    finally:
        model.Session.remove()


def _queue_retries(jobs: list[Job], queue: str, force: bool, attempt: int) -> None:
    for job in jobs:
        archive_resources.apply_async(
            args=[[job.resource_id]],
            kwargs={"queue": queue, "queued_at": None, "force": force, "attempt": attempt + 1},
            queue=celery_app.queue_name(queue),
            countdown=backoff(attempt, job.outcome.retry_after if job.outcome else None))


def late_check_delay() -> int:
    """Seconds after which a handed-off download has surely ended (its
    wait for a host slot plus its deadline, and time to record it), at
    most MAX_COUNTDOWN."""
    return int(min(celery_app.download_time_max(tk.config) + 15, celery_app.MAX_COUNTDOWN))


@shared_task(name="ckanext.archiver.archive_package")
def archive_package(package_id: str, queue: str = "bulk") -> int:
    """Queue every active resource of a dataset."""
    try:
        rows = model.Session.query(model.Resource.id).filter(
            model.Resource.package_id == package_id,
            model.Resource.state == "active").all()
        return archiver_queue.enqueue([(r.id, package_id) for r in rows], queue)
    finally:
        model.Session.remove()
