"""Dataset zips: one zip of a dataset's archived files plus a manifest.

The zip holds ``data/<file name>`` for every active resource with an
archived file (or an uploaded one) and ``datapackage.json`` (a Frictionless
Data Package: each resource's URL, sha256, size, status and archive time).
Where it lives and how it is written: ``engine.zipper``. It is rebuilt only
when its fingerprint changes: the members' zip paths, sizes and sha256, and
the resources' ids, names, URLs and broken / not broken state (a routine
re-check that finds the same files rebuilds nothing).

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
import hashlib
import json
import logging
import os
import shutil
import time
import urllib.parse
from typing import Any, Callable, Optional

import ckan.plugins.toolkit as tk
from ckan import model
from ckan.lib import uploader

from ckanext.archiver import config, interfaces, keys, mail, urls
from ckanext.archiver import status as st
from ckanext.archiver.engine.files import inside
from ckanext.archiver.engine.storage import Storage, sanitise_filename
from ckanext.archiver.engine.store_s3 import S3Store
from ckanext.archiver.engine.zipper import (
    MANIFEST_NAME,
    PACKAGES_DIRNAME,
    DatasetZip,
    Member,
    current,
    locked,
    mtime_iso,
    package_dir,
    write_meta,
    write_zip,
)
from ckanext.archiver.model import Archival, active_dataset, iso
from ckanext.archiver.worker import app
from ckanext.archiver.worker.services import local_storage, store_key
from ckanext.archiver.worker.services import storage as archive_store

__all__ = [
    "Plan", "NothingToPackage", "built_zip", "BuildResult", "build", "plan", "clean", "queue_build",
    "request_build", "on_package_archived", "signal_subscriptions", "mail_user",
    "forget_pending",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PENDING_TTL = 3600
REQUEST_TTL = 600


class NothingToPackage(LookupError):
    """The dataset has no archived file to put in a package."""


@dataclasses.dataclass
class Plan:
    """What the package of a dataset holds now (from the database)."""

    package_id: str
    package_name: str
    members: list[Member]
    resources: list[dict[str, Any]]  # manifest entries, member hashes filled in later
    manifest_head: dict[str, Any]
    fingerprint: str

    @property
    def total_bytes(self) -> int:
        return sum(m.size for m in self.members)

    def manifest(self, hashes: dict[str, str]) -> bytes:
        """``datapackage.json`` with the sha256 actually read while zipping."""
        resources = []
        for entry in self.resources:
            entry = json.loads(json.dumps(entry))
            digest = hashes.get(entry["archiver"]["resource_id"])
            if digest:
                entry["hash"] = "sha256:" + digest
                entry["archiver"]["sha256"] = digest
            resources.append(entry)
        doc = dict(self.manifest_head, resources=resources)
        return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _source_path(resource: model.Resource, archival: Optional[Archival],
                 store: Storage) -> Optional[str]:
    """The real path of the resource's kept file, when it is a regular file
    where the archiver puts it (its own folder in archive_dir, or CKAN's
    storage for an upload); None otherwise."""
    if archival is None or not archival.cache_filepath:
        return None
    recorded = os.path.realpath(archival.cache_filepath)
    if resource.url_type == "upload":
        expected = uploader.get_resource_uploader(
            {"id": resource.id, "url_type": "upload", "url": resource.url}
        ).get_path(resource.id)
        path = os.path.realpath(str(expected))
        if path != recorded:
            return None
    else:
        try:
            path = store.path_for(resource.id, os.path.basename(recorded))
        except ValueError:
            return None
        if path != recorded or not inside(path, store.archive_dir):
            return None
    return path if os.path.isfile(path) else None


_NOT_A_WEB_URL = "The link is not an http(s) URL: it is left out of this manifest"


def _web_url(url: str) -> bool:
    """An absolute http(s) URL with a host (what a manifest path may be,
    besides a member of the zip)."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError:
        return False
    return (parts.scheme.lower() in ("http", "https") and bool(parts.netloc)
            and url == url.strip() and url.isprintable())


