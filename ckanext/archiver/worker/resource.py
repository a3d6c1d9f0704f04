"""One resource of a batch: its politeness slot (or its place on its host's
waiting list, ``worker.hosts``), the engine's attempt, the file moved into
the archive (a temp file staged in ``archive_dir``, or in S3 mode the body
streamed into an upload, completed under a new key). Sets ``job.outcome``
(or ``job.deferred``) and never raises (except the worker's own time
limits). Either way the new copy is staged, then kept or discarded once its
row's fate is known (``settle_files``)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import logging
import mimetypes
import os
import shutil
import socket
import tempfile
import time
from typing import Optional

import redis
from ckan.lib import uploader

from ckanext.archiver import config, urls
from ckanext.archiver import status as st
from ckanext.archiver.engine import site_faults
from ckanext.archiver.engine.attempt import PASS_THROUGH, fetch
from ckanext.archiver.engine.hashing import hash_file
from ckanext.archiver.engine.outcome import Outcome
from ckanext.archiver.engine.politeness import HostLimiter, HostNotAnswering
from ckanext.archiver.engine.session import get_session
from ckanext.archiver.engine.sink import StoreError
from ckanext.archiver.engine.store_s3 import S3Store
from ckanext.archiver.engine.urlnorm import url_host
from ckanext.archiver.model.checks import Job, previous_of
from ckanext.archiver.worker import hosts
from ckanext.archiver.worker.inflight import Claims
from ckanext.archiver.worker.services import AnyStore, fetch_settings, local_key, local_path

__all__ = ["Run", "run_one", "politeness_host", "discard_file", "settle_files"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Run:
    """What every resource of a batch shares."""

    options: config.Options
    store: AnyStore
    limiter: Optional[HostLimiter]
    force: bool = False
    deferral: Optional[hosts.Deferral] = None  # no waiting for a slot: its host's list
    claims: Optional[Claims] = None  # the batch's claims (worker.inflight)


def politeness_host(url: Optional[str]) -> Optional[str]:
    """The host whose slot a download takes: the host the engine will
    contact (normalised, IDNA), None when the URL is not valid (the engine
    then says what is wrong without a request)."""
    return url_host(url)


def _download_wanted(job: Job, options: config.Options) -> bool:
    return (job.format or "").strip().lower() not in options.check_only_formats


def _cache_url(job: Job, filename: str, run: Run) -> Optional[str]:
    """``cache_url_root`` when a web server publishes archive_dir, else
    CKAN's own cached-copy view (which checks read permission)."""
    return run.store.cache_url(job.resource_id, filename) or urls.cached_copy_url(
        job.package_id, job.resource_id, filename, run.options)


def _from_upload(job: Job) -> Outcome:
    """An uploaded file is read where CKAN keeps it, not over HTTP."""
    path = uploader.get_resource_uploader({"id": job.resource_id, "url_type": "upload",
                                           "url": job.url}).get_path(job.resource_id)
    path = str(path)
    if not os.path.isfile(path):
        return Outcome(status_id=st.DOWNLOAD_ERROR, url=job.url or "",
                       reason="The uploaded file is missing from CKAN's storage")
    sha1, sha256, size = hash_file(path)
    job.cache_filepath = path
    job.cache_url = job.url
    mimetype = mimetypes.guess_type(job.url or "")[0]
    return Outcome(status_id=st.ARCHIVED, reason="Uploaded file", url=job.url or "",
                   size=size, hash=sha1, sha256=sha256, mimetype=mimetype)


def _take_slot(job: Job, host: str, run: Run) -> Optional[str]:
    """A slot on ``host``, or None with ``job.outcome`` set (not tried)."""
    limiter = run.limiter
    assert limiter is not None
    try:
        token = limiter.acquire(host, timeout=run.options.host_wait)
        reason = "Host busy: waited too long for a free slot"
    except redis.exceptions.RedisError:
        token, reason = None, "Queue broker unavailable (per-host limits)"
    except HostNotAnswering:
        job.outcome = Outcome(
            status_id=st.REQUEST_FAILED, url=job.url or "", transient=True,
            reason=f"Not tried: {host} timed out on its last {limiter.down_after} "
                   "requests or more (it is tried again once a minute)")
        return None
    if token is None:
        job.retry = True
        job.outcome = Outcome(status_id=st.DOWNLOAD_FAILURE, url=job.url or "",
                              reason=reason, transient=True)
    return token


