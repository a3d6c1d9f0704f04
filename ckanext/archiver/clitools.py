"""What the ``ckan archiver`` commands print: counts with plurals, times a
person can read, resources waiting per queue, following a run, the
archive's disk use and the housekeeping reports (size, orphans).

Kept out of ``cli.py`` so the commands stay short; nothing here prints
except :class:`Follower`, which is given its output function.
"""

from __future__ import annotations

import datetime
import errno
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import ckan.plugins.toolkit as tk
import sqlalchemy as sa
from ckan import model

from ckanext.archiver import queue
from ckanext.archiver.model import Archival, utcnow
from ckanext.archiver.packages import PACKAGES_DIRNAME
from ckanext.archiver.storage import TMP_DIRNAME

# -- words and numbers -------------------------------------------------------


def plural(n: int, singular: str, plural_form: Optional[str] = None) -> str:
    """``1 resource``, ``2 resources`` (``plural_form`` when not +s)."""
    word = singular if n == 1 else (plural_form or singular + "s")
    return f"{n} {word}"


def human_bytes(n: Optional[int]) -> str:
    if n is None:
        return "-"
    n = int(n)  # sums come back from PostgreSQL as Decimal
    if n < 1000:
        return plural(int(n), "byte")
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return plural(int(n), "byte")


