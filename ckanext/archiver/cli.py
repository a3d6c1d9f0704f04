"""``ckan archiver ...``: drive the archiver by hand and from cron."""

from __future__ import annotations

import itertools
import json
import os
import sys
from typing import Optional

import ckan.plugins.toolkit as tk
import click
import redis
from ckan import model

from ckanext.archiver import config, keys
from ckanext.archiver.config import QUEUES
from ckanext.archiver.engine.store_s3 import S3Store
from ckanext.archiver.model import Archival, ArchivalHistory, active_dataset, rows, selection
from ckanext.archiver.model.org_notify import AlreadyRunning
from ckanext.archiver.worker import batch, digest, dispatch, figures, zips
from ckanext.archiver.worker import migrate_storage as migration
from ckanext.archiver.worker.services import storage

__all__ = ["archiver"]

CHUNK = 10000


def _fail(message: str) -> None:
    tk.error_shout(message)
    sys.exit(1)


def _broker_error(e: Exception) -> None:
    url = config.current().broker_url
    _fail(f"Cannot reach the broker at {url} ({type(e).__name__}). Is Redis running?")


def _check_archive_dir() -> None:
    options = config.current()
    if options.is_s3:
        return  # copies go to the bucket: no archive disk needed
    path = options.archive_dir
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        _fail(f"archive_dir {path} cannot be created: {e.strerror}")
    if not os.access(path, os.W_OK | os.X_OK):
        _fail(f"archive_dir {path} is not writable by this user")


@click.group(short_help="Check and archive resources")
def archiver():
    """Check links and keep copies of resources (ckanext-archiver)."""


@archiver.command()
@click.argument("ids", nargs=-1)
@click.option("--queue", "queue_name", type=click.Choice(QUEUES), default="bulk",
              show_default=True, help="Queue to put the resources on.")
@click.option("--stale", type=float, metavar="DAYS",
              help="Only resources not checked for DAYS days (for cron).")
@click.option("--broken", is_flag=True, help="Only resources broken now.")
@click.option("--now", is_flag=True, help="Archive here, without Celery, with a progress bar.")
@click.option("--force", is_flag=True, help="Download even when still fresh.")
def update(ids: tuple[str, ...], queue_name: str, stale: Optional[float], broken: bool,
           now: bool, force: bool):
    """Archive resources. IDS are datasets, resources, organizations or
    groups (names or ids); none means every active dataset, private ones
    included."""
    try:
        items = selection.select(ids, stale_days=stale, broken_only=broken)
        first = list(itertools.islice(items, CHUNK))
    except selection.UnknownIds as e:
        _fail("Not a dataset, resource, organization or group: {}".format(", ".join(e.ids)))
        return
    if now:
        _check_archive_dir()
        rest = list(items)
        _update_now(first + rest, force)
        return
    total = 0
    try:
        chunk = first
        while chunk:
            total += dispatch.enqueue(chunk, queue_name, force=force)
            chunk = list(itertools.islice(items, CHUNK))
        if stale is not None:
            total += dispatch.requeue_lost()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
        _broker_error(e)
    click.echo(f"Queued {total} resources on {queue_name}")


def _update_now(items: list[tuple[str, str]], force: bool) -> None:
    try:
        keys.client(config.current()).ping()
        polite = True
    except redis.exceptions.RedisError:
        polite = False  # no Redis: no politeness across workers, still works
    size = config.current().batch_size
    totals = {"archived": 0, "unchanged": 0, "broken": 0, "not sure": 0}
    with click.progressbar(length=len(items), label="Archiving") as bar:
        for start in range(0, len(items), size):
            ids = [rid for rid, _pid in items[start:start + size]]
            result = batch.archive_batch(ids, "bulk", force=force, attempt=10**6,
                                         polite=polite)
            for key, value in result.counts().items():
                totals[key] += value
            bar.update(len(ids))
    click.echo("Done: {} archived, {} unchanged, {} broken, {} not sure".format(
        totals["archived"], totals["unchanged"], totals["broken"], totals["not sure"]))


WORKER_DEFAULTS = {
    # the priority worker is light and always free for one-off edits
    "priority": ["--pool=threads", "--concurrency=8"],
    # a bulk task downloads its batch concurrently in threads; two processes
    # per core do the hashing and database work, so that a batch held up by
    # a slow host leaves the others running
    "bulk": ["--pool=prefork", f"--concurrency={2 * (os.cpu_count() or 1)}"],
    "all": ["--pool=prefork", f"--concurrency={2 * (os.cpu_count() or 1)}"],
}


@archiver.command(context_settings={"ignore_unknown_options": True,
                                    "allow_extra_args": True})