def run_one(job: Job, run: Run) -> None:
    """Check one resource; sets job.outcome, or job.deferred when it waits
    for its host (never raises)."""
    tmp_path = upload = tmp_dir = None
    grant, job.grant = job.grant, None  # given back once, here
    deferral = run.deferral
    try:
        if job.url_type == "upload":
            job.outcome = _from_upload(job)
            return
        settings = fetch_settings(run.options, download=_download_wanted(job, run.options))
        previous = previous_of(job)
        host = politeness_host(job.url)
        now = datetime.datetime.now(datetime.timezone.utc)
        fresh = (not run.force and previous is not None
                 and previous.fresh_for(job.url or "", settings.download, now) is not None)
        if grant is not None and grant.timeouts:
            job.outcome = hosts.not_tried(job, grant.host, deferral.hq.down_after if deferral
                                          else grant.timeouts)
            grant = None
            return
        if grant is not None and (not host or fresh or grant.host != host.lower()):
            hosts.give_back(grant)  # not needed (fresh), or the URL moved to another host
            grant = None
        if grant is not None and deferral is not None and grant.wait > hosts.RECHECK and \
                deferral.hq.not_answering(grant.host):
            # the host stopped answering while this check waited for its start
            hosts.give_back(grant)
            grant = None
            job.outcome = hosts.not_tried(job, host, deferral.hq.down_after)
            return
        if deferral is not None and host and not fresh and grant is None:
            grant = hosts.take_slot(job, host, deferral)
            if grant is None:
                if job.deferred and run.claims is not None:
                    # whoever is granted its host's slot claims it then
                    run.claims.release([job.resource_id])
                return
        token = None
        if grant is None and run.limiter is not None and host and not fresh:
            token = _take_slot(job, host, run)
            if token is None:
                return
        if grant is not None and deferral is not None:
            grant = hosts.keep_pace(job, grant, deferral.hq)
            if grant is None:  # it waits for a new start (whoever runs it claims it then)
                if run.claims is not None:
                    run.claims.release([job.resource_id])
                return
        outcome = None
        sink = run.store.sink(job.resource_id) if isinstance(run.store, S3Store) else None
        try:
            tmp_dir = _tmp_dir(run.store, job, run.options)
            outcome = fetch(job.url or "", settings, previous, tmp_dir=tmp_dir,
                            force=run.force, session=get_session(settings), sink=sink)
        finally:
            if grant is not None:
                hosts.give_back(grant, outcome)
                grant = None
            if token is not None:
                try:
                    run.limiter.release(host, token, outcome.host_answered if outcome else None)
                except redis.exceptions.RedisError:  # the lease expires by itself
                    log.warning("Could not release the slot of host %s", host)
        job.outcome = outcome
        tmp_path, upload = outcome.tmp_path, outcome.staged
        outcome.staged = None
        if tmp_path or upload is not None:  # a new copy: staged until its row commits
            if not run.store.has_room(outcome.size or 0, on_disk=True):
                # the site's quota, not the link: a site fault (verdict kept)
                outcome.status_id = st.SYSTEM_ERROR
                outcome.reason = ("System error during archival: " + site_faults.quota_full(
                    run.options.archive_dir, run.store.max_archive_bytes))
                return
            filename = outcome.filename or "resource"
            job.staged = run.store.stage(job.resource_id, upload or tmp_path, filename)
            job.cache_filepath = job.staged.path
            tmp_path = upload = None
            job.cache_url = _cache_url(job, os.path.basename(job.cache_filepath), run)
    except StoreError as e:  # the object store refused or is unreachable
        log.warning("Archiving resource %s: %s", job.resource_id, e)
        job.outcome = Outcome(status_id=st.SYSTEM_ERROR, url=job.url or "",
                              reason=f"System error during archival: {e}")
        discard_file(job, run.store)
        job.cache_filepath = job.cache_url = None
    except Exception as e:  # a bug or the disk: record it, do not crash the batch
        if type(e).__name__ in PASS_THROUGH:  # the worker's time limits
            raise
        log.exception("Archiving resource %s failed", job.resource_id)
        reason = "System error during archival: " + site_faults.os_error_reason(
            e, run.options.archive_dir)
        job.outcome = Outcome(status_id=st.SYSTEM_ERROR, url=job.url or "", reason=reason)
        discard_file(job, run.store)
    finally:
        hosts.give_back(grant)  # a slot granted and not used
        if upload is not None:
            try:
                upload.abort()
            except StoreError as e:  # a lifecycle rule removes it (README)
                log.warning("%s", e)
        if tmp_path and os.path.exists(tmp_path):
            os.unlink(tmp_path)
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            with contextlib.suppress(OSError):  # unless another check of it uses it
                os.rmdir(os.path.dirname(tmp_dir))


