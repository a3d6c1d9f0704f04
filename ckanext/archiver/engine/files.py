"""File-system rules used everywhere files are written or served: path
containment, fsync, atomic replacement. Standard library only."""

from __future__ import annotations

import contextlib
import os
import tempfile

__all__ = ["fsync_dir", "fsync_file", "inside", "write_atomic"]


def inside(path: str, root: str) -> bool:
    """Whether ``path`` is strictly below ``root`` (both already real paths:
    ``os.path.realpath``)."""
    return path != root and os.path.commonpath([path, root]) == root


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Make a rename in ``path`` durable (some filesystems refuse: ignored)."""
    with contextlib.suppress(OSError):
        fsync_file(path)


def write_atomic(dest: str, data: bytes, prefix: str = ".tmp-", mode: int = 0o644) -> None:
    """Write ``data`` to a temp file beside ``dest``, fsync it, rename it over
    ``dest`` and fsync the folder: readers see the old file or the new one."""
    folder = os.path.dirname(dest)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)