def _arcname(filename: str, resource_id: str, taken: set[str]) -> str:
    name = sanitise_filename(filename, default=resource_id)
    for candidate in (name, f"{resource_id[:8]}-{name}", f"{resource_id}-{name}"):
        if candidate.lower() not in taken:
            taken.add(candidate.lower())
            return "data/" + candidate
    raise ValueError(f"No free name in the zip for {resource_id}")


def plan(package: model.Package, store: Optional[Storage] = None) -> Plan:
    """The members, manifest and fingerprint of ``package``'s zip, as the
    database says now (no file is read, a stat per member)."""
    store = store or local_storage()
    resources = model.Session.query(model.Resource).filter(
        model.Resource.package_id == package.id,
        model.Resource.state == "active").order_by(model.Resource.position).all()
    archivals = {a.resource_id: a for a in Archival.get_for_package(package.id)}
    members: list[Member] = []
    entries: list[dict[str, Any]] = []
    fingerprint: list[Any] = []
    taken: set[str] = {MANIFEST_NAME}
    for res in resources:
        a = archivals.get(res.id)
        key = store_key(a.cache_filepath) if a is not None else None
        source = key or _source_path(res, a, store)
        url = res.url or ""
        if res.url_type == "upload" and url and "/" not in url:
            url = urls.dataset_url(package.type, package.id, res.id, qualified=True,
                                   action="download", filename=url)
        status_id = a.status_id if a else None
        link = url if _web_url(url) else None
        entry: dict[str, Any] = {
            "name": res.id,
            "title": res.name or None,
            "path": link,
            "url": link,
            "format": res.format or None,
            "archiver": {
                "resource_id": res.id,
                "included": source is not None,
                "status_id": status_id,
                "status": st.text(status_id),
                "is_broken": a.is_broken if a else None,
                "reason": a.reason if a else None,
                "checked_at": iso(a.updated) if a else None,
                "last_success": iso(a.last_success) if a else None,
            },
        }
        if link is None:  # never a local path or "..": the manifest's path is
            # a member of the zip or an http(s) URL (Data Package spec)
            del entry["path"], entry["url"]
            entry["archiver"]["note"] = _NOT_A_WEB_URL
        member_key: Any = None
        if key is not None:  # in the object store: streamed from it while zipping
            member = Member(res.id, key, _arcname(key.rsplit("/", 1)[-1], res.id, taken),
                            int(a.size or 0), a.sha256, opener=_object_opener(key),
                            mtime=a.updated.replace(tzinfo=datetime.timezone.utc).timestamp()
                            if a.updated else None)
            members.append(member)
            entry.update(path=member.arcname, bytes=member.size, mediatype=a.mimetype or None)
            if a.sha256:
                entry["hash"] = "sha256:" + a.sha256
            entry["archiver"].update(archived_at=iso(a.updated), sha256=a.sha256)
            member_key = [member.arcname, member.size, a.sha256 or [a.hash, key]]
        elif source is not None:
            size = os.path.getsize(source)
            # an upload is kept under its id by CKAN: name it as uploaded
            name = (urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
                    if res.url_type == "upload" else "") or os.path.basename(source)
            member = Member(res.id, source, _arcname(urllib.parse.unquote(name), res.id, taken),
                            size, a.sha256)
            members.append(member)
            entry.update(path=member.arcname, bytes=size, mediatype=a.mimetype or None)
            if a.sha256:
                entry["hash"] = "sha256:" + a.sha256
            entry["archiver"].update(archived_at=mtime_iso(source), sha256=a.sha256)
            # no sha256 recorded (older archiver's rows): the file's identity
            member_key = [member.arcname, size, a.sha256 or
                          [a.hash, os.stat(source).st_mtime_ns]]
        entries.append(entry)
        fingerprint.append([res.id, res.name or "", url, a.is_broken if a else None,
                            member_key])
    head = {
        "profile": "data-package",
        "name": package.name,
        "id": package.id,
        "title": package.title or package.name,
        "homepage": urls.dataset_url(package.type, package.name, qualified=True),
    }
    digest = hashlib.sha256(json.dumps(
        [FORMAT_VERSION, config.current().package_compresslevel, head, fingerprint],
        sort_keys=True, default=str).encode()).hexdigest()
    return Plan(package.id, package.name, members, entries, head, digest)


