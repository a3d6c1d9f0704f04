"""A batch of resources: what ``archive_resources`` (and ``ckan archiver
update --now``) runs.

``archive_batch`` loads the resources and their previous rows in one query
each, downloads concurrently (threads of ``engine.pool``: the work is
network-bound), honours per-host politeness, moves the files into place
(``worker.resource``), then writes every row (and one history row per
check) in one transaction (``model.checks``) and tells downstream plugins
(``interfaces``). It is idempotent and safe to kill at any line: files are
written to a temp file and renamed, rows are written in one transaction
after the files, and a killed worker's message is delivered again
(acks_late, reject_on_worker_lost). Each resource is claimed in Redis
(``worker.inflight``) for the time it is archived: a resource another worker
holds is left to it (``BatchResult.busy``, sent again later).
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

from ckan import model

from ckanext.archiver import config, interfaces
from ckanext.archiver import status as st
from ckanext.archiver.engine import pool
from ckanext.archiver.engine.outcome import Outcome
from ckanext.archiver.model import checks
from ckanext.archiver.model.checks import Job
from ckanext.archiver.worker import dispatch
from ckanext.archiver.worker.inflight import Claims
from ckanext.archiver.worker.resource import Run, discard_file, run_one, settle_files
from ckanext.archiver.worker.services import limiter, local_path, storage, store_key

__all__ = ["BatchResult", "archive_batch", "save", "split_retries", "already_done",
           "announce"]

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    recorded: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)
    retry: list[Job] = field(default_factory=list)
    late: list[Job] = field(default_factory=list)  # still downloading (handed off)
    busy: list[Job] = field(default_factory=list)  # being archived by another worker

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


def already_done(job: Job, queued_at: Optional[datetime.datetime]) -> bool:
    """Checked since it was queued (a priority check overtook this one)."""
    updated = (job.previous or {}).get("updated")
    return bool(queued_at and updated and updated >= queued_at
                and (job.previous or {}).get("status_id") is not None)


def archive_batch(resource_ids: list[str], queue_name: str = "bulk",
                  queued_at: Optional[str] = None, force: bool = False,
                  attempt: int = 0, polite: bool = True,
                  wait_max: Optional[float] = None,
                  on_late: Optional[Callable[[BatchResult], None]] = None,
                  handed_off_at: Optional[str] = None) -> BatchResult:
    """Archive resources now, in this process.

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
    options = config.current()
    jobs = checks.load_jobs(list(resource_ids))
    todo = []
    for job in jobs:
        if not job.active:
            job.skip_reason = "resource deleted or missing"
        elif already_done(job, handed_off) or (not force and already_done(job, queued)):
            job.skip_reason = "already checked since queued"
        (result.skipped if job.skip_reason else todo).append(job)
    claims = Claims(options)
    if todo:  # never archived twice at the same time, on any host
        _claimed, busy = claims.claim([job.resource_id for job in todo])
        if busy:
            busy_ids = set(busy)
            result.busy = [job for job in todo if job.resource_id in busy_ids]
            for job in result.busy:
                job.skip_reason = "being archived by another worker"
            result.skipped += result.busy
            todo = [job for job in todo if job.resource_id not in busy_ids]
    try:
        return _archive_claimed(todo, result, claims, options, resource_ids, queue_name,
                                force, attempt, polite, wait_max, on_late, handed_off)
    finally:
        late_ids = {job.resource_id for job in result.late}
        claims.release([rid for rid in list(claims.held) if rid not in late_ids])


