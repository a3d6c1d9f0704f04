"""The archive's housekeeping commands of ``ckan archiver`` (registered on
the group in ``cli.py``): cleaning cached files, the size report, orphans
and moving a local archive into the object store."""

from __future__ import annotations

import sys
from typing import Optional

import click
from ckan import model

from ckanext.archiver import clitools, config
from ckanext.archiver.clitools import fail as _fail
from ckanext.archiver.clitools import human_bytes, plural
from ckanext.archiver.engine.store_s3 import S3Store
from ckanext.archiver.model import rows, usage
from ckanext.archiver.worker import migrate_storage as migration
from ckanext.archiver.worker import zips
from ckanext.archiver.worker.services import storage

__all__ = ["COMMANDS"]


@click.command("clean-cached")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--larger-than", type=click.IntRange(min=1), metavar="BYTES",
              help="Instead: remove the cached files larger than BYTES (for a new, "
                   "lower max_content_length); their rows stay, without the copy.")
def clean_cached(dry_run: bool, larger_than: Optional[int]):
    """Remove archived files of deleted resources, files no row names
    (orphans) and stale temp files (in S3 mode: objects of deleted resources,
    objects no row names and abandoned multipart uploads, and the same for
    dataset zips: those of deleted datasets, those no zip record names)."""
    verb = "Would remove" if dry_run else "Removed"
    try:
        store = storage()
        if larger_than:
            large = usage.larger_than(larger_than)
            freed = sum(a.size or 0 for a in large)
            if not dry_run:
                for a in large:
                    store.remove(a.resource_id)
                    a.cache_filepath = a.cache_url = None
                model.Session.commit()
            click.echo(f"{verb} {plural(len(large), 'file')} larger than "
                       f"{human_bytes(larger_than)}, {human_bytes(freed)}")
            return
        keep = rows.active_resource_ids()
        if isinstance(store, S3Store):  # objects no row names (a failed commit) go too
            files, freed = store.clean(keep, dry_run=dry_run,
                                       named=rows.named_copies().__contains__)
            zipped, zip_bytes = zips.clean(store, dry_run=dry_run)
            files, freed = files + zipped, freed + zip_bytes
        else:
            files, freed = store.clean(keep, dry_run=dry_run, files=rows.named_files(keep))
    except OSError as e:
        _fail(f"archive_dir {config.current().archive_dir} is not usable: {e.strerror or e}")
        return
    click.echo(f"{verb} {plural(files, 'file')}, {plural(freed, 'byte')}")
    if not dry_run and files:
        rows.clear_cache_columns(keep)


@click.command("size-report")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="How many of the largest files to list.")
def size_report(limit: int):
    """The archive's size: totals by file type and the largest files."""
    report = clitools.size_report(limit)
    click.echo("Archive: {}, {} in {}".format(
        plural(report["files"], "cached file"), human_bytes(report["bytes"]),
        report["path"]))
    if report["free"] is not None:
        click.echo(f"Free space: {human_bytes(report['free'])}")
    if report["by_type"]:
        click.echo("By type:")
        for mimetype, count, size in report["by_type"]:
            click.echo(f"  {human_bytes(size):>10}  {plural(count, 'file'):>12}  {mimetype}")
    if report["largest"]:
        click.echo("Largest files:")
        for rid, size, _mimetype, name, url in report["largest"]:
            click.echo(f"  {human_bytes(size):>10}  {name}  {rid}  {url}")


@click.command()
@click.option("--delete", is_flag=True,
              help="Delete what is listed (run without it first: it is a dry run).")
def orphans(delete: bool):
    """Archival rows of resources that are gone and files no row points to
    (a dry run unless --delete)."""
    try:
        found = clitools.orphans()
    except OSError as e:
        _fail(f"archive_dir is not usable: {e.strerror or e}")
        return
    for rid, pid, path in found["rows"]:
        click.echo(f"row   {rid} (dataset {pid}){' file ' + path if path else ''}")
    for path in found["files"]:
        click.echo(f"file  {path}")
    n_rows, files = len(found["rows"]), len(found["files"])
    if not delete:
        click.echo(f"{plural(n_rows, 'orphan row')} and {plural(files, 'orphan file')}; "
                   "run again with --delete to remove them")
        return
    removed = clitools.delete_orphans(found, storage())
    click.echo(f"Deleted {plural(n_rows, 'orphan row')} and {plural(removed, 'orphan file')}")


@click.command("migrate-storage")
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
    click.echo(f"{'Would copy' if dry_run else 'Copied'} {plural(result.zips, 'dataset zip')}"
               f" ({result.zips_already} already in the store)")
    if result.failed:
        sys.exit(1)


COMMANDS = [clean_cached, size_report, orphans, migrate_storage]