def human_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    seconds = max(int(round(seconds)), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def human_time(value: Optional[datetime.datetime],
               now: Optional[datetime.datetime] = None) -> str:
    """A stored (naive UTC) time as ``2026-12-01 13:55 UTC (2h 05m ago)``."""
    if value is None:
        return "never"
    if value.tzinfo is not None:
        value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    now = now or utcnow()
    delta = (now - value).total_seconds()
    when = value.strftime("%Y-%m-%d %H:%M UTC")
    if delta >= 0:
        return f"{when} ({human_duration(delta)} ago)"
    return f"{when} (in {human_duration(-delta)})"


# -- queues ------------------------------------------------------------------

def waiting_resources() -> dict[str, int]:
    """Resources waiting on each queue (not Celery messages: a bulk message
    carries a batch). Counted from the per-resource pending marks, whose
    value is the queue. Raises the broker's errors."""
    r = queue.redis_client()
    pattern = "archiver:{}:pending:*".format(tk.config.get("ckan.site_id"))
    counts = {name: 0 for name in queue.QUEUES}
    keys: list[bytes] = []

    def count(chunk: list[bytes]) -> None:
        for value in r.mget(chunk):
            name = queue.queue_of_mark(value)
            if name in counts:
                counts[name] += 1

    for key in r.scan_iter(match=pattern, count=1000):
        keys.append(key)
        if len(keys) >= 1000:
            count(keys)
            keys = []
    if keys:
        count(keys)
    return counts


def waiting_among(resource_ids: Sequence[str]) -> int:
    """How many of ``resource_ids`` are waiting on a queue now."""
    r = queue.redis_client()
    waiting = 0
    for start in range(0, len(resource_ids), 1000):
        chunk = resource_ids[start:start + 1000]
        with r.pipeline(transaction=False) as pipe:
            for rid in chunk:
                pipe.exists(queue.pending_key(rid))
            waiting += sum(1 for found in pipe.execute() if found)
    return waiting


# -- following a run ---------------------------------------------------------

_PROGRESS = sa.text("""
    SELECT count(*) AS done, count(*) FILTER (WHERE is_broken) AS broken
    FROM archival
    WHERE resource_id = ANY(CAST(:ids AS text[]))
      AND updated IS NOT NULL AND (queued_at IS NULL OR updated >= queued_at)
""")


@dataclass
class Progress:
    done: int
    total: int
    broken: int
    elapsed: float

    @property
    def rate(self) -> Optional[float]:
        return self.done / self.elapsed if self.elapsed > 0 and self.done else None

    @property
    def eta(self) -> Optional[float]:
        rate = self.rate
        return (self.total - self.done) / rate if rate else None

    def line(self) -> str:
        percent = 100.0 * self.done / self.total if self.total else 100.0
        rate = f"{self.rate:.1f}/s" if self.rate else "-/s"
        return (f"{self.done}/{self.total} checked ({percent:.0f}%), {rate}, "
                f"ETA {human_duration(self.eta) if self.done < self.total else '0s'}, "
                f"{self.broken} broken so far")


class Follower:
    """Polls the archival rows of a run's resources until every one has
    been checked since it was queued."""

    def __init__(self, resource_ids: Sequence[str], interval: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.ids = list(dict.fromkeys(resource_ids))
        self.interval = interval
        self.clock = clock
        self.started = clock()

    def poll(self) -> Progress:
        done = broken = 0
        for start in range(0, len(self.ids), 50000):
            row = model.Session.execute(
                _PROGRESS, {"ids": self.ids[start:start + 50000]}).one()
            done += row.done
            broken += row.broken
        model.Session.rollback()  # a fresh snapshot at the next poll
        return Progress(done, len(self.ids), broken, self.clock() - self.started)

    def __iter__(self) -> Iterator[Progress]:
        while True:
            progress = self.poll()
            yield progress
            if progress.done >= progress.total:
                return
            time.sleep(self.interval)


# -- the archive -------------------------------------------------------------

def archive_use() -> dict[str, Any]:
    """Cached files and bytes (from the archival rows), and the free space
    of the archive's file system (None when it cannot be read)."""
    files, size = model.Session.query(
        sa.func.count(Archival.id), sa.func.coalesce(sa.func.sum(Archival.size), 0),
    ).filter(Archival.cache_filepath.isnot(None)).one()
    path = tk.config.get("ckanext.archiver.archive_dir")
    free = None
    if path:
        try:
            free = shutil.disk_usage(path).free
        except OSError:
            free = None
    return {"files": int(files), "bytes": int(size), "free": free, "path": path}


def size_report(limit: int = 20) -> dict[str, Any]:
    """The largest cached files and the totals by format."""
    a, r = Archival.__table__, model.Resource.__table__
    p = model.Package.__table__
    cached = a.c.cache_filepath.isnot(None)
    largest = model.Session.execute(
        sa.select(a.c.resource_id, a.c.size, a.c.mimetype, p.c.name, r.c.url)
        .select_from(a.join(r, r.c.id == a.c.resource_id)
                     .join(p, p.c.id == r.c.package_id))
        .where(cached).order_by(a.c.size.desc().nulls_last()).limit(limit)).all()
    by_type = model.Session.execute(
        sa.select(sa.func.coalesce(a.c.mimetype, "unknown"), sa.func.count(),
                  sa.func.coalesce(sa.func.sum(a.c.size), 0))
        .where(cached).group_by(sa.func.coalesce(a.c.mimetype, "unknown"))
        .order_by(sa.func.coalesce(sa.func.sum(a.c.size), 0).desc())).all()
    return {"largest": largest, "by_type": by_type, **archive_use()}


def larger_than(limit: int) -> list[Any]:
    """Archival rows whose cached file is over ``limit`` bytes."""
    return model.Session.query(Archival).filter(
        Archival.cache_filepath.isnot(None), Archival.size > limit).all()


def orphans() -> dict[str, list[Any]]:
    """What is left of resources that are gone: archival rows of deleted or
    missing resources (or datasets), and files of the resources' folders
    under archive_dir that no row points to."""
    a, r = Archival.__table__, model.Resource.__table__
    p = model.Package.__table__
    active = (sa.select(r.c.id).select_from(r.join(p, p.c.id == r.c.package_id))
              .where(r.c.state == "active", p.c.state == "active"))
    rows = model.Session.execute(
        sa.select(a.c.resource_id, a.c.package_id, a.c.cache_filepath)
        .where(a.c.resource_id.notin_(active))).all()
    known = set()
    root = tk.config.get("ckanext.archiver.archive_dir") or ""
    for (path,) in model.Session.execute(
            sa.select(a.c.cache_filepath).where(a.c.cache_filepath.isnot(None))):
        full = path if os.path.isabs(path) else os.path.join(root, path)
        known.add(os.path.realpath(full))
    files = []
    if root and os.path.exists(root) and not os.path.isdir(root):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), root)
    if root and os.path.isdir(root):
        for folder, dirs, names in os.walk(root):
            if folder == root:  # temp files and dataset zips are not orphans
                dirs[:] = [d for d in dirs if d not in (TMP_DIRNAME, PACKAGES_DIRNAME)]
            for name in names:
                full = os.path.realpath(os.path.join(folder, name))
                if full not in known:
                    files.append(full)
    return {"rows": rows, "files": sorted(files)}
