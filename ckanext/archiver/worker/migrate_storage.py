"""``ckan archiver migrate-storage``: copy the local archive into the object
store, one row at a time.

For each row naming a file inside ``archive_dir``: the file is streamed to
the object of the same relative key (``<rid[:2]>/<rid>/<filename>``), read
back from the store and its sha1 compared with the file's (and the row's);
only then does the row switch to the key, in a statement that changes it
only if it still names that file (a worker may have archived a new copy
meanwhile). Re-running is safe and resumes: switched rows are no longer
candidates, and an object already there with the file's size and sha1 is
not sent again.

Dataset zips built on disk (``<archive_dir>/packages/<id>/``) are copied
too, when their ``package.json`` describes them and the bucket has no zip of
that dataset yet: streamed to a new key, read back and compared by sha1,
then recorded (``engine.zipper_s3``), so web nodes without the disk serve
them at once instead of rebuilding them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
from typing import Callable, Iterator, Optional

from ckan import model

from ckanext.archiver import urls
from ckanext.archiver.engine import zipper, zipper_s3
from ckanext.archiver.engine.storage import Storage
from ckanext.archiver.engine.store_s3 import S3Store, StoreError
from ckanext.archiver.model import rows
from ckanext.archiver.worker import zips
from ckanext.archiver.worker.services import local_key, local_storage

__all__ = ["Result", "candidates", "run"]

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024


@dataclasses.dataclass
class Result:
    switched: int = 0
    bytes: int = 0
    already: int = 0  # the object was there and verified: not sent again
    missing: int = 0  # the row's file is not on this disk
    failed: int = 0  # the store refused, or the sha1 did not match
    zips: int = 0  # dataset zips copied and recorded
    zips_already: int = 0  # the bucket has a zip of the dataset already
    errors: list[str] = dataclasses.field(default_factory=list)


def candidates() -> list[tuple[str, str, str, Optional[str], Optional[int]]]:
    """``(resource_id, package_id, cache_filepath, hash, size)`` of the rows
    whose copy is a file inside archive_dir."""
    return [r for r in rows.local_copies() if local_key(r[2])]


def _sha1_of(chunks: Iterator[bytes]) -> tuple[str, int]:
    digest, size = hashlib.sha1(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(CHUNK), b"")


def _object_sha1(store: S3Store, key: str) -> tuple[str, int]:
    body = store.open(key)
    try:
        return _sha1_of(body.iter_chunks(CHUNK))
    finally:
        body.close()


def migrate_one(store: S3Store, resource_id: str, package_id: str, path: str,
                recorded_hash: Optional[str], result: Result, dry_run: bool = False,
                remove_local: bool = False) -> None:
    key = local_key(path)
    if key is None or not os.path.isfile(path):
        result.missing += 1
        result.errors.append(f"{resource_id}: {path} is not on this disk")
        return
    file_sha1, size = _sha1_of(_file_chunks(path))
    if recorded_hash and recorded_hash != file_sha1:
        result.failed += 1
        result.errors.append(f"{resource_id}: {path} does not match its row's sha1 (left as is)")
        return
    if dry_run:
        result.switched += 1
        result.bytes += size
        return
    try:
        head = store.head(key)
        sent = False
        if head is None or head["size"] != size or _object_sha1(store, key)[0] != file_sha1:
            with open(path, "rb") as f:
                store.upload_file(key, f)
            sent = True
        stored_sha1, stored_size = _object_sha1(store, key)
    except (StoreError, OSError) as e:
        result.failed += 1
        result.errors.append(f"{resource_id}: {e}")
        return
    if (stored_sha1, stored_size) != (file_sha1, size):
        result.failed += 1
        result.errors.append(f"{resource_id}: the object read back does not match the file")
        return
    cache_url = urls.cached_copy_url(package_id, resource_id, key.rsplit("/", 1)[-1])
    if not rows.switch_copy(resource_id, path, key, cache_url):
        # archived again meanwhile: the row names a newer copy
        return
    result.switched += 1
    if sent:
        result.bytes += size
    else:
        result.already += 1
    if remove_local:
        try:
            os.unlink(path)
            os.rmdir(os.path.dirname(path))
        except OSError:
            pass


def local_zips(local: Storage) -> list[zipper.DatasetZip]:
    """The zips on disk worth copying: described by their ``package.json``,
    of datasets that are not deleted."""
    try:
        ids = sorted(e.name for e in os.scandir(os.path.join(local.archive_dir,
                                                             zipper.PACKAGES_DIRNAME))
                     if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []
    found = []
    for pid in ids:
        try:
            built = zipper.current(pid, local)
        except ValueError:
            continue
        if built is not None and built.consistent:
            found.append(built)
    active = zips.active_ids(z.package_id for z in found)
    return [z for z in found if z.package_id in active]


def migrate_zip(store: S3Store, built: zipper.DatasetZip, result: Result,
                dry_run: bool = False, remove_local: bool = False) -> None:
    folder = os.path.dirname(built.path)
    with zips.locked_everywhere(built.package_id):
        if zipper_s3.current(store, built.package_id) is not None:
            result.zips_already += 1  # built in the bucket since: newer
        elif dry_run:
            result.zips += 1
            return
        else:
            try:
                with open(built.path, "rb") as f:
                    key, size = zipper_s3.copy_in(store, built.package_id, built.filename, f)
                if _object_sha1(store, key) != _sha1_of(_file_chunks(built.path)):
                    store.delete(key)
                    raise StoreError("the object read back does not match the file")
                zipper_s3.record(store, built.package_id, {
                    "fingerprint": built.fingerprint, "filename": built.filename,
                    "members": built.members, "built_at": built.built_at,
                    "key": key, "size": size})
            except (StoreError, OSError) as e:
                result.failed += 1
                result.errors.append(f"zip of {built.package_id}: {e}")
                return
            result.zips += 1
    if remove_local and not dry_run:
        shutil.rmtree(folder, ignore_errors=True)


def run(store: S3Store, dry_run: bool = False, remove_local: bool = False,
        progress: Optional[Callable[[list], Iterator]] = None) -> Result:
    """Migrate every candidate row, then the dataset zips on disk;
    ``progress(rows)`` wraps the iteration (a progress bar)."""
    todo = candidates()
    model.Session.remove()  # no transaction held while copying
    result = Result()
    for resource_id, package_id, path, recorded_hash, _size in (
            progress(todo) if progress else todo):
        migrate_one(store, resource_id, package_id, path, recorded_hash, result,
                    dry_run, remove_local)
    built = local_zips(local_storage())
    model.Session.remove()
    for one in built:
        migrate_zip(store, one, result, dry_run, remove_local)
    return result
