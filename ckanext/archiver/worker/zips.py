"""Dataset zips: one zip of a dataset's archived files plus a manifest,
built and kept here, served by ``views.zips``.

What goes in and the fingerprint: ``worker.zip_plan`` (:func:`plan`,
re-exported). Where the zip lives and how it is written: ``engine.zipper``
(``<archive_dir>/packages/<package_id>/``, local backend) or
``engine.zipper_s3`` (``packages/<package_id>/`` in the bucket, S3 backend,
streamed into a multipart upload: any web node serves it through a
presigned GET). It is rebuilt only when its fingerprint changes.

Entry points: :func:`build` (``ckan archiver package``, the download view
for small datasets), the Celery task ``build_package`` (``worker.tasks``;
large datasets, ``archiver_package_request``, and ``package_on_archived``
through :func:`on_package_archived`, the ``archiver:package-archived``
signal listener). Queuing a build loads no Celery task module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import logging
import os
import shutil
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Optional

import ckan.plugins.toolkit as tk
import redis
from ckan import model

from ckanext.archiver import config, interfaces, keys, mail, urls
from ckanext.archiver.engine import zipper_s3
from ckanext.archiver.engine.storage import Storage, sanitise_filename
from ckanext.archiver.engine.store_s3 import S3Store
from ckanext.archiver.engine.zipper import (
    LOCK_TIMEOUT,
    PACKAGES_DIRNAME,
    DatasetZip,
    current,
    locked,
    package_dir,
    write_meta,
    write_zip,
)
from ckanext.archiver.model import active_dataset
from ckanext.archiver.worker import app
from ckanext.archiver.worker.services import AnyStore, local_storage
from ckanext.archiver.worker.services import storage as archive_store
from ckanext.archiver.worker.zip_plan import Plan, plan

__all__ = [
    "Plan", "NothingToPackage", "built_zip", "BuildResult", "build", "plan", "clean", "queue_build",
    "request_build", "on_package_archived", "signal_subscriptions", "mail_user",
    "forget_pending", "locked_everywhere", "active_ids",
]

log = logging.getLogger(__name__)

PENDING_TTL = 3600
REQUEST_TTL = 600
LOCK_TTL = 60  # seconds the S3 build lock outlives its builder's last heartbeat


class NothingToPackage(LookupError):
    """The dataset has no archived file to put in a package."""


def built_zip(package_id: str, store: Optional[AnyStore] = None) -> Optional[DatasetZip]:
    """The zip built for the dataset, if any (whether up to date or not), in
    ``store`` (default: this site's, ``storage_backend``)."""
    store = store or archive_store()
    if isinstance(store, S3Store):
        return zipper_s3.current(store, package_id)
    return current(package_id, store)


def _get_package(package_id: str) -> model.Package:
    package = active_dataset(package_id)
    if package is None:
        raise tk.ObjectNotFound(tk._("Dataset not found"))
    return package


@dataclasses.dataclass(frozen=True)
class BuildResult:
    package: DatasetZip
    built: bool  # False: the existing zip was up to date


@contextlib.contextmanager
def locked_everywhere(package_id: str) -> Iterator[None]:
    """One builder per dataset on every host (S3 mode has no shared disk to
    ``flock``): a Redis lock kept alive by a heartbeat thread, expiring
    ``LOCK_TTL`` seconds after a killed builder's last beat."""
    options = config.current()
    lock = keys.client(options).lock(keys.package_lock(options, package_id), timeout=LOCK_TTL,
                                     sleep=0.2, blocking_timeout=LOCK_TIMEOUT,
                                     thread_local=False)
    if not lock.acquire():
        raise TimeoutError(f"Another build of the zip of {package_id} is still running")
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(LOCK_TTL / 4):
            try:
                lock.reacquire()
            except redis.exceptions.RedisError as e:
                log.warning("Build lock of %s: %s: %s", package_id, type(e).__name__, e)

    beating = threading.Thread(target=beat, name="archiver-zip-lock", daemon=True)
    beating.start()
    try:
        yield
    finally:
        stop.set()
        beating.join()
        with contextlib.suppress(redis.exceptions.RedisError):
            lock.release()


def build(package_id: str, force: bool = False,
          store: Optional[AnyStore] = None) -> BuildResult:
    """Build the dataset's zip unless the one kept is up to date.

    :raises ckan.plugins.toolkit.ObjectNotFound: no such (active) dataset
    :raises NothingToPackage: the dataset has no archived file
    :raises OSError: ``ENOSPC`` when the archive quota or the disk is full
    :raises StoreError: the object store failed (nothing is left of the build)
    """
    store = store or archive_store()
    package = _get_package(package_id)
    if isinstance(store, S3Store):
        with locked_everywhere(package.id):
            return _build(package, force, store, local_storage())
    with locked(package_dir(store, package.id)):
        return _build(package, force, store, store)


def _build(package: model.Package, force: bool, store: AnyStore,
           local: Storage) -> BuildResult:
    wanted = plan(package, local)  # local: where rows not in the store have files
    if not wanted.members:
        raise NothingToPackage(package.name)
    existing = built_zip(package.id, store)
    if (not force and existing is not None and existing.consistent
            and existing.fingerprint == wanted.fingerprint):
        return BuildResult(existing, built=False)
    if not store.has_room(wanted.total_bytes):
        raise OSError(errno.ENOSPC, "No room in the archive for the package of "
                      f"{package.name} ({wanted.total_bytes} bytes)")
    filename = sanitise_filename(package.name, default=package.id) + ".zip"
    started = time.monotonic()
    meta = {"fingerprint": wanted.fingerprint, "filename": filename,
            "members": len(wanted.members),
            "built_at": datetime.datetime.now(datetime.timezone.utc).replace(
                tzinfo=None).isoformat()}
    level = config.current().package_compresslevel
    if isinstance(store, S3Store):
        key, size = zipper_s3.write(store, package.id, filename, wanted.members,
                                    wanted.manifest, level)
        try:
            zipper_s3.record(store, package.id, dict(meta, key=key, size=size))
        except BaseException:
            with contextlib.suppress(Exception):
                store.delete(key)  # never a zip no record names
            raise
        zipper_s3.drop_others(store, package.id, key)  # only now: the record names the new one
    else:
        size = _write_local(store, package.id, filename, wanted, meta, level)
    log.info("Built the package of %s: %d files, %d bytes in %.1f s", package.name,
             len(wanted.members), size, time.monotonic() - started)
    built = built_zip(package.id, store)
    assert built is not None
    return BuildResult(built, built=True)


def _write_local(store: Storage, package_id: str, filename: str, wanted: Plan,
                 meta: dict[str, Any], level: int) -> int:
    folder = package_dir(store, package_id)
    dest = os.path.join(folder, filename)
    write_zip(wanted.members, wanted.manifest, store.tmp_dir(), dest, level)
    stat = os.stat(dest)
    write_meta(folder, dict(meta, size=stat.st_size, mtime_ns=stat.st_mtime_ns))
    for entry in os.scandir(folder):  # a zip under the dataset's old name,
        # or what a killed build left behind
        stale = entry.name.endswith(".zip") and entry.name != filename or (
            entry.name.startswith(".package-")
            and entry.name.endswith((".json", ".part")))
        if stale:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
    return stat.st_size


def active_ids(ids: Iterable[str]) -> set[str]:
    """Which of ``ids`` are datasets that are not deleted."""
    ids = list(ids)
    return {row[0] for row in model.Session.query(model.Package.id).filter(
        model.Package.id.in_(ids), model.Package.state != "deleted")} if ids else set()


def clean(store: Optional[AnyStore] = None, dry_run: bool = False) -> tuple[int, int]:
    """Remove the zips of datasets that are deleted or gone (S3 mode also:
    zips no record names, left by a killed build, and zip uploads older
    than a build may run).

    :returns: ``(packages removed, bytes freed)`` (S3 mode: objects removed);
        what would be, when ``dry_run``
    """
    store = store or archive_store()
    if isinstance(store, S3Store):
        return zipper_s3.clean(store, active_ids, dry_run=dry_run)
    root = os.path.join(store.archive_dir, PACKAGES_DIRNAME)
    try:
        folders = [e for e in os.scandir(root) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return 0, 0
    active = active_ids(e.name for e in folders)
    removed = freed = 0
    for entry in folders:
        if entry.name in active:
            continue
        size = sum(f.stat(follow_symlinks=False).st_size for f in os.scandir(entry.path)
                   if f.is_file(follow_symlinks=False))
        if not dry_run:
            shutil.rmtree(entry.path, ignore_errors=True)
        removed, freed = removed + 1, freed + size
    return removed, freed


def mail_user(user_id: str, package_id: str, built: Optional[DatasetZip],
              error: Optional[str]) -> bool:
    """Mail the user a link (or why there is none); returns whether a mail
    went. A mail failure is logged as one line, never raised: the zip is
    built already."""
    user = model.User.get(user_id)
    package = model.Package.get(package_id)
    if user is None or not user.email or package is None:
        return False
    problem = mail.send(user.display_name, user.email, "package_ready", {
        "user": user, "package": package,
        "dataset_url": urls.dataset_url(package.type, package.name, qualified=True),
        "site_title": config.current().site_title,
        "zip_url": urls.package_zip_url(package.name) if built else None,
        "size": built.size if built else None,
        "files": built.members if built else None,
        "error": error,
    })
    if problem is not None:
        log.error("Could not mail %s about the package of %s: %s", user.name, package.name,
                  problem)
        return False
    return True


def queue_build(package_id: str, user_id: Optional[str] = None) -> bool:
    """Queue a build on the bulk queue. Without a user to mail, a dataset
    already waiting is not queued twice. Returns whether it was queued."""
    options = config.current()
    if user_id is None:
        r = keys.client(options)
        if not r.set(keys.package_pending(options, package_id), "1", nx=True, ex=PENDING_TTL):
            return False
    try:
        app.send(app.BUILD_PACKAGE_TASK, options.queue_name("bulk"), [package_id],
                 {"user_id": user_id})
    except Exception:
        if user_id is None:
            forget_pending(package_id)
        raise
    return True


def forget_pending(package_id: str) -> None:
    """The build of the dataset's zip is no longer waiting."""
    options = config.current()
    keys.client(options).delete(keys.package_pending(options, package_id))


def request_build(package_id: str, user_id: str) -> bool:
    """A user asked for the zip by email: queue a build that mails them,
    unless they asked for the same dataset in the last ten minutes.
    Returns whether it was queued."""
    options = config.current()
    key = keys.package_request(options, package_id, user_id)
    r = keys.client(options)
    if not r.set(key, "1", nx=True, ex=REQUEST_TTL):
        return False
    try:
        return queue_build(package_id, user_id=user_id)
    except Exception:
        r.delete(key)
        raise


def on_package_archived(sender: Any, **kwargs: Any) -> None:
    """``archiver:package-archived`` listener: with ``package_on_archived``,
    queue a background build of the dataset's zip (built only if a file
    changed). Never raises."""
    if not config.current().package_on_archived:
        return
    package_id = kwargs.get("package_id")
    if not package_id:
        return
    try:
        queue_build(package_id)
    except Exception as e:
        log.error("Could not queue the package build of %s (%s: %s)",
                  package_id, type(e).__name__, e)


def signal_subscriptions() -> dict[Any, list[Callable[..., Any]]]:
    """For the plugin's ``ISignal.get_signal_subscriptions``."""
    return {interfaces.signal("package-archived"): [on_package_archived]}