@click.argument("which", type=click.Choice(["priority", "bulk", "all"]), default="all")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def worker(ctx: click.Context, which: str, celery_args: tuple[str, ...]):
    """Start a Celery worker for the priority, bulk or all queues (extra
    arguments go to `celery worker`)."""
    _check_archive_dir()
    options = config.current()
    try:
        keys.client(options).ping()
    except redis.exceptions.RedisError as e:
        _broker_error(e)
    names = ["priority", "bulk"] if which == "all" else [which]
    queues = ",".join(options.queue_name(n) for n in names)
    site = options.site_id
    args = [sys.executable, "-m", "celery", "-A", "ckanext.archiver.celery_app", "worker",
            "-Q", queues, "-n", f"archiver-{which}-{site}@%h", "--loglevel=INFO",
            # many workers on one Redis: no gossip (it has leaked queues at
            # scale) and no start-up handshake with every other worker
            "--without-gossip", "--without-mingle",
            *WORKER_DEFAULTS[which], *celery_args]
    env = dict(os.environ, CKAN_INI=os.path.abspath(ctx.obj.config["__file__"]))
    os.execvpe(args[0], args, env)


@archiver.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--no-workers", is_flag=True, help="Do not ask the workers (faster).")
def status(as_json: bool, no_workers: bool):
    """Queue lengths, workers, counts by status, oldest check."""
    numbers = figures.numbers(with_workers=not no_workers)
    if as_json:
        click.echo(json.dumps(numbers, indent=2))
        return
    queues = numbers["queues"]
    if queues is None:
        click.echo("Queues: broker unreachable ({})".format(numbers["broker_error"]))
    else:
        click.echo("Queues: " + ", ".join(f"{k} {v}" for k, v in queues.items()))
    if "workers" in numbers:
        click.echo("Workers: {} ({} tasks in flight)".format(
            ", ".join(numbers["workers"]) or "none seen", numbers["tasks_in_flight"]))
    for row in numbers["status_counts"]:
        click.echo("  {:>8}  {}".format(row["count"], row["status"]))
    if numbers["resources"]["never_checked"]:
        click.echo("  {:>8}  {}".format(numbers["resources"]["never_checked"],
                                       "never checked"))
    click.echo("Oldest check: {}".format(numbers["oldest_check"] or "-"))
    click.echo("Checks in the last hour: {}".format(numbers["last_hour"]["done"]))


@archiver.command()
@click.argument("dataset", required=False)
def view(dataset: Optional[str]):
    """Archival information of a dataset (or a summary of all)."""
    if not dataset:
        total, broken = rows.counts()
        click.echo(f"{total} resources have archival rows, {broken} broken links")
        return
    pkg = model.Package.get(dataset)
    if pkg is None:
        _fail(f"No dataset {dataset}")
        return
    found = {a.resource_id: a for a in Archival.get_for_package(pkg.id)}
    click.echo(f"{pkg.name}: {pkg.title}")
    for res in pkg.resources:
        a = found.get(res.id)
        click.echo(f"- {res.name or res.id} <{res.url}>")
        if a is None or a.status_id is None:
            click.echo("    not checked yet")
            continue
        click.echo(f"    {a.status} ({a.is_broken_printable}): {a.reason}")
        click.echo(f"    checked {a.updated}, failures {a.failure_count}, "
                   f"last success {a.last_success}")
        if a.cache_filepath:
            click.echo(f"    cached: {a.cache_filepath} ({a.size} bytes, {a.mimetype})")


@archiver.command("clean-status")
def clean_status():
    """Delete rows of resources that no longer exist, and history older than
    history_retention_days."""
    deleted = rows.delete_orphans()
    old = ArchivalHistory.delete_older_than(config.current().history_retention_days)
    click.echo(f"Deleted {deleted} archival rows and {old} history rows")


@archiver.command("clean-cached")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
def clean_cached(dry_run: bool):
    """Remove archived files of deleted resources, files no row names
    (orphans) and stale temp files (in S3 mode: objects of deleted resources,
    objects no row names and abandoned multipart uploads)."""
    keep = rows.active_resource_ids()
    store = storage()
    if isinstance(store, S3Store):
        files, freed = store.clean(keep, dry_run=dry_run,
                                   named=rows.named_copies().__contains__)
    else:
        files, freed = store.clean(keep, dry_run=dry_run, files=rows.named_files(keep))
    verb = "Would remove" if dry_run else "Removed"
    click.echo(f"{verb} {files} files, {freed} bytes")
    if not dry_run and files:
        rows.clear_cache_columns(keep)


@archiver.command("migrate-storage")
@click.option("--dry-run", is_flag=True, help="Only say what would be copied.")
@click.option("--remove-local", is_flag=True,
              help="Delete each local file once its row names the verified object.")
