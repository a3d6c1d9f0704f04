"""Where archived files live. Standard library only.

Layout (the same as the older ckanext-archiver, so existing archives and
cache URLs keep working)::

    <archive_dir>/<resource_id[:2]>/<resource_id>/<filename>
    <archive_dir>/.tmp/                 downloads in progress (same filesystem)

A file is first written to ``.tmp``, then fsync'ed and moved into place with
an atomic ``os.replace``: readers see the old file or the new one, never half
of one. Nothing is ever written outside ``archive_dir``: :meth:`Storage.path_for`
refuses any resource id or filename that would resolve elsewhere (symlinks
included).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import shutil
import time
import unicodedata
from typing import Callable, Iterator, Optional, Union
from urllib.parse import quote

from ckanext.archiver.engine.files import fsync_dir, fsync_file, inside
from ckanext.archiver.engine.quota import UsedBytes

__all__ = ["Staged", "Storage", "clean_filename", "sanitise_filename"]

TMP_DIRNAME = ".tmp"
PREVIOUS_SUFFIX = ".previous"
STALE_TMP_SECONDS = 3600

_FORBIDDEN_CHARS = re.compile(r'[<>:"/\\|?*]')
_RESOURCE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")


def sanitise_filename(name: Optional[str], default: str = "resource", max_len: int = 180) -> str:
    """A safe file name derived from ``name``; never empty (``default``, then
    ``"resource"``, when nothing usable is left). See :func:`clean_filename`."""
    return clean_filename(name, max_len) or clean_filename(default, max_len) or "resource"


def clean_filename(name: Optional[str], max_len: int = 180) -> str:
    """``name`` made safe, or ``""`` when nothing usable is left.

    Only the last path segment is kept (``../../etc/passwd`` -> ``passwd``),
    unicode is NFC-normalised, control characters (NUL, CR, LF...) are
    dropped, characters that are troublesome in file names or URLs
    (``<>:"/\\|?*``) become ``_``, leading/trailing dots and spaces are
    stripped (so never a hidden file, never ``..``), and the name is cut to
    ``max_len`` UTF-8 bytes keeping its extension.
    """
    name = unicodedata.normalize("NFC", name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp"))
    name = _FORBIDDEN_CHARS.sub("_", name)
    name = " ".join(name.split())  # collapse odd whitespace
    name = name.strip(" .")
    return _truncate(name, max(max_len, 16)) if name else ""


def _truncate(name: str, max_bytes: int) -> str:
    if len(name.encode("utf-8")) <= max_bytes:
        return name
    stem, ext = os.path.splitext(name)
    if len(ext.encode("utf-8")) > 16 or not stem:
        stem, ext = name, ""
    budget = max_bytes - len(ext.encode("utf-8"))
    stem = stem.encode("utf-8")[:budget].decode("utf-8", "ignore").rstrip(" .")
    return (stem or "resource") + ext


@dataclasses.dataclass(frozen=True)
class Staged:
    """A new file moved into place, its row not yet committed."""

    resource_id: str
    path: str
    backup: Optional[str] = None  # the previous file of the same name, kept aside


class Storage(UsedBytes):
    """The archive directory.

    :param archive_dir: where files are kept (created if missing).
    :param cache_url_root: public URL prefix serving ``archive_dir`` (or None).
    :param max_archive_bytes: quota for the whole archive, 0 = none.
    """

    def __init__(
        self, archive_dir: str, cache_url_root: Optional[str] = None, max_archive_bytes: int = 0
    ):
        if not archive_dir:
            raise ValueError("archive_dir is not set")
        os.makedirs(archive_dir, exist_ok=True)
        self.archive_dir = os.path.realpath(archive_dir)
        self.cache_url_root = cache_url_root
        self._init_used(max_archive_bytes)

    # -- paths -----------------------------------------------------------

    def tmp_dir(self) -> str:
        """``<archive_dir>/.tmp``, created; on the archive's filesystem so the
        final move is an atomic rename."""
        path = os.path.join(self.archive_dir, TMP_DIRNAME)
        os.makedirs(path, exist_ok=True)
        return path

    def _resource_dir(self, resource_id: str) -> str:
        if not isinstance(resource_id, str) or not _RESOURCE_ID.match(resource_id):
            raise ValueError(f"Not a valid resource id for the archive: {resource_id!r}")
        path = os.path.join(self.archive_dir, resource_id[:2], resource_id)
        real = os.path.realpath(path)
        if real != path or not inside(real, self.archive_dir):
            raise ValueError(f"Resource folder would be outside the archive: {resource_id!r}")
        return path

    def path_for(self, resource_id: str, filename: str) -> str:
        """``<archive_dir>/<rid[:2]>/<rid>/<filename>``.

        :raises ValueError: when the resource id or filename is not a plain
            name, or the path resolves outside ``archive_dir`` (symlinks).
        """
        folder = self._resource_dir(resource_id)
        if not filename or filename != sanitise_filename(filename):
            raise ValueError(f"Not a safe file name: {filename!r}")
        path = os.path.join(folder, filename)
        if os.path.realpath(path) != path:
            raise ValueError(f"File path would be outside the archive: {filename!r}")
        return path

    def cache_url(self, resource_id: str, filename: str) -> Optional[str]:
        """Public URL of the archived file, None without ``cache_url_root``."""
        if not self.cache_url_root:
            return None
        self.path_for(resource_id, filename)  # same validation
        root = self.cache_url_root.rstrip("/") + "/"
        return f"{root}{resource_id[:2]}/{resource_id}/{quote(filename)}"

    # -- writing ---------------------------------------------------------

    def store(self, resource_id: str, tmp_path: str, filename: str) -> str:
        """Move ``tmp_path`` into place for the resource, remove its other
        files (an old filename) and return the final path: :meth:`stage`
        then :meth:`keep` at once, for callers with no row to commit."""
        staged = self.stage(resource_id, tmp_path, filename)
        self.keep(staged)
        return staged.path

    def stage(self, resource_id: str, tmp_path: str, filename: str) -> Staged:
        """Move ``tmp_path`` into place for the resource; the resource's
        previous file stays until :meth:`keep` (the row naming the new file
        is committed) or comes back with :meth:`discard` (it was not).

        The data is fsync'ed and the rename is atomic. When the new file has
        the previous one's name, the previous one is kept as a hard link
        named ``.<filename>.previous`` (never a name :func:`clean_filename`
        gives, so never an archived file's name)."""
        path = self.path_for(resource_id, filename)
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        self.path_for(resource_id, filename)  # re-check now the folders exist
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        os.chmod(tmp_path, 0o644)  # temp files are 0600; the web server must read it
        backup = None
        if os.path.lexists(path):
            backup = os.path.join(folder, f".{filename}{PREVIOUS_SUFFIX}")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(backup)
            os.link(path, backup)
        try:
            os.replace(tmp_path, path)
        except OSError as e:
            if e.errno != errno.EXDEV:
                if backup:
                    os.unlink(backup)
                raise
            staging = path + ".incoming"  # different filesystem: copy, then rename
            shutil.copyfile(tmp_path, staging)
            fsync_file(staging)
            os.replace(staging, path)
            os.unlink(tmp_path)
        fsync_dir(folder)
        self._adjust_used(size)
        return Staged(resource_id, path, backup)

    def keep(self, staged: Staged) -> None:
        """The row naming ``staged.path`` is committed: remove the
        resource's other files (its previous file among them)."""
        folder, name = os.path.split(staged.path)
        freed = 0
        for entry in _scandir(folder):
            if entry.name != name:
                freed += _remove_entry(entry)[1]
        self._adjust_used(-freed)

    def discard(self, staged: Staged) -> None:
        """The row naming ``staged.path`` was not committed: remove the new
        file and put the previous one back where the row still names it."""
        freed = _size_of(staged.path)
        if staged.backup and os.path.lexists(staged.backup):
            os.replace(staged.backup, staged.path)
            freed = max(freed - _size_of(staged.path), 0)
        elif not staged.backup:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged.path)
        self._adjust_used(-freed)

    def remove(self, resource_id: str) -> int:
        """Delete the resource's folder; returns the bytes freed."""
        folder = self._resource_dir(resource_id)
        if not os.path.isdir(folder):
            return 0
        freed = _remove_tree(folder)[1]
        try:
            os.rmdir(os.path.dirname(folder))  # the <rid[:2]> folder, if now empty
        except OSError:
            pass
        self._adjust_used(-freed)
        return freed

    # -- quota -----------------------------------------------------------

    def _count_used(self) -> int:
        """Bytes kept by the archive, downloads in progress (``.tmp``) not
        counted (the quota's count: ``engine.quota``)."""
        return sum(_tree_size(e.path) if e.is_dir(follow_symlinks=False) else _size(e)
                   for e in _scandir(self.archive_dir) if e.name != TMP_DIRNAME)

    def has_room(self, nbytes: int, on_disk: bool = False) -> bool:
        """Whether ``nbytes`` more fit in the quota and on the disk.
        ``on_disk``: they are already written (a download in ``.tmp``, to be
        renamed into place), so the disk has them: only the quota counts."""
        nbytes = max(int(nbytes or 0), 0)
        if not on_disk and shutil.disk_usage(self.archive_dir).free <= nbytes:
            return False
        return self.within_quota(nbytes)

    # -- housekeeping ----------------------------------------------------

    def resource_ids(self) -> Iterator[str]:
        """Ids of the resources that have a folder in the archive."""
        for prefix in _scandir(self.archive_dir):
            if prefix.name.startswith(".") or not prefix.is_dir(follow_symlinks=False):
                continue
            for folder in _scandir(prefix.path):
                if (
                    folder.name[:2] == prefix.name
                    and _RESOURCE_ID.match(folder.name)
                    and folder.is_dir(follow_symlinks=False)
                ):
                    yield folder.name

    def clean(
        self, keep: Union[Callable[[str], bool], set, frozenset], dry_run: bool = False,
        files: Optional[dict] = None,
    ) -> tuple:
        """Remove the folders of resources not in ``keep`` (a set of ids or a
        predicate) and temp files older than an hour.

        ``files`` (resource id -> the path its row names, or None): in the
        folders of kept resources listed there, files older than an hour
        that the row does not name are orphans (left by a worker that died
        between committing a row and removing the file it replaced) and are
        removed too.

        :returns: ``(files_removed, bytes_freed)`` (what would be removed when
            ``dry_run``).
        """
        wanted = keep if callable(keep) else (lambda rid: rid in keep)
        count = freed = 0
        cutoff = time.time() - STALE_TMP_SECONDS
        for rid in list(self.resource_ids()):
            if wanted(rid):
                if files is not None and rid in files:
                    n, size = self._remove_orphans(rid, files[rid], cutoff, dry_run)
                    count, freed = count + n, freed + size
                continue
            n, size = _tree_size(self._resource_dir(rid), count=True)
            if not dry_run:
                self.remove(rid)
            count, freed = count + n, freed + size
        for entry in _scandir(os.path.join(self.archive_dir, TMP_DIRNAME)):
            try:
                if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                    continue
            except FileNotFoundError:
                continue
            n, size = _tree_size(entry.path, count=True) if entry.is_dir() else (1, _size(entry))
            if not dry_run:
                _remove_entry(entry)
            count, freed = count + n, freed + size
        if not dry_run:
            self._adjust_used(-freed)
        return count, freed

    def _remove_orphans(self, resource_id: str, named: Optional[str], cutoff: float,
                        dry_run: bool) -> tuple:
        """Files of a kept resource's folder older than ``cutoff`` that its
        row (naming ``named``) does not name."""
        count = freed = 0
        named = os.path.realpath(named) if named else None  # rows may name it via a symlink
        for entry in _scandir(self._resource_dir(resource_id)):
            if named and entry.path == named:
                continue
            try:
                if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                    continue  # perhaps a download being recorded right now
            except FileNotFoundError:
                continue
            n, size = _tree_size(entry.path, count=True) if entry.is_dir(
                follow_symlinks=False) else (1, _size(entry))
            if not dry_run:
                _remove_entry(entry)
            count, freed = count + n, freed + size
        return count, freed


# -- helpers -------------------------------------------------------------


def _scandir(path: str) -> list:
    try:
        return list(os.scandir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _size_of(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except FileNotFoundError:
        return 0


def _size(entry: os.DirEntry) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_size
    except FileNotFoundError:
        return 0


def _tree_size(path: str, count: bool = False):
    files = total = 0
    for entry in _scandir(path):
        if entry.is_dir(follow_symlinks=False):
            n, size = _tree_size(entry.path, count=True)
        else:
            n, size = 1, _size(entry)
        files, total = files + n, total + size
    return (files, total) if count else total


def _remove_entry(entry: os.DirEntry) -> tuple:
    if entry.is_dir(follow_symlinks=False):
        return _remove_tree(entry.path)
    size = _size(entry)
    try:
        os.unlink(entry.path)
    except FileNotFoundError:
        return 0, 0
    return 1, size


def _remove_tree(path: str) -> tuple:
    files, size = _tree_size(path, count=True)
    shutil.rmtree(path, ignore_errors=True)
    return files, size
