"""What the ``ckan archiver`` commands share: one-line failures, counts
with plurals, times a person can read, resources waiting per queue,
following a run (``update --wait``, ``update --now``), the archive's disk
use and the housekeeping reports (size, orphans; their SQL is in
``model.usage``).

Kept out of ``cli.py`` so that the module of the click group stays short.
"""

from __future__ import annotations

import datetime
import errno
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import ckan.plugins.toolkit as tk
import click
import redis

from ckanext.archiver import config, keys
from ckanext.archiver import status as st
from ckanext.archiver.config import QUEUES
from ckanext.archiver.engine.storage import TMP_DIRNAME
from ckanext.archiver.engine.zipper import PACKAGES_DIRNAME
from ckanext.archiver.model import usage, utcnow
from ckanext.archiver.worker import batch, dispatch

BROKER_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


# -- failing in one line -----------------------------------------------------

def fail(message: str) -> None:
    tk.error_shout(message)
    sys.exit(1)


def broker_error(e: Exception) -> None:
    url = config.current().broker_url
    fail(f"Cannot reach the broker at {url} ({type(e).__name__}). Is Redis running?")


def check_archive_dir() -> None:
    options = config.current()
    if options.is_s3:
        return  # copies go to the bucket: no archive disk needed
    path = options.archive_dir
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        fail(f"archive_dir {path} cannot be created: {e.strerror}")
    if not os.access(path, os.W_OK | os.X_OK):
        fail(f"archive_dir {path} is not writable by this user")


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
    options = config.current()
    r = keys.client(options)
    pattern = keys.pending_pattern(options)
    counts = {name: 0 for name in QUEUES}
    found: list[bytes] = []

    def count(chunk: list[bytes]) -> None:
        for value in r.mget(chunk):
            name = dispatch.queue_of_mark(value)
            if name in counts:
                counts[name] += 1

    for key in r.scan_iter(match=pattern, count=1000):
        found.append(key)
        if len(found) >= 1000:
            count(found)
            found = []
    if found:
        count(found)
    return counts


def waiting_among(resource_ids: Sequence[str]) -> int:
    """How many of ``resource_ids`` are waiting on a queue now."""
    options = config.current()
    r = keys.client(options)
    waiting = 0
    for start in range(0, len(resource_ids), 1000):
        chunk = resource_ids[start:start + 1000]
        with r.pipeline(transaction=False) as pipe:
            for rid in chunk:
                pipe.exists(keys.pending(options, rid))
            waiting += sum(1 for found in pipe.execute() if found)
    return waiting


# -- following a run ---------------------------------------------------------

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
        done, broken = usage.progress(self.ids)
        return Progress(done, len(self.ids), broken, self.clock() - self.started)

    def __iter__(self) -> Iterator[Progress]:
        while True:
            progress = self.poll()
            yield progress
            if progress.done >= progress.total:
                return
            time.sleep(self.interval)


def follow(resource_ids: list[str], interval: float) -> None:
    """Show the run's progress until every resource is checked: a bar on a
    terminal, a plain line every interval otherwise (logs, cron)."""
    follower = Follower(resource_ids, interval=interval)
    last = None
    try:
        if sys.stdout.isatty():
            with click.progressbar(length=len(follower.ids), label="Checking",
                                   show_eta=True, show_pos=True,
                                   item_show_func=lambda p: p.line() if p else None) as bar:
                for progress in follower:
                    bar.update(progress.done - bar.pos, progress)
                    last = progress
        else:
            for progress in follower:
                click.echo(progress.line())
                last = progress
    except KeyboardInterrupt:
        click.echo("Stopped following; the run goes on (see `ckan archiver status`)")
        sys.exit(130)
    if last is not None:
        click.echo("Done: {} checked, {} broken, in {}".format(
            plural(last.done, "resource"), last.broken, human_duration(last.elapsed)))


def update_now(items: list[tuple[str, str]], force: bool) -> None:
    """Archive ``items`` in this process, batch by batch, with a progress bar."""
    options = config.current()
    try:
        keys.client(options).ping()
        polite = True
    except redis.exceptions.RedisError:
        polite = False  # no Redis: no politeness across workers, still works
    size = options.batch_size
    totals = {"archived": 0, "unchanged": 0, "broken": 0, "not sure": 0}
    with click.progressbar(length=len(items), label="Archiving") as bar:
        for start in range(0, len(items), size):
            ids = [rid for rid, _pid in items[start:start + size]]
            result = batch.archive_batch(ids, "bulk", force=force, max_retries=0,
                                         polite=polite)
            for key, value in result.counts().items():
                totals[key] += value
            bar.update(len(ids))
    click.echo("Done: {} archived, {} unchanged, {} broken, {} not sure".format(
        totals["archived"], totals["unchanged"], totals["broken"], totals["not sure"]))


def verdicts(status_counts: list[dict]) -> dict[str, int]:
    """Resources by verdict: ok, broken, not sure."""
    out = {"ok": 0, "broken": 0, "not sure": 0}
    for row in status_counts:
        broken = st.is_broken(row.get("status_id"))
        out["not sure" if broken is None else "broken" if broken else "ok"] += row["count"]
    return out


# -- the archive -------------------------------------------------------------

def archive_use() -> dict[str, Any]:
    """Cached files and bytes (from the archival rows), and the free space
    of the archive's file system (None when it cannot be read)."""
    files, size = usage.cached_totals()
    path = config.current().archive_dir
    free = None
    if path:
        try:
            free = shutil.disk_usage(path).free
        except OSError:
            free = None
    return {"files": files, "bytes": size, "free": free, "path": path}


def size_report(limit: int = 20) -> dict[str, Any]:
    """The largest cached files and the totals by format."""
    return {"largest": usage.largest(limit), "by_type": usage.by_type(), **archive_use()}


def orphans() -> dict[str, list[Any]]:
    """What is left of resources that are gone: archival rows of deleted or
    missing resources (or datasets), and files of the resources' folders
    under archive_dir that no row points to."""
    rows = usage.orphan_rows()
    root = config.current().archive_dir or ""
    known = set()
    for path in usage.cached_paths():
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


def delete_orphans(found: dict[str, list[Any]], store: Any) -> int:
    """Delete what :func:`orphans` found (the rows' files, the rows, the
    files no row names); return how many of those files were removed."""
    for rid, _pid, _path in found["rows"]:
        store.remove(rid)
    usage.delete_rows([rid for rid, _pid, _path in found["rows"]])
    removed = 0
    for path in found["files"]:
        try:
            os.unlink(path)
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as e:
            tk.error_shout(f"Could not remove {path}: {e.strerror}")
    return removed
