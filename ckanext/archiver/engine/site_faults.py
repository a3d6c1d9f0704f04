"""Faults of the site, not of the link: the archive folder, the disk, the
database, the worker. They never change a link's verdict: the row keeps the
status of its last real check and records the fault beside it
(``site_fault``, ``site_fault_at``), which sysadmins see and the status
figures count apart.

Reasons name the real cause, e.g. ``archive_dir /x is not a directory``.
"""

from __future__ import annotations

import errno
import os
from typing import Optional

from ckanext.archiver import status as st

__all__ = ["archive_dir_problem", "os_error_reason", "quota_full", "is_site_fault",
           "PUBLIC_REASON"]

# what a row that never had a real check says in public (its real cause is
# in ``site_fault``)
PUBLIC_REASON = st.N_("System error during archival")


def is_site_fault(status_id: Optional[int]) -> bool:
    return status_id == st.SYSTEM_ERROR


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while path and not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def archive_dir_problem(path: str, error: Optional[BaseException] = None) -> str:
    """One line saying what is wrong with ``archive_dir`` (``path``)."""
    label = f"archive_dir {path}"
    if os.path.lexists(path) and not os.path.isdir(path):
        return f"{label} is not a directory"
    if not os.path.lexists(path):
        near = _nearest_existing(path)
        if near and os.path.lexists(near) and not os.path.isdir(near):
            return f"{label} cannot be created: {near} is not a directory"
        detail = _strerror(error) if error is not None else "it does not exist"
        return f"{label} cannot be created ({detail})"
    if not os.access(path, os.W_OK | os.X_OK):
        if isinstance(error, OSError) and error.errno is not None:
            return f"{label} is not writable ({_strerror(error)})"
        return f"{label} is not writable by the worker"
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{label} is full ({_strerror(error)})"
    if error is not None:
        return f"{label} is not usable ({_strerror(error)})"
    return f"{label} is not usable"


def quota_full(archive_dir: str, limit: int) -> str:
    """The reason when ``max_archive_bytes`` is reached."""
    return f"archive_dir {archive_dir} is full (max_archive_bytes {limit} reached)"


def os_error_reason(e: BaseException, archive_dir: str) -> str:
    """The reason of an error met while storing a file."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"archive_dir {archive_dir} is full ({_strerror(e)})"
    if isinstance(e, OSError) and e.errno is not None:
        where = f" at {e.filename}" if getattr(e, "filename", None) else ""
        return f"{type(e).__name__}{where} ({_strerror(e)})"
    return type(e).__name__


def _strerror(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno is not None:
        return os.strerror(e.errno)
    return type(e).__name__
