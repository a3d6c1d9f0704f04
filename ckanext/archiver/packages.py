"""Dataset packages: one zip of a dataset's archived files plus a manifest.

Layout, beside the resources' folders in ``archive_dir``::

    <archive_dir>/packages/<package_id>/<dataset name>.zip
    <archive_dir>/packages/<package_id>/package.json   fingerprint, size, time
    <archive_dir>/packages/<package_id>/.lock          one builder at a time

The zip holds ``data/<file name>`` for every active resource with an
archived file (or an uploaded one) and ``datapackage.json`` (a Frictionless
Data Package: each resource's URL, sha256, size, status and archive time).

It is written with the standard library's ``zipfile`` (ZIP64 on) to a temp
file in ``<archive_dir>/.tmp`` (same filesystem), copying each file in 1 MB
chunks, so memory does not grow with the size of the dataset; it is
fsync'ed and moved into place with an atomic rename. It is rebuilt only
when its fingerprint changes: the members' zip paths, sizes and sha256,
and the resources' ids, names, URLs and broken / not broken state (a
routine re-check that finds the same files rebuilds nothing).

Entry points: :func:`build` (``ckan archiver package``, the download view
for small datasets), the Celery task :func:`build_package` (large datasets,
``archiver_package_request``, and ``package_on_archived`` through
:func:`on_package_archived`, the ``archiver:package-archived`` signal
listener).
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
import re
import tempfile
import time
import urllib.parse
import zipfile
from typing import Any, Callable, Iterator, Optional, Sequence

import ckan.plugins.toolkit as tk
from celery import shared_task
from ckan import model

from ckanext.archiver import backends, celery_app, interfaces
from ckanext.archiver import queue as archiver_queue
from ckanext.archiver import status as st
from ckanext.archiver.model import Archival
from ckanext.archiver.storage import Storage, sanitise_filename

__all__ = [
    "Member", "Plan", "Package", "NothingToPackage", "build", "plan",
    "current", "write_zip", "queue_build", "request_build", "build_package",
    "on_package_archived", "signal_subscriptions", "package_url", "clean",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PACKAGES_DIRNAME = "packages"
MANIFEST_NAME = "datapackage.json"
META_NAME = "package.json"
LOCK_NAME = ".lock"
CHUNK = 1 << 20
LOCK_TIMEOUT = 3600
PENDING_TTL = 3600
# Formats that deflate cannot shrink: always stored.
_COMPRESSED = frozenset("""
    zip gz tgz bz2 xz zst 7z rar jar whl apk docx xlsx pptx odt ods odp epub
    png jpg jpeg gif webp avif heic mp3 mp4 m4a ogg oga ogv webm mkv mov avi
    pdf parquet feather arrow nc h5 hdf5 kmz gpkg
