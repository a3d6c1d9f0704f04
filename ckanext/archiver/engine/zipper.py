"""Dataset zips on disk: where they live, how one is written, which one is
there. Standard library only (the benchmark runs this part alone).

Layout, beside the resources' folders in ``archive_dir``::

    <archive_dir>/packages/<package_id>/<dataset name>.zip
    <archive_dir>/packages/<package_id>/package.json   fingerprint, size, time
    <archive_dir>/packages/<package_id>/.lock          one builder at a time

The zip is written with ``zipfile`` (ZIP64 on) to a temp file in
``<archive_dir>/.tmp`` (same filesystem), copying each file in 1 MB chunks,
fsync'ed and moved into place with an atomic rename. What goes in it (from
the database) is decided by ``worker/zips.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import time
import zipfile
from typing import Any, Callable, Iterator, Optional, Sequence

from ckanext.archiver.engine.files import fsync_dir, inside, write_atomic
from ckanext.archiver.engine.storage import Storage, sanitise_filename

__all__ = ["DatasetZip", "Member", "current", "package_dir", "locked", "write_meta",
           "write_zip", "write_members", "mtime_iso", "valid_package_id"]

log = logging.getLogger(__name__)

PACKAGES_DIRNAME = "packages"
MANIFEST_NAME = "datapackage.json"
META_NAME = "package.json"
LOCK_NAME = ".lock"
CHUNK = 1 << 20
LOCK_TIMEOUT = 3600


_COMPRESSED = frozenset("""
    zip gz tgz bz2 xz zst 7z rar jar whl apk docx xlsx pptx odt ods odp epub
    png jpg jpeg gif webp avif heic mp3 mp4 m4a ogg oga ogv webm mkv mov avi
    pdf parquet feather arrow nc h5 hdf5 kmz gpkg
""".split())
_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")


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


@dataclasses.dataclass(frozen=True)
class DatasetZip:
    """A built package (on disk, or in the object store: ``engine.zipper_s3``)."""

    package_id: str
    path: str
    fingerprint: str
    size: int
    members: int
    built_at: str
    consistent: bool  # package.json describes this very zip file
    key: Optional[str] = None  # S3 mode: the zip's key in the store (path: its s3:// URL)

    @property
    def filename(self) -> str:
        return os.path.basename(self.path)

    @property
    def etag(self) -> Optional[str]:
        return self.fingerprint if self.consistent else None


def mtime_iso(path: str) -> str:
    return datetime.datetime.fromtimestamp(
        os.stat(path).st_mtime, datetime.timezone.utc).replace(tzinfo=None).isoformat()


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
    source = member.opener() if member.opener else open(member.source, "rb")
    with contextlib.closing(source) as src:
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


def write_members(raw: Any, members: Sequence[Member],
                  manifest: Callable[[dict[str, str]], bytes],
                  compresslevel: int = 0) -> dict[str, str]:
    """Write the zip of ``members`` plus ``datapackage.json`` (``manifest``
    is called with ``{resource_id: sha256}`` of the bytes read) into the
    binary file ``raw``: a temp file, or a stream that can only be written
    (``engine.zipper_s3``: zipfile then writes data descriptors).

    :returns: the sha256 of each member, by resource id.
    """
    level = min(max(int(compresslevel or 0), 0), 9)
    hashes: dict[str, str] = {}
    with zipfile.ZipFile(raw, "w", allowZip64=True) as zf:
        for member in members:
            hashes[member.resource_id] = _add_file(zf, member, level)
            recorded = member.sha256
            if recorded and recorded != hashes[member.resource_id]:
                log.warning("Archived file of resource %s changed while it was "
                            "zipped (sha256 %s, recorded %s)", member.resource_id,
                            hashes[member.resource_id], recorded)
        zf.writestr(_zipinfo(MANIFEST_NAME, time.time(), 6), manifest(hashes))
    return hashes


def write_zip(members: Sequence[Member], manifest: Callable[[dict[str, str]], bytes],
              tmp_dir: str, dest: str, compresslevel: int = 0) -> dict[str, str]:
    """:func:`write_members` into a temp file in ``tmp_dir``, fsync'ed, then
    moved to ``dest`` atomically.

    :returns: the sha256 of each member, by resource id.
    """
    fd, tmp = tempfile.mkstemp(prefix="package-", suffix=".zip.part", dir=tmp_dir)
    try:
        with os.fdopen(fd, "w+b") as raw:
            hashes = write_members(raw, members, manifest, compresslevel)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(dest))
    return hashes


def valid_package_id(package_id: str) -> str:
    """``package_id`` when it is a plain name; :class:`ValueError` otherwise."""
    if not isinstance(package_id, str) or not _ID.match(package_id):
        raise ValueError(f"Not a valid dataset id for the archive: {package_id!r}")
    return package_id


def package_dir(store: Storage, package_id: str) -> str:
    """``<archive_dir>/packages/<package_id>``; refuses an id that is not a
    plain name or a folder that resolves outside the archive."""
    valid_package_id(package_id)
    path = os.path.join(store.archive_dir, PACKAGES_DIRNAME, package_id)
    real = os.path.realpath(path)
    if real != path or not inside(real, store.archive_dir):
        raise ValueError(f"Package folder would be outside the archive: {package_id!r}")
    return path


def current(package_id: str, store: Storage) -> Optional[DatasetZip]:
    """The zip built for the dataset, if any (whether up to date or not)."""
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
    return DatasetZip(package_id, path, str(meta.get("fingerprint") or ""), stat.st_size,
                   int(meta.get("members") or 0), str(meta.get("built_at") or ""),
                   consistent)


@contextlib.contextmanager
def locked(folder: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """One builder per dataset at a time (flock on ``.lock``)."""
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


def write_meta(folder: str, meta: dict[str, Any]) -> None:
    """``package.json``, replaced atomically."""
    write_atomic(os.path.join(folder, META_NAME), json.dumps(meta, indent=2).encode("utf-8"),
                 prefix=".package-")
