"""``ckan archiver ...``: drive the archiver by hand and from cron."""

from __future__ import annotations

import datetime
import itertools
import json
import os
import sys
from typing import Optional

import ckan.plugins.toolkit as tk
import click
import redis
from ckan import model

from ckanext.archiver import cli_storage, clitools, config, keys
from ckanext.archiver.clitools import BROKER_ERRORS as _BROKER_ERRORS
from ckanext.archiver.clitools import broker_error as _broker_error
from ckanext.archiver.clitools import check_archive_dir as _check_archive_dir
from ckanext.archiver.clitools import fail as _fail
from ckanext.archiver.clitools import human_bytes, human_time, plural
from ckanext.archiver.config import QUEUES
from ckanext.archiver.model import Archival, ArchivalHistory, active_dataset, rows, selection, usage
from ckanext.archiver.model.org_notify import AlreadyRunning, active_organizations
from ckanext.archiver.worker import digest, dispatch, figures, zips

__all__ = ["archiver"]

CHUNK = 10000


@click.group(short_help="Check and archive resources")
def archiver():
    """Check links and keep copies of resources (ckanext-archiver)."""


@archiver.command()
@click.argument("ids", nargs=-1)
@click.option("--queue", "queue_name", type=click.Choice(QUEUES), default="bulk",
              show_default=True, help="Queue to put the resources on.")
@click.option("--stale", type=click.FloatRange(min=0), metavar="DAYS",
              help="Only resources not checked for DAYS days (for cron).")
@click.option("--broken", is_flag=True, help="Only resources broken now.")
@click.option("--now", is_flag=True, help="Archive here, without Celery, with a progress bar.")
@click.option("--force", is_flag=True,
              help="Contact every server, even one whose last answer is still fresh "
                   "(Cache-Control / Expires); without it such resources are not re-checked.")
@click.option("--wait", is_flag=True,
              help="Follow the run until every resource is checked (Ctrl-C stops "
                   "following, not the run).")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds between progress updates with --wait.")
def update(ids: tuple[str, ...], queue_name: str, stale: Optional[float], broken: bool,
           now: bool, force: bool, wait: bool, interval: float):
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
        clitools.update_now(first + rest, force)
        return
    total = selected = 0
    followed: list[str] = []
    try:
        chunk = first
        while chunk:
            selected += len(chunk)
            total += dispatch.enqueue(chunk, queue_name, force=force)
            if wait:
                followed += [rid for rid, _pid in chunk]
            chunk = list(itertools.islice(items, CHUNK))
        lost = dispatch.requeue_lost() if stale is not None else 0
    except _BROKER_ERRORS as e:
        _broker_error(e)
        return
    line = f"Queued {plural(total, 'resource')} on {queue_name}"
    if selected - total:
        line += f"; {plural(selected - total, 'resource')} already waiting"
        line += " (not queued again)" if not force else ""
    if lost:
        line += f"; {plural(lost, 'lost resource')} queued again"
    click.echo(line)
    if wait and followed:
        clitools.follow(followed, interval)


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
    """Resources waiting per queue, workers, a summary by verdict, counts by
    status, the archive's disk use, oldest check."""
    numbers = figures.numbers(with_workers=not no_workers)
    try:
        numbers["waiting_resources"] = (
            clitools.waiting_resources() if numbers["queues"] is not None else None)
    except redis.exceptions.RedisError:
        numbers["waiting_resources"] = None
    numbers["verdicts"] = clitools.verdicts(numbers["status_counts"])
    numbers["archive"] = clitools.archive_use()
    if as_json:
        click.echo(json.dumps(numbers, indent=2))
        return
    waiting = numbers["waiting_resources"]
    if waiting is None:
        click.echo("Queues: broker unreachable ({})".format(numbers["broker_error"]))
    else:
        click.echo("Waiting: " + ", ".join(
            f"{plural(v, 'resource')} on {k}" for k, v in waiting.items()))
    if "workers" in numbers:
        click.echo("Workers: {} ({} in flight)".format(
            ", ".join(numbers["workers"]) or "none seen",
            plural(numbers["tasks_in_flight"], "task")))
    verdicts = numbers["verdicts"]
    click.echo("Links: {} ok, {} broken, {} not sure, {} never checked".format(
        verdicts["ok"], verdicts["broken"], verdicts["not sure"],
        numbers["resources"]["never_checked"]))
    faults = numbers["resources"]["site_faults"]
    click.echo("Site faults: {} (archive folder, disk, database or worker; the links "
               "keep their last verdict)".format(plural(faults, "resource") if faults else "none"))
    for row in numbers["status_counts"]:
        click.echo("  {:>8}  {}".format(row["count"], row["status"]))
    archive = numbers["archive"]
    free = human_bytes(archive["free"]) + " free" if archive["free"] is not None else \
        "free space unknown"
    click.echo("Archive: {}, {} ({}, {})".format(
        plural(archive["files"], "cached file"), human_bytes(archive["bytes"]),
        archive["path"], free))
    oldest = numbers["oldest_check"]
    click.echo("Oldest check: {}".format(
        human_time(datetime.datetime.fromisoformat(oldest)) if oldest else "-"))
    last = numbers["last_hour"]
    click.echo("Checks in the last hour: {}{}".format(
        last["done"], f" ({last['site_faults']} stopped by a site fault)"
        if last["site_faults"] else ""))