""".split())
_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")


class NothingToPackage(LookupError):
    """The dataset has no archived file to put in a package."""


# ---------------------------------------------------------------------------
# What goes in


@dataclasses.dataclass(frozen=True)
class Member:
    """One file of the zip."""

    resource_id: str
    source: str  # absolute path of the archived (or uploaded) file, or its store key
    arcname: str  # path inside the zip
    size: int
    sha256: Optional[str] = None  # as recorded by the archiver
    # an object of the S3 store: opens a streamed body; and its time
    opener: Optional[Callable[[], Any]] = None
    mtime: Optional[float] = None


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


@dataclasses.dataclass(frozen=True)
class Package:
    """A built package on disk."""

    package_id: str
    path: str
    fingerprint: str
    size: int
    members: int
    built_at: str
    consistent: bool  # package.json describes this very zip file

    @property
    def filename(self) -> str:
        return os.path.basename(self.path)

    @property
    def etag(self) -> Optional[str]:
        return self.fingerprint if self.consistent else None


def _iso(value: Optional[datetime.datetime]) -> Optional[str]:
    return value.isoformat() if value else None


def _mtime_iso(path: str) -> str:
    return datetime.datetime.fromtimestamp(
        os.stat(path).st_mtime, datetime.timezone.utc).replace(tzinfo=None).isoformat()


def _inside(path: str, root: str) -> bool:
    return path != root and os.path.commonpath([path, root]) == root


def _source_path(resource: model.Resource, archival: Optional[Archival],
                 store: Storage) -> Optional[str]:
    """The real path of the resource's kept file, when it is a regular file
    where the archiver puts it (its own folder in archive_dir, or CKAN's
    storage for an upload); None otherwise."""
    if archival is None or not archival.cache_filepath:
        return None
    recorded = os.path.realpath(archival.cache_filepath)
    if resource.url_type == "upload":
        from ckan.lib import uploader

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
        if path != recorded or not _inside(path, store.archive_dir):
            return None
    return path if os.path.isfile(path) else None


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
    store = store or _storage()
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
        key = backends.store_key(a.cache_filepath) if a is not None else None
        source = key or _source_path(res, a, store)
        url = res.url or ""
        if res.url_type == "upload" and url and "/" not in url:
            url = tk.url_for(f"{package.type or 'dataset'}_resource.download", id=package.id,
                             resource_id=res.id, filename=url, qualified=True)
        status_id = a.status_id if a else None
        entry: dict[str, Any] = {
            "name": res.id,
            "title": res.name or None,
            "path": url,
            "url": url,
            "format": res.format or None,
            "archiver": {
                "resource_id": res.id,
                "included": source is not None,
                "status_id": status_id,
                "status": st.text(status_id),
                "is_broken": a.is_broken if a else None,
                "reason": a.reason if a else None,
                "checked_at": _iso(a.updated) if a else None,
                "last_success": _iso(a.last_success) if a else None,
            },
        }
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
            entry["archiver"].update(archived_at=_iso(a.updated), sha256=a.sha256)
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
            entry["archiver"].update(archived_at=_mtime_iso(source), sha256=a.sha256)
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
        "homepage": package_page_url(package),
    }
    digest = hashlib.sha256(json.dumps(
        [FORMAT_VERSION, _compresslevel(), head, fingerprint],
        sort_keys=True, default=str).encode()).hexdigest()
    return Plan(package.id, package.name, members, entries, head, digest)


# ---------------------------------------------------------------------------
# Writing (standard library only: the benchmark runs this part alone)


def _dos_time(timestamp: float) -> tuple[int, int, int, int, int, int]:
    t = time.gmtime(max(timestamp, 315532800))  # zip times start in 1980
    return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)


def _compressible(name: str) -> bool:
    lower = name.lower()
    return not any(lower.endswith("." + ext) for ext in _COMPRESSED)


def _zipinfo(name: str, timestamp: float, level: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_dos_time(timestamp))
    info.external_attr = 0o644 << 16
    if level > 0 and _compressible(name):
        info.compress_type = zipfile.ZIP_DEFLATED
        if hasattr(info, "compress_level"):  # Python >= 3.13
            info.compress_level = level
        else:
            info._compresslevel = level
    else:
        info.compress_type = zipfile.ZIP_STORED
    return info


def _add_file(zf: zipfile.ZipFile, member: Member, level: int) -> str:
    """Copy one file into the zip in chunks; returns the sha256 of what was
    read (the bytes actually in the zip)."""
    digest = hashlib.sha256()
    src_cm = member.opener() if member.opener else open(member.source, "rb")
    with contextlib.closing(src_cm) as src:
        if member.opener:  # streamed from the object store
            mtime, size = member.mtime or time.time(), member.size
        else:
            stat = os.fstat(src.fileno())
            mtime, size = stat.st_mtime, stat.st_size
        info = _zipinfo(member.arcname, mtime, level)
        info.file_size = size
        with zf.open(info, "w", force_zip64=True) as dst:
            while True:
                chunk = src.read(CHUNK)
                if not chunk:
                    break
                digest.update(chunk)
                dst.write(chunk)
    return digest.hexdigest()


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_zip(members: Sequence[Member], manifest: Callable[[dict[str, str]], bytes],
              tmp_dir: str, dest: str, compresslevel: int = 0) -> dict[str, str]:
    """Write the zip of ``members`` plus ``datapackage.json`` (``manifest``
    is called with ``{resource_id: sha256}`` of the bytes read) to a temp
    file in ``tmp_dir``, then move it to ``dest`` atomically.

    :returns: the sha256 of each member, by resource id.
    """
    level = min(max(int(compresslevel or 0), 0), 9)
    fd, tmp = tempfile.mkstemp(prefix="package-", suffix=".zip.part", dir=tmp_dir)
    hashes: dict[str, str] = {}
    try:
        with os.fdopen(fd, "w+b") as raw:
            with zipfile.ZipFile(raw, "w", allowZip64=True) as zf:
                for member in members:
                    hashes[member.resource_id] = _add_file(zf, member, level)
                    recorded = member.sha256
                    if recorded and recorded != hashes[member.resource_id]:
                        log.warning("Archived file of resource %s changed while it was "
                                    "zipped (sha256 %s, recorded %s)", member.resource_id,
                                    hashes[member.resource_id], recorded)
                zf.writestr(_zipinfo(MANIFEST_NAME, time.time(), 6), manifest(hashes))
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(dest))
    return hashes


# ---------------------------------------------------------------------------
# Where packages live


def _storage() -> Storage:
    """Where zips are built and kept: archive_dir (in S3 mode too; the
    members are then streamed from the bucket)."""
    return backends.local_store()


def _object_opener(key: str) -> Callable[[], Any]:
    def opener() -> Any:
        store = backends.store()
        if not isinstance(store, backends.S3Store):
            raise FileNotFoundError(f"{key} is in the object store, which is not configured")
        return store.open(key)

    return opener


def _compresslevel() -> int:
    return min(max(int(tk.config.get("ckanext.archiver.package_compresslevel") or 0), 0), 9)


def package_dir(store: Storage, package_id: str) -> str:
    """``<archive_dir>/packages/<package_id>``; refuses an id that is not a
    plain name or a folder that resolves outside the archive."""
    if not isinstance(package_id, str) or not _ID.match(package_id):
        raise ValueError(f"Not a valid dataset id for the archive: {package_id!r}")
    path = os.path.join(store.archive_dir, PACKAGES_DIRNAME, package_id)
    real = os.path.realpath(path)
    if real != path or not _inside(real, store.archive_dir):
        raise ValueError(f"Package folder would be outside the archive: {package_id!r}")
    return path


def current(package_id: str, store: Optional[Storage] = None) -> Optional[Package]:
    """The package built for the dataset, if any (whether up to date or not)."""
    store = store or _storage()
    folder = package_dir(store, package_id)
    try:
        with open(os.path.join(folder, META_NAME), encoding="utf-8") as f:
            meta = json.load(f)
        filename = meta["filename"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(filename, str) or filename != sanitise_filename(filename) \
            or not filename.endswith(".zip"):
        return None
    path = os.path.join(folder, filename)
    if os.path.realpath(path) != path:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    consistent = stat.st_size == meta.get("size") and stat.st_mtime_ns == meta.get("mtime_ns")
    return Package(package_id, path, str(meta.get("fingerprint") or ""), stat.st_size,
                   int(meta.get("members") or 0), str(meta.get("built_at") or ""),
                   consistent)


@contextlib.contextmanager
def _locked(folder: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """One builder per dataset at a time (flock on ``.lock``)."""
    import fcntl

    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(folder, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        give_up = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > give_up:
                    raise TimeoutError(f"Another build of {folder} is still running") from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_meta(folder: str, meta: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".package-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(folder, META_NAME))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def _get_package(package_id: str) -> model.Package:
    package = model.Package.get(package_id)
    if package is None or package.state == "deleted":
        raise tk.ObjectNotFound(tk._("Dataset not found"))
    return package


@dataclasses.dataclass(frozen=True)
class BuildResult:
    package: Package
    built: bool  # False: the existing zip was up to date


def build(package_id: str, force: bool = False,
          store: Optional[Storage] = None) -> BuildResult:
    """Build the dataset's zip unless the one on disk is up to date.

    :raises ckan.plugins.toolkit.ObjectNotFound: no such (active) dataset
    :raises NothingToPackage: the dataset has no archived file
    :raises OSError: ``ENOSPC`` when the archive quota or the disk is full
    """
    store = store or _storage()
    package = _get_package(package_id)
    folder = package_dir(store, package.id)
    with _locked(folder):
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
        write_zip(wanted.members, wanted.manifest, store.tmp_dir(), dest, _compresslevel())
        stat = os.stat(dest)
        _write_meta(folder, {
            "fingerprint": wanted.fingerprint, "filename": filename, "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "members": len(wanted.members),
            "built_at": datetime.datetime.now(datetime.timezone.utc).replace(
                tzinfo=None).isoformat(),
        })
        for entry in os.scandir(folder):  # a zip under the dataset's old name,
            # or what a killed build left behind
            stale = entry.name.endswith(".zip") and entry.name != filename or (
                entry.name.startswith(".package-") and entry.name.endswith(".json"))
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
    import shutil

    store = store or _storage()
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


# ---------------------------------------------------------------------------
# URLs and mails


def package_page_url(package: model.Package) -> str:
    return tk.url_for(f"{package.type or 'dataset'}.read", id=package.name, qualified=True)


def package_url(package: model.Package) -> str:
    """Absolute URL of the dataset's zip."""
    return tk.url_for("archiver_extra.package_zip", id=package.name, qualified=True)