def _tmp_dir(store: AnyStore, job: Job, options: config.Options) -> str:
    """A temp folder of this check's own, in a folder per resource: two
    checks of one resource at once (an edit's, beside a download of the old
    URL) never touch each other's files. What a killed attempt left there
    is removed when the resource is archived again: at once when its
    process, on this host, is gone; else once it is older than any download
    can last (``download_time_max``, and a minute)."""
    parent = os.path.join(store.tmp_dir(), hashlib.sha1(job.resource_id.encode()).hexdigest())
    _remove_stale(parent, time.time() - options.download_time_max - 60)
    prefix = f"{os.getpid()}@{socket.gethostname()}~"
    for _ in range(3):
        os.makedirs(parent, exist_ok=True)
        try:
            return tempfile.mkdtemp(dir=parent, prefix=prefix)
        except FileNotFoundError:  # the other check of it removed the folder just now
            continue
    return tempfile.mkdtemp(dir=parent, prefix=prefix)


def _process_gone(name: str) -> bool:
    """The folder ``<pid>@<host>~...`` of a process of this host that is
    not running any more."""
    pid, at, rest = name.partition("@")
    if not at or not pid.isdigit() or rest.rpartition("~")[0] != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: running
        return False
    return False


def _remove_stale(parent: str, before: float) -> None:
    """Remove what ``parent`` holds that nothing changed since ``before``
    (a check's folder: nor anything in it), or whose process is gone."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                newest = max([entry.stat(follow_symlinks=False).st_mtime] + [
                    f.stat(follow_symlinks=False).st_mtime for f in os.scandir(entry.path)])
                if newest < before or _process_gone(entry.name):
                    shutil.rmtree(entry.path, ignore_errors=True)
            elif entry.stat(follow_symlinks=False).st_mtime < before:
                os.unlink(entry.path)
        except OSError:  # gone meanwhile
            continue


def settle_files(jobs: list[Job], committed: list[Job], store: AnyStore,
                 options: Optional[config.Options] = None) -> None:
    """Keep the new files of committed rows (removing what they replace),
    remove those of rows not committed. Local file or object of the store:
    the same rule."""
    done = {id(job) for job in committed}
    for job in jobs:
        if job.staged is None:
            continue
        if id(job) in done:
            try:
                store.keep(job.staged)
                if isinstance(store, S3Store):
                    _drop_migrated(job, options)
            except (OSError, ValueError, StoreError) as e:  # clean-cached removes it
                log.warning("Could not remove the replaced files of resource %s: %s",
                            job.resource_id, e)
            job.staged = None
        else:
            discard_file(job, store)


def discard_file(job: Job, store: AnyStore) -> None:
    """The new file of ``job`` goes; the row keeps naming the previous one."""
    if job.staged is None:
        return
    try:
        store.discard(job.staged)
    except (OSError, ValueError, StoreError) as e:  # S3: clean-cached removes it
        log.warning("Could not remove the new file of resource %s: %s", job.resource_id, e)
    job.staged = None
    job.cache_filepath = job.cache_url = None


def _drop_migrated(job: Job, options: Optional[config.Options]) -> None:
    """In S3 mode, a committed row that named a file of archive_dir (not
    migrated yet) now names an object: the local file goes."""
    old = local_path((job.previous or {}).get("cache_filepath"))
    if old and local_key(old, options):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(old)