def _archive_claimed(todo: list[Job], result: BatchResult, claims: Claims,
                     options: config.Options, resource_ids: list[str], queue_name: str,
                     force: bool, attempt: int, polite: bool, wait_max: Optional[float],
                     on_late: Optional[Callable[[BatchResult], None]],
                     handed_off: Optional[datetime.datetime]) -> BatchResult:
    # started_at first, then the pending marks go: never a moment when a
    # queued resource looks lost (requeue_lost would queue it twice)
    checks.mark_started(todo)
    if handed_off is None:  # a check of handed-off downloads holds no pending marks
        dispatch.release(resource_ids)
    if not todo:
        return result
    try:
        store = storage(options)
        store.tmp_dir()
    except OSError as e:
        detail = os.strerror(e.errno) if e.errno else type(e).__name__
        reason = f"System error during archival: the archive folder is not usable ({detail})"
        log.error("archive_dir %s: %s", options.archive_dir, e)
        for job in todo:
            job.outcome = Outcome(status_id=st.SYSTEM_ERROR, url=job.url or "", reason=reason)
        result.recorded = todo
        checks.save(todo, options.recheck_days)
        return result
    run = Run(options, store, limiter(options) if polite else None, force)
    max_retries = options.max_retries
    if len(todo) == 1:
        run_one(todo[0], run)
        done, late = todo, []
    else:
        late_batch = _LateBatch(queue_name, attempt, max_retries, on_late, run, claims)
        done, late = pool.run_batch(todo, lambda j: run_one(j, run), late_batch.finish,
                                    wait_max)
    result.recorded, result.retry = split_retries(done, attempt, max_retries)
    result.late = late
    # every attempt is recorded, so the page says what happened last; only
    # final results whose rows were committed are announced downstream
    saved = {id(job) for job in save(result.recorded + result.retry, run)}
    announce([job for job in result.recorded if id(job) in saved], queue_name, packages={
        job.package_id for job in result.recorded} - {job.package_id for job in late})
    if late:
        late_batch.handed_off(result.recorded, late)
    return result


def save(jobs: list[Job], run: Run) -> list[Job]:
    """Write the rows of ``jobs`` (``model.checks.save``), then settle their
    new files: kept once their row is committed (the files they replace
    removed only then), removed when not. Returns the committed jobs."""
    committed: list[Job] = []
    try:
        committed = checks.save(jobs, run.options.recheck_days,
                                discard=lambda job: discard_file(job, run.store))
    finally:
        settle_files(jobs, committed, run.store, run.options)
    return committed


def split_retries(jobs: list[Job], attempt: int, max_retries: int) -> tuple[list[Job], list[Job]]:
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
                 on_late: Optional[Callable[[BatchResult], None]], run: Run,
                 claims: Optional[Claims] = None):
        self.queue_name, self.on_late, self.claims = queue_name, on_late, claims
        self.run = run
        self.attempt, self.max_retries = attempt, max_retries
        self.lock = threading.Lock()
        self.final: list[Job] = []  # recorded for good, in time or late
        self.finished = 0
        self.late: Optional[list[Job]] = None  # known once the batch hands off

    def finish(self, job: Job) -> None:
        """One late download ended (on its thread)."""
        try:
            result = BatchResult()
            result.recorded, result.retry = split_retries([job], self.attempt, self.max_retries)
            saved = {id(j) for j in save(result.recorded + result.retry, self.run)}
            if self.claims is not None:
                self.claims.release([job.resource_id])
            announced = [j for j in result.recorded if id(j) in saved]
            announce(announced, self.queue_name, packages=set())
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
        announce([], self.queue_name, packages={job.package_id for job in self.late},
                complete=self.final)


def announce(jobs: list[Job], queue_name: str, packages: Optional[set] = None,
             complete: Optional[list[Job]] = None) -> None:
    """Announce ``jobs``, then each dataset of ``packages`` (default: those
    of ``jobs``) whose active resources are all in ``complete`` (default:
    ``jobs``)."""
    for job in jobs:
        kept = job.cache_filepath or (job.previous or {}).get("cache_filepath")
        # a local file's path (what ckanext-qa opens), or in S3 mode the
        # object's key; the URL serves the copy either way
        interfaces.notify("archived", queue_name, resource_id=job.resource_id,
                          cache_filepath=local_path(kept), cache_key=store_key(kept),
                          cache_url=job.cache_url or (job.previous or {}).get("cache_url"))
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