def _mail_user(user_id: str, package_id: str, result: Optional[BuildResult],
               error: Optional[str]) -> None:
    from ckan.lib.mailer import MailerException, mail_recipient

    from ckanext.archiver.notify import render_email

    user = model.User.get(user_id)
    package = model.Package.get(package_id)
    if user is None or not user.email or package is None:
        return
    extra = {
        "user": user, "package": package, "dataset_url": package_page_url(package),
        "site_title": tk.config.get("ckan.site_title"),
        "zip_url": package_url(package) if result else None,
        "size": result.package.size if result else None,
        "files": result.package.members if result else None,
        "error": error,
    }
    subject = render_email("archiver/extra/package_ready_subject.txt", extra).strip()
    body = render_email("archiver/extra/package_ready_email.txt", extra)
    try:
        mail_recipient(user.display_name, user.email, subject, body)
    except MailerException:
        log.exception("Could not mail %s about the package of %s", user.name, package.name)


# ---------------------------------------------------------------------------
# Background builds


def _pending_key(package_id: str) -> str:
    return "archiver:{}:package-pending:{}".format(tk.config.get("ckan.site_id"), package_id)


def queue_build(package_id: str, user_id: Optional[str] = None) -> bool:
    """Queue a build on the bulk queue. Without a user to mail, a dataset
    already waiting is not queued twice. Returns whether it was queued."""
    if user_id is None:
        r = archiver_queue.redis_client()
        if not r.set(_pending_key(package_id), "1", nx=True, ex=PENDING_TTL):
            return False
    celery_app.get_app()
    try:
        build_package.apply_async(args=[package_id], kwargs={"user_id": user_id},
                                  queue=celery_app.queue_name("bulk", tk.config))
    except Exception:
        if user_id is None:
            archiver_queue.redis_client().delete(_pending_key(package_id))
        raise
    return True


