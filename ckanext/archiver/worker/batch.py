"""A batch of resources: what ``archive_resources`` (and ``ckan archiver
update --now``) runs.

``archive_batch`` loads the resources and their previous rows in one query
each, downloads concurrently (threads of ``engine.pool``: the work is
network-bound), honours per-host politeness, moves the files into place
(``worker.resource``), then writes every row (and one history row per
check) in one transaction (``model.checks``) and tells downstream plugins
(``interfaces``: ``archived`` for each final result, ``package-archived``
for the datasets whose round that commit ended, see ``model.rounds``). It
is idempotent and safe to kill at any line: files are written to a temp
file and renamed, rows are written in one transaction after the files, and
a killed worker's message is delivered again (acks_late,
reject_on_worker_lost).

A worker's batch (``defer``) never waits for a busy host: such a check goes
on the host's waiting list (``worker.hosts``), and the process whose slot on
the host comes free next runs it as a batch of its own (``grant``), whose
row the process's recorder writes together with others
(``worker.recorder``).

Each resource is claimed in Redis (``worker.inflight``) for the time it is
archived, and released as soon as its row is committed (before it is
announced): a resource another worker holds at the same URL is left to it
(``BatchResult.busy``, sent again a moment later with ``busy_since``, and
then skipped if the other worker recorded it meanwhile); a check that goes
on its host's list gives its claim up, and whoever is granted the slot
claims it (and releases it once the recorder has committed its row).
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from ckan import model

from ckanext.archiver import config, interfaces
from ckanext.archiver import status as st
from ckanext.archiver.engine import pool, site_faults
from ckanext.archiver.engine.hostqueue import Grant
from ckanext.archiver.engine.outcome import Outcome
from ckanext.archiver.model import checks, utcnow
from ckanext.archiver.model.checks import Job
from ckanext.archiver.worker import dispatch, hosts
from ckanext.archiver.worker.inflight import Claims
from ckanext.archiver.worker.recorder import Recorder
from ckanext.archiver.worker.resource import Run, discard_file, run_one, settle_files
from ckanext.archiver.worker.retry import backoff
from ckanext.archiver.worker.services import limiter, local_path, storage, store_key

__all__ = ["BatchResult", "archive_batch", "save", "record", "record_errors",
           "split_retries", "already_done", "announce"]

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    recorded: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)
    retry: list[Job] = field(default_factory=list)
    late: list[Job] = field(default_factory=list)  # still downloading (handed off)
    deferred: list[Job] = field(default_factory=list)  # on their hosts' waiting lists
    busy: list[Job] = field(default_factory=list)  # being archived by another worker
    # the busy ones, sent again, are skipped if recorded since then (even
    # forced): the request was made by then at the latest
    busy_since: Optional[datetime.datetime] = None
    recording: list[str] = field(default_factory=list)  # claims the recorder releases

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
                  handed_off_at: Optional[str] = None, defer: bool = False,
                  grant: Optional[Grant] = None,
                  max_retries: Optional[int] = None,
                  jobs: Optional[list[Job]] = None) -> BatchResult:
    """Archive resources now, in this process.

    ``max_retries`` (default: the ``max_retries`` option) caps the attempts
    of a transient failure; ``attempt`` is this attempt's number (0: the
    first of a check, which alone counts in ``failure_count``; a check that
    waited for its host keeps the number it was queued with).

    With ``defer``, a resource whose host has no free slot is not waited
    for: it goes on its host's waiting list (``result.deferred``) and is
    archived by the process whose slot on the host comes free next
    (``grant``: the slot given to the one resource of this call; its row is
    written by the process's recorder, then ``on_late(result)`` is called).

    With ``wait_max``, downloads still running when the batch is mostly done
    (``pool.run_batch``) are handed off: they are in ``result.late``, and
    each is recorded (and announced) on its own thread when it ends, then
    given to ``on_late`` as a BatchResult of its own. ``handed_off_at``
    skips resources recorded since then (a check of handed-off downloads
    whose worker may have died, or of resources found busy: the
    ``result.busy_since`` of the batch that found them busy), even with
    ``force``. ``jobs``: the resources as loaded already (``worker.ahead``).
    """
    asked = utcnow()  # this check was requested by now at the latest
    result = BatchResult()
    queued = datetime.datetime.fromisoformat(queued_at) if queued_at else None
    handed_off = datetime.datetime.fromisoformat(handed_off_at) if handed_off_at else None
    options = config.current()
    if jobs is None:
        jobs = checks.load_jobs(list(resource_ids))
    if grant is not None:
        for job in jobs:
            job.grant = grant
    todo = []
    for job in jobs:
        job.attempt = attempt
        if not job.active:
            job.skip_reason = "resource deleted or missing"
        elif already_done(job, handed_off) or (not force and already_done(job, queued)):
            job.skip_reason = "already checked since queued"
        (result.skipped if job.skip_reason else todo).append(job)
        if job.skip_reason and job.grant is not None:
            hosts.give_back(job.grant)
            job.grant = None
    # a bulk check that waited for its host: the process's claims (one
    # heartbeat for all); an edit's check has its own (it takes the claim
    # over from a check of the old URL, whose release must not drop it)
    claims = (Claims.of_process(options) if grant is not None and queue_name == "bulk"
              else Claims(options))
    claimed: list[str] = []
    if todo:  # never archived twice at the same time, on any host
        claimed, busy = claims.claim([job.resource_id for job in todo],
                                     [job.url for job in todo])
        if busy:
            busy_ids = set(busy)
            # a row written after this (by the worker holding them, most
            # likely) is a check made since this one was requested
            result.busy_since = min(t for t in (handed_off, queued, asked) if t is not None)
            result.busy = [job for job in todo if job.resource_id in busy_ids]
            for job in result.busy:
                job.skip_reason = "being archived by another worker"
                if job.grant is not None:
                    hosts.give_back(job.grant)
                    job.grant = None
            result.skipped += result.busy
            todo = [job for job in todo if job.resource_id not in busy_ids]
    try:
        return _archive_claimed(todo, result, claims, options, resource_ids, queue_name,
                                force, attempt, polite, wait_max, on_late, handed_off,
                                queued_at, defer, grant, max_retries)
    finally:
        # the rows written released their claims; what is left (an error,
        # nothing to record) goes now, but not the downloads still running
        # (handed off) nor a check whose row the recorder is writing (it
        # keeps its claim until then: no second check in between)
        kept = {job.resource_id for job in result.late} | set(result.recording)
        claims.release([rid for rid in claimed if rid not in kept])


def _archive_claimed(todo: list[Job], result: BatchResult, claims: Claims,
                     options: config.Options, resource_ids: list[str], queue_name: str,
                     force: bool, attempt: int, polite: bool, wait_max: Optional[float],
                     on_late: Optional[Callable[[BatchResult], None]],
                     handed_off: Optional[datetime.datetime], queued_at: Optional[str],
                     defer: bool, grant: Optional[Grant],
                     max_retries: Optional[int]) -> BatchResult:
    # started_at first, then the pending marks go: never a moment when a
    # queued resource looks lost (requeue_lost would queue it twice)
    if grant is None:  # a check that waited for its host was marked when granted (hosts.start)
        checks.mark_started(todo)
    # a check of handed-off downloads holds no pending marks, nor does one
    # that waited for its host (dropped when its slot was granted:
    # hosts.start), and without Redis (polite=False: `update --now` with the
    # broker down) there are none
    if handed_off is None and grant is None and polite:
        dispatch.release(resource_ids)
    if not todo:
        return result
    try:
        store = storage(options)
        store.tmp_dir()
    except OSError as e:
        problem = site_faults.archive_dir_problem(options.archive_dir, e)
        reason = f"System error during archival: {problem}"
        log.error("%s: %s", problem, e)
        for job in todo:
            job.outcome = Outcome(status_id=st.SYSTEM_ERROR, url=job.url or "", reason=reason)
        result.recorded = todo
        for job in todo:
            hosts.give_back(job.grant)
        record_errors(todo, queue_name, options, claims)
        return result
    deferral = None
    if polite and (defer or grant is not None):
        deferral = hosts.Deferral(hosts.hostqueue(options), queue_name, queued_at, force, attempt)
    run = Run(options, store, limiter(options) if polite and deferral is None else None, force,
              deferral, claims)
    if max_retries is None:
        max_retries = options.max_retries
    if len(todo) == 1:
        run_one(todo[0], run)
        done, late = todo, []
    else:
        late_batch = _LateBatch(queue_name, attempt, max_retries, on_late, run, claims)
        done, late = pool.run_batch(todo, lambda j: run_one(j, run), late_batch.finish,
                                    wait_max)
    result.deferred = [job for job in done if job.deferred]
    done = [job for job in done if not job.deferred]
    result.recorded, result.retry = split_retries(done, attempt, max_retries)
    result.late = late
    if grant is not None:  # a check that waited for its host
        result.recording = [job.resource_id for job in result.recorded + result.retry]
        _recorder().add((result, queue_name, run, on_late), urgent=queue_name == "priority")
        return result
    # every attempt is recorded, so the page says what happened last; only
    # final results whose rows were committed are announced downstream
    record(result.recorded + result.retry, queue_name, run, final=result.recorded)
    return result


def save(jobs: list[Job], run: Run) -> tuple[list[Job], set[str]]:
    """Write the rows of ``jobs`` (``model.checks.save``), then settle their
    new files: kept once their row is committed (the files they replace
    removed only then), removed when not; then release their claims (the
    check is over: a check that finds them claimed after this would be a
    second one). Returns the committed jobs and the datasets the commit
    finished."""
    committed: list[Job] = []
    try:
        committed, finished = checks.save(jobs, run.options.recheck_days,
                                          discard=lambda job: discard_file(job, run.store))
    finally:
        try:
            settle_files(jobs, committed, run.store, run.options)
        finally:
            if run.claims is not None:
                run.claims.release([job.resource_id for job in jobs])
    return committed, finished


def record(jobs: list[Job], queue_name: str, run: Run,
           final: Optional[list[Job]] = None) -> None:
    """Save ``jobs``; then announce those of ``final`` (default: all) whose
    rows were committed, and the datasets the commit finished."""
    committed, finished = save(jobs, run)
    saved = {id(job) for job in committed}
    announce([job for job in (jobs if final is None else final) if id(job) in saved],
             queue_name, finished)


def record_errors(jobs: list[Job], queue_name: str, options: config.Options,
                  claims: Optional[Claims] = None) -> None:
    """Save and announce system errors recorded without a download (no
    new file to settle); ``claims`` released once they are committed."""
    try:
        committed, finished = checks.save(jobs, options.recheck_days)
    finally:
        if claims is not None:
            claims.release([job.resource_id for job in jobs])
    announce(committed, queue_name, finished)


def split_retries(jobs: list[Job], attempt: int, max_retries: int) -> tuple[list[Job], list[Job]]:
    """(final, to retry): a transient failure is tried again while attempts
    are left, and its row says so (and says it waits until the retry is
    due: ``Job.retry_countdown``)."""
    final, retry = [], []
    for job in jobs:
        if (job.retry or job.outcome.transient) and attempt < max_retries:
            job.outcome.reason += " (will retry)"
            job.retry_countdown = backoff(attempt, job.outcome.retry_after)
            retry.append(job)
        else:
            final.append(job)
    return final, retry


class _LateBatch:
    """Records the handed-off downloads of one batch, each on its own
    thread when it ends (the commit that records a dataset's last one
    announces the dataset, see ``model.rounds``)."""

    def __init__(self, queue_name: str, attempt: int, max_retries: int,
                 on_late: Optional[Callable[[BatchResult], None]], run: Run,
                 claims: Optional[Claims] = None):
        self.queue_name, self.on_late, self.claims = queue_name, on_late, claims
        self.run = run
        self.attempt, self.max_retries = attempt, max_retries

    def finish(self, job: Job) -> None:
        """One late download ended (on its thread)."""
        try:
            result = BatchResult()
            if job.deferred:  # recorded by whoever runs it
                return
            result.recorded, result.retry = split_retries([job], self.attempt, self.max_retries)
            record(result.recorded + result.retry, self.queue_name, self.run,
                   final=result.recorded)
            if self.on_late is not None:
                self.on_late(result)
        finally:
            if self.claims is not None:  # recorded, or deferred (its claim went then)
                self.claims.release([job.resource_id])
            model.Session.remove()


def announce(jobs: list[Job], queue_name: str, finished: Iterable[str] = ()) -> None:
    """Announce ``jobs`` (``archived``), then the datasets their commit
    finished (``package-archived``, once per round: ``model.rounds``)."""
    for job in jobs:
        if job.superseded:
            continue
        kept = job.cache_filepath or (job.previous or {}).get("cache_filepath")
        # a local file's path (what ckanext-qa opens), or in S3 mode the
        # object's key; the URL serves the copy either way
        interfaces.notify("archived", queue_name, resource_id=job.resource_id,
                          cache_filepath=local_path(kept), cache_key=store_key(kept),
                          cache_url=job.cache_url or (job.previous or {}).get("cache_url"))
    for package_id in sorted(finished):
        interfaces.notify("package-archived", queue_name, package_id=package_id)


def _record_granted(items: list[tuple]) -> None:
    """Rows of checks that waited for their host (``archive_batch`` with a
    grant), a few at a time: one transaction, which finds the datasets it
    finished (``model.rounds``); then each batch's ``on_late``."""
    committed: list[Job] = []
    finished: set[str] = set()
    try:
        if items:
            jobs = [job for result, *_ in items for job in result.recorded + result.retry]
            committed, finished = save(jobs, items[0][2])
    finally:  # each check's claim (its own batch's), once its row is committed
        for result, _queue_name, run, _on_late in items:
            if run.claims is not None:
                run.claims.release(result.recording)
    saved = {id(job) for job in committed}
    queues: dict[str, list[Job]] = {}
    for result, queue_name, _run, _on_late in items:
        queues.setdefault(queue_name, []).extend(
            job for job in result.recorded if id(job) in saved)
    for queue_name, jobs in queues.items():
        # each finished dataset is announced once, on the queue of its check
        mine = {job.package_id for job in jobs} & finished
        finished -= mine
        announce(jobs, queue_name, mine)
    if finished:  # finished by a row that is not a final result
        announce([], items[0][1], finished)
    for result, _queue_name, _run, on_late in items:
        if on_late is not None:
            on_late(result)


def _recorder() -> Recorder:
    return Recorder.of_process(_record_granted)