def _object_opener(key: str) -> Callable[[], Any]:
    def opener() -> Any:
        store = archive_store()
        if not isinstance(store, S3Store):
            raise FileNotFoundError(f"{key} is in the object store, which is not configured")
        return store.open(key)

    return opener


def built_zip(package_id: str, store: Optional[Storage] = None) -> Optional[DatasetZip]:
    """The zip built for the dataset, if any (whether up to date or not)."""
    return current(package_id, store or local_storage())


def _get_package(package_id: str) -> model.Package:
    package = active_dataset(package_id)
    if package is None:
        raise tk.ObjectNotFound(tk._("Dataset not found"))
    return package


@dataclasses.dataclass(frozen=True)
class BuildResult:
    package: DatasetZip
    built: bool  # False: the existing zip was up to date


def build(package_id: str, force: bool = False,
          store: Optional[Storage] = None) -> BuildResult:
    """Build the dataset's zip unless the one on disk is up to date.

    :raises ckan.plugins.toolkit.ObjectNotFound: no such (active) dataset
    :raises NothingToPackage: the dataset has no archived file
    :raises OSError: ``ENOSPC`` when the archive quota or the disk is full
    """
    store = store or local_storage()
    package = _get_package(package_id)
    folder = package_dir(store, package.id)
    with locked(folder):
        wanted = plan(package, store)
        if not wanted.members:
            raise NothingToPackage(package.name)
        existing = current(package.id, store)
        if (not force and existing is not None and existing.consistent
                and existing.fingerprint == wanted.fingerprint):
            return BuildResult(existing, built=False)
        if not store.has_room(wanted.total_bytes):
            raise OSError(errno.ENOSPC, "No room in the archive for the package of "
                          f"{package.name} ({wanted.total_bytes} bytes)")
        filename = sanitise_filename(package.name, default=package.id) + ".zip"
        dest = os.path.join(folder, filename)
        started = time.monotonic()
        write_zip(wanted.members, wanted.manifest, store.tmp_dir(), dest,
                  config.current().package_compresslevel)
        stat = os.stat(dest)
        write_meta(folder, {
            "fingerprint": wanted.fingerprint, "filename": filename, "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "members": len(wanted.members),
            "built_at": datetime.datetime.now(datetime.timezone.utc).replace(
                tzinfo=None).isoformat(),
        })
        for entry in os.scandir(folder):  # a zip under the dataset's old name,
            # or what a killed build left behind
            stale = entry.name.endswith(".zip") and entry.name != filename or (
                entry.name.startswith(".package-")
                and entry.name.endswith((".json", ".part")))
            if stale:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        log.info("Built the package of %s: %d files, %d bytes in %.1f s", package.name,
                 len(wanted.members), stat.st_size, time.monotonic() - started)
        built = current(package.id, store)
    assert built is not None
    return BuildResult(built, built=True)


def clean(store: Optional[Storage] = None) -> tuple[int, int]:
    """Remove the packages of datasets that are deleted or gone.

    :returns: ``(packages removed, bytes freed)``
    """
    store = store or local_storage()
    root = os.path.join(store.archive_dir, PACKAGES_DIRNAME)
    try:
        folders = [e for e in os.scandir(root) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return 0, 0
    ids = [e.name for e in folders]
    active = {row[0] for row in model.Session.query(model.Package.id).filter(
        model.Package.id.in_(ids), model.Package.state != "deleted")} if ids else set()
    removed = freed = 0
    for entry in folders:
        if entry.name in active:
            continue
        size = sum(f.stat(follow_symlinks=False).st_size for f in os.scandir(entry.path)
                   if f.is_file(follow_symlinks=False))
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