REQUEST_TTL = 600


def request_build(package_id: str, user_id: str) -> bool:
    """A user asked for the zip by email: queue a build that mails them,
    unless they asked for the same dataset in the last ten minutes.
    Returns whether it was queued."""
    key = "archiver:{}:package-request:{}:{}".format(
        tk.config.get("ckan.site_id"), package_id, user_id)
    r = archiver_queue.redis_client()
    if not r.set(key, "1", nx=True, ex=REQUEST_TTL):
        return False
    try:
        return queue_build(package_id, user_id=user_id)
    except Exception:
        r.delete(key)
        raise


# Acknowledged when it starts (not acks_late): a build of many gigabytes can
# outlast the broker's visibility timeout, and must not be handed to a
# second worker meanwhile. A build lost with its worker is requested again
# by the next archival or request.
@shared_task(name="ckanext.archiver.build_package", acks_late=False,
             reject_on_worker_lost=False, soft_time_limit=6 * 3600,
             time_limit=6 * 3600 + 300)
def build_package(package_id: str, user_id: Optional[str] = None) -> Optional[int]:
    """Build a dataset's zip (if out of date); mail ``user_id`` a link."""
    try:
        if user_id is None:
            with contextlib.suppress(Exception):
                archiver_queue.redis_client().delete(_pending_key(package_id))
        result: Optional[BuildResult] = None
        error: Optional[str] = None
        try:
            result = build(package_id)
        except tk.ObjectNotFound:
            return None
        except NothingToPackage:
            error = tk._("The dataset has no archived files to package.")
        except Exception as e:
            log.exception("Building the package of %s failed", package_id)
            error = tk._("The package could not be built ({error}).").format(
                error=type(e).__name__)
        if user_id:
            _mail_user(user_id, package_id, result, error)
        return result.package.size if result else None
    finally:
        model.Session.remove()


def on_package_archived(sender: Any, **kwargs: Any) -> None:
    """``archiver:package-archived`` listener: with ``package_on_archived``,
    queue a background build of the dataset's zip (built only if a file
    changed). Never raises."""
    if not tk.config.get("ckanext.archiver.package_on_archived"):
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