@archiver.command()
@click.argument("ident", metavar="[DATASET_OR_RESOURCE]", required=False)
def view(ident: Optional[str]):
    """Archival information of a dataset or a resource (or a summary of
    all)."""
    if not ident:
        total, broken = usage.checked_counts()
        click.echo("{} checked, {}".format(plural(total, "resource"),
                                          plural(broken, "broken link")))
        return
    resource = model.Resource.get(ident)
    pkg = model.Package.get(resource.package_id) if resource is not None else \
        model.Package.get(ident)
    if pkg is None:
        _fail(f"Not a dataset or resource: {ident}")
        return
    found = {a.resource_id: a for a in Archival.get_for_package(pkg.id)}
    click.echo(f"{pkg.name}: {pkg.title}" + (" (private)" if pkg.private else ""))
    shown = [resource] if resource is not None else [
        r for r in pkg.resources if r.state == "active"]
    for res in shown:
        a = found.get(res.id)
        click.echo(f"- {res.name or res.id} <{res.url}>")
        click.echo(f"    id {res.id}")
        if a is None or a.status_id is None:
            click.echo("    not checked yet")
            continue
        click.echo(f"    {a.status} ({a.is_broken_printable}): {a.reason or '-'}")
        click.echo(f"    checked {human_time(a.updated)}")
        if a.is_broken and a.first_failure:
            click.echo(f"    failing since {human_time(a.first_failure)} "
                       f"({plural(a.failure_count or 1, 'failed check')})")
        click.echo(f"    last success {human_time(a.last_success)}")
        if a.url_redirected_to:
            click.echo(f"    redirected to {a.url_redirected_to}")
        if a.cache_filepath:
            click.echo(f"    cached: {a.cache_filepath} ({human_bytes(a.size)}, "
                       f"{a.mimetype or 'type unknown'})")


@archiver.command("clean-status")
def clean_status():
    """Delete rows of resources that no longer exist, and history older than
    history_retention_days."""
    deleted = rows.delete_orphans()
    old = ArchivalHistory.delete_older_than(config.current().history_retention_days)
    click.echo(f"Deleted {deleted} archival rows and {old} history rows")


for _command in cli_storage.COMMANDS:
    archiver.add_command(_command)


@archiver.command("purge-queues")
def purge_queues():
    """Empty the priority and bulk queues, for good (nothing comes back at
    the next worker start)."""
    try:
        removed = clitools.waiting_resources()  # resources, not Celery messages
        purged = dispatch.purge(for_good=True)
        if purged.get("waiting for their host"):
            removed["waiting for their host"] = purged["waiting for their host"]
    except redis.exceptions.RedisError as e:
        _broker_error(e)
        return
    click.echo("Purged " + ", ".join(
        f"{plural(v, 'resource')} from {k}" for k, v in removed.items()))


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
    if organizations:
        orgs = active_organizations(organizations)
        known = {g.id for g in orgs} | {g.name for g in orgs}
        unknown = [o for o in organizations if o not in known]
        if unknown:
            _fail("Not an organization: {}".format(", ".join(unknown)))
            return
    if not dry_run and not config.current().smtp_mail_from:
        _fail("smtp.mail_from is not set in the CKAN config: no digest can be "
              "sent (use --dry-run to see what would be sent)")
        return
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
    click.echo(f"{plural(len(results), 'organization')} with changes {verb}")
    if any(r.webhook is False or r.mails_failed for r in results):
        sys.exit(1)
