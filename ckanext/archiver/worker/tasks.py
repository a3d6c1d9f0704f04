"""The Celery tasks (names are public: queued messages carry them).

* ``ckanext.archiver.archive_resources``: a batch of resources
  (``worker.batch``), with retries of transient failures and a check of the
  downloads it handed off;
* ``ckanext.archiver.build_package``: a dataset's zip (``worker.zips``),
  mailing a link to who asked for it.

Only Celery workers (and the tests) import this module: everything else
queues the tasks by name (``worker.dispatch``, ``worker.zips``). Importing
it tells ``worker.hosts`` how this process runs a check that waited for its
host (``_run_granted``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Optional

import ckan.plugins.toolkit as tk
import sqlalchemy as sa
from celery import shared_task
from ckan import model

from ckanext.archiver import config, keys
from ckanext.archiver import status as st
from ckanext.archiver.engine.hostqueue import Grant
from ckanext.archiver.engine.outcome import Outcome
from ckanext.archiver.engine.zipper import DatasetZip
from ckanext.archiver.model import checks, utcnow
from ckanext.archiver.model.checks import Job
from ckanext.archiver.worker import ahead, app, dispatch, hosts, inflight, zips
from ckanext.archiver.worker.batch import BatchResult, archive_batch, record_errors
from ckanext.archiver.worker.retry import MAX_DELIVERIES, backoff, late_check_delay

__all__ = ["archive_resources", "build_package"]

log = logging.getLogger(__name__)

_guard_lock = threading.Lock()


def _too_many_deliveries(task_id: Optional[str]) -> bool:
    """A message that killed its worker MAX_DELIVERIES times is not given
    out again (no endless redelivery loop)."""
    if not task_id:
        return False
    options = config.current()
    key = keys.deliveries(options, task_id)
    r = keys.client(options)
    with _guard_lock:
        count = r.incr(key)
        r.expire(key, 24 * 3600)
    return count > MAX_DELIVERIES


def _record_system_error(resource_ids: list[str], reason: str) -> None:
    jobs = [j for j in checks.load_jobs(resource_ids) if j.active]
    for job in jobs:
        job.outcome = Outcome(status_id=st.SYSTEM_ERROR, url=job.url or "", reason=reason)
    record_errors(jobs, "bulk", config.current())


@shared_task(bind=True, name=app.ARCHIVE_TASK)
def archive_resources(self: Any, resource_ids: list[str], queue: str = "bulk",
                      queued_at: Optional[str] = None, force: bool = False,
                      attempt: int = 0, handed_off_at: Optional[str] = None,
                      busy: int = 0) -> dict[str, int]:
    """Archive a batch of resources (one, for the priority queue); ``queue``
    is the archiver's queue (``priority`` or ``bulk``).

    Downloads still running when the batch is mostly done are handed off
    (``pool.run_batch``) and recorded when they end; a check of them is
    queued for when they must have ended (``handed_off_at``), which does
    nothing unless this worker died first. ``busy``: how many times the
    resource was found being archived elsewhere (see ``_send_busy``: such a
    check is sent again with ``handed_off_at`` too, and skipped the same way
    if it was recorded since)."""
    options = config.current()
    try:
        if _too_many_deliveries(f"{self.request.id}:{self.request.retries}"):
            _record_system_error(resource_ids, "System error during archival: "
                                 "the worker stopped every time it archived this")
            return {"gave up": len(resource_ids)}

        def retry_late(late: BatchResult) -> None:
            _queue_retries(late.retry, queue, force, attempt)

        wait = options.batch_wait
        result = archive_batch(resource_ids, queue, queued_at, force, attempt,
                               wait_max=wait if wait > 0 else None,  # 0: wait for all
                               on_late=retry_late, handed_off_at=handed_off_at,
                               defer=True)
        _queue_retries(result.retry, queue, force, attempt)
        _send_busy(result, queue, queued_at, force, attempt, busy)
        if result.late:
            archive_resources.apply_async(
                args=[[job.resource_id for job in result.late]],
                kwargs={"queue": queue, "force": force, "attempt": attempt,
                        "handed_off_at": utcnow().isoformat()},
                queue=options.queue_name(queue), countdown=late_check_delay(options))
        counts = result.counts()
        counts["retrying"] = len(result.retry)
        counts["handed off"] = len(result.late)
        counts["waiting for their host"] = len(result.deferred)
        counts["busy elsewhere"] = len(result.busy)
        return counts
    except sa.exc.OperationalError as e:  # database unavailable: retry later
        model.Session.rollback()
        raise self.retry(exc=e, countdown=backoff(self.request.retries, options=options),
                         max_retries=options.max_retries) from e
    finally:
        model.Session.remove()


def _queue_retries(jobs: list[Job], queue: str, force: bool, attempt: int) -> None:
    """Queue the retries (their rows say they wait, see ``model.checks``);
    each is marked pending like a queued resource until its worker starts
    on it."""
    if not jobs:
        return
    options = config.current()
    r = keys.client(options)
    with r.pipeline(transaction=False) as pipe:
        for job in jobs:
            # "retry": a bulk enqueue leaves it to the retry, a priority
            # one (an edit) queues a check now, as for a resource on bulk
            pipe.set(keys.pending(options, job.resource_id), "retry", ex=dispatch.PENDING_TTL)
        pipe.execute()
    for job in jobs:
        countdown = job.retry_countdown
        if countdown is None:
            countdown = backoff(attempt, job.outcome.retry_after if job.outcome else None,
                                options)
        archive_resources.apply_async(
            args=[[job.resource_id]],
            kwargs={"queue": queue, "queued_at": None, "force": force, "attempt": attempt + 1},
            queue=options.queue_name(queue), countdown=countdown)


def _send_busy(result: BatchResult, queue: str, queued_at: Optional[str], force: bool,
               attempt: int, busy: int) -> None:
    """Resources another worker is archiving at the same URL: each is sent
    again a moment later (1 s, then 2, 4, ... up to the claims' TTL), so
    that a check (an edit's) runs as soon as the other one has ended, and
    never alongside it. It is skipped then if a row was written since it
    was found busy (``result.busy_since``, sent as ``handed_off_at``: even
    a forced check, or one queued without ``queued_at``, is not made twice
    because the other worker had not let it go yet)."""
    if not result.busy:
        return
    options = config.current()
    countdown = min(2 ** busy, inflight.TTL)
    since = result.busy_since.isoformat() if result.busy_since else None
    for job in result.busy:
        archive_resources.apply_async(
            args=[[job.resource_id]],
            kwargs={"queue": queue, "queued_at": queued_at, "force": force,
                    "attempt": attempt, "handed_off_at": since, "busy": busy + 1},
            queue=options.queue_name(queue), countdown=countdown)


def _run_granted(grant: Grant) -> None:
    """A check that waited for its host got the host's slot: archive it now,
    in this process (its row is written by the process's recorder, then its
    retry queued)."""
    e = hosts.entry_of(grant)

    def retry(result: BatchResult) -> None:
        _queue_retries(result.retry, e["q"], e["f"], e["a"])

    try:
        job = ahead.job_for(grant, hosts.hostqueue())
        result = archive_batch([e["r"]], e["q"], e["t"], e["f"], e["a"], grant=grant,
                               on_late=retry, jobs=[job])
        _send_busy(result, e["q"], e["t"], e["f"], e["a"], 0)
    except Exception:
        log.exception("Archiving resource %s (its host's turn came) failed", e["r"])
        hosts.give_back(grant)
    finally:
        model.Session.remove()


hosts.serve(_run_granted)


# Acknowledged when it starts (not acks_late): a build of many gigabytes can
# outlast the broker's visibility timeout, and must not be handed to a
# second worker meanwhile. A build lost with its worker is requested again
# by the next archival or request.
@shared_task(name=app.BUILD_PACKAGE_TASK, acks_late=False,
             reject_on_worker_lost=False, soft_time_limit=6 * 3600,
             time_limit=6 * 3600 + 300)
def build_package(package_id: str, user_id: Optional[str] = None) -> Optional[int]:
    """Build a dataset's zip (if out of date); mail ``user_id`` a link."""
    try:
        if user_id is None:
            with contextlib.suppress(Exception):
                zips.forget_pending(package_id)
        built: Optional[DatasetZip] = None
        error: Optional[str] = None
        try:
            built = zips.build(package_id).package
        except tk.ObjectNotFound:
            return None
        except zips.NothingToPackage:
            error = tk._("The dataset has no archived files to package.")
        except Exception as e:
            log.exception("Building the package of %s failed", package_id)
            error = tk._("The package could not be built ({error}).").format(
                error=type(e).__name__)
        if user_id:
            zips.mail_user(user_id, package_id, built, error)
        return built.size if built else None
    finally:
        model.Session.remove()