def migrate_storage(dry_run: bool, remove_local: bool):
    """Copy the local archive (archive_dir) into the object store, verifying
    each object's sha1 before its row is switched. Safe to stop and re-run."""
    store = storage()
    if not isinstance(store, S3Store):
        _fail("migrate-storage copies archive_dir into the object store: set "
              "ckanext.archiver.storage_backend = s3 and the s3_* options first")
        return
    candidates = migration.candidates()
    click.echo(f"{len(candidates)} rows name a file in {config.current().archive_dir}")

    def progress(items):
        with click.progressbar(items, label="Copying" if not dry_run else "Checking",
                               file=sys.stderr) as bar:
            yield from bar

    result = migration.run(store, dry_run=dry_run, remove_local=remove_local,
                           progress=progress)
    for line in result.errors[:50]:
        click.echo("  " + line)
    verb = "Would switch" if dry_run else "Switched"
    click.echo(f"{verb} {result.switched} rows ({result.bytes} bytes sent, "
               f"{result.already} already in the store); {result.missing} files missing, "
               f"{result.failed} failed")
    if result.failed:
        sys.exit(1)


@archiver.command("purge-queues")
def purge_queues():
    """Empty the priority and bulk queues."""
    try:
        removed = dispatch.purge()
    except redis.exceptions.RedisError as e:
        _broker_error(e)
        return
    click.echo("Purged " + ", ".join(f"{v} from {k}" for k, v in removed.items()))


@archiver.command()
def init():
    """Create or upgrade the tables (same as `ckan db upgrade -p archiver`)."""
    from ckan.cli.db import _run_migrations  # CKAN's own; not loaded unless asked

    _run_migrations("archiver")
    click.echo("Archiver tables are up to date")


# -- packages, notifications, statistics -------------------------------------

@archiver.command()
@click.argument("datasets", nargs=-1)
@click.option("--force", is_flag=True, help="Build even when the zip is up to date.")
@click.option("--background", is_flag=True,
              help="Queue the builds on the bulk queue instead of building here.")
@click.option("--clean", is_flag=True, help="Remove the zips of deleted datasets.")
def package(datasets: tuple[str, ...], force: bool, background: bool, clean: bool):
    """Build the zip of DATASETS' archived files plus datapackage.json
    (served at /dataset/<id>/archive.zip); rebuilt only when a file changed."""
    if not datasets and not clean:
        _fail("Name one or more datasets (or use --clean)")
    _check_archive_dir()
    failed = False
    for ident in datasets:
        pkg = active_dataset(ident)
        if pkg is None:
            tk.error_shout(f"No dataset {ident}")
            failed = True
            continue
        if background:
            try:
                queued = zips.queue_build(pkg.id)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
                _broker_error(e)
                return
            click.echo(f"{pkg.name}: " + ("queued on bulk" if queued else "already queued"))
            continue
        try:
            result = zips.build(pkg.id, force=force)
        except zips.NothingToPackage:
            click.echo(f"{pkg.name}: no archived files, no zip")
            continue
        except OSError as e:
            tk.error_shout(f"{pkg.name}: {e}")
            failed = True
            continue
        built = result.package
        click.echo("{}: {} {} ({} files, {} bytes)".format(
            pkg.name, "built" if result.built else "up to date", built.path,
            built.members, built.size))
    if clean:
        removed, freed = zips.clean()
        click.echo(f"Removed {removed} packages of deleted datasets, {freed} bytes")
    if failed:
        sys.exit(1)


@archiver.command("notify")
@click.argument("organizations", nargs=-1)
@click.option("--dry-run", is_flag=True,
              help="Only say what would be sent (nothing is sent or remembered).")
def notify_command(organizations: tuple[str, ...], dry_run: bool):
    """Email each organization's admins the links that broke or were fixed
    since their last digest, and call the webhook (for cron).
    ORGANIZATIONS (names or ids) limit the run; none means all."""
    try:
        results = digest.run(organizations, dry_run=dry_run)
    except AlreadyRunning as e:
        _fail(str(e))
        return
    for r in results:
        parts = [f"{r.broken} broken, {r.recovered} fixed"]
        if r.opted_out:
            parts.append("emails switched off")
        elif not dry_run:
            parts.append(f"{r.mails_sent} emails sent")
            if r.mails_failed:
                parts.append(f"{r.mails_failed} failed ({r.mail_error})")
        if r.webhook is not None:
            parts.append("webhook " + ("delivered" if r.webhook else "FAILED"))
        click.echo(f"{r.organization}: " + ", ".join(parts))
    verb = "would be notified" if dry_run else "notified"
    click.echo(f"{len(results)} organizations with changes {verb}")
    if any(r.webhook is False or r.mails_failed for r in results):
        sys.exit(1)
