"""The S3-compatible archive store (AWS S3, SeaweedFS, MinIO, Ceph...).

Objects are named ``<prefix><key>``; the key, relative to the store, is what
the ``archival`` row keeps in ``cache_filepath``::

    <rid[:2]>/<rid>/<version>/<filename>

Each download gets a new ``<version>`` folder, so the object a row names is
never overwritten: the old one is deleted only after the row naming the new
one has committed (:meth:`S3Store.stage`, :meth:`~S3Store.keep` and
:meth:`~S3Store.discard`, the seam the local ``Storage`` has too).

Uploads stream: :class:`S3Upload` keeps at most one part (``part_size``,
8 MiB by default) in memory and sends it as a multipart upload part when it
is full; a body smaller than one part is sent with one PUT when completed.
``abort()`` (size cap, error, same content again) aborts the multipart
upload, so neither an object nor an unfinished upload is left. No ACL is
ever set: objects are private and served through presigned GETs.

No ckan / flask / celery / sqlalchemy imports.
"""

from __future__ import annotations

import datetime
import os
import secrets
import tempfile
import time
from typing import Any, Callable, Iterator, Optional, Union

import boto3
import botocore.config
import botocore.exceptions

from ckanext.archiver.engine.quota import UsedBytes
from ckanext.archiver.engine.s3_upload import (
    S3Upload,
    check_key,
    check_object_key,
    describe_error,
    package_of,
    resource_of,
)
from ckanext.archiver.engine.sink import StoreError
from ckanext.archiver.engine.storage import Staged, sanitise_filename

__all__ = ["S3Store", "S3Upload", "StoreError", "MIN_PART_SIZE", "check_key", "resource_of"]

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's own minimum for every part but the last
DEFAULT_PART_SIZE = 8 * 1024 * 1024
STALE_UPLOAD_SECONDS = 3600


class S3Store(UsedBytes):
    """The bucket (under ``prefix``) holding the archived files.

    :param used_bytes: returns the bytes the archive keeps (from the
        database: listing a bucket of a million objects for every quota
        check would be far too slow); None = no quota.
    """

    kind = "s3"

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: Optional[str] = None,
                 region: Optional[str] = None, access_key_id: Optional[str] = None,
                 secret_access_key: Optional[str] = None, addressing_style: str = "auto",
                 part_size: int = DEFAULT_PART_SIZE, presign_seconds: int = 300,
                 max_archive_bytes: int = 0,
                 used_bytes: Optional[Callable[[], int]] = None,
                 cache_url_root: Optional[str] = None, client: Any = None):
        if not bucket:
            raise ValueError("s3_bucket is not set")
        prefix = (prefix or "").strip("/")
        self.bucket = bucket
        self.prefix = prefix + "/" if prefix else ""
        self.part_size = max(int(part_size or DEFAULT_PART_SIZE), MIN_PART_SIZE)
        self.presign_seconds = max(int(presign_seconds or 300), 1)
        self.cache_url_root = None  # never: copies are served through presigned URLs
        self._used_source = used_bytes
        self._init_used(max_archive_bytes)
        if client is None:
            config = botocore.config.Config(
                signature_version="s3v4",
                s3={"addressing_style": addressing_style or "auto"},
                connect_timeout=10, read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"},
                max_pool_connections=64,
                # S3-compatible stores do not all know the newer checksums
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url or None, region_name=region or None,
                aws_access_key_id=access_key_id or None,
                aws_secret_access_key=secret_access_key or None, config=config)
        self.client = client

    # -- names -----------------------------------------------------------

    def new_key(self, resource_id: str, filename: str) -> str:
        """A key never used before for this resource's next copy."""
        version = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)
        key = f"{resource_id[:2]}/{resource_id}/{version}/{sanitise_filename(filename)}"
        return check_key(key)

    def cache_url(self, resource_id: str, filename: str) -> None:
        """No public URL: copies are served by CKAN's cached-copy view,
        which checks read permission and redirects to a presigned GET."""
        return None

    def object_name(self, key: str) -> str:
        return self.prefix + check_object_key(key)

    def tmp_dir(self) -> str:
        """A local folder for the rare caller that needs one (nothing of the
        archive is kept there)."""
        path = os.path.join(tempfile.gettempdir(), "ckanext-archiver")
        os.makedirs(path, exist_ok=True)
        return path

    # -- writing ---------------------------------------------------------

    def open_upload(self, key: str) -> S3Upload:
        return S3Upload(self, key)

    def sink(self, resource_id: str) -> Callable[[str], S3Upload]:
        """A factory for ``fetch(sink=...)``: the filename is known once the
        response headers are in."""
        return lambda filename: self.open_upload(self.new_key(resource_id, filename or "resource"))

    def upload_file(self, key: str, fileobj: Any) -> S3Upload:
        """Stream an open binary file into ``key`` (completed)."""
        upload = self.open_upload(key)
        try:
            for chunk in iter(lambda: fileobj.read(1024 * 1024), b""):
                upload.write(chunk)
            upload.complete()
        except BaseException:
            upload.abort()
            raise
        return upload

    # -- files follow rows (the seam engine.storage.Storage has too) --------

    def stage(self, resource_id: str, upload: S3Upload, filename: str) -> Staged:
        """Complete ``upload`` (a new version key of the resource: no row
        names it yet, the previous object stays until :meth:`keep`)."""
        upload.complete()
        return Staged(resource_id, upload.key)

    def keep(self, staged: Staged) -> None:
        """The row naming ``staged.path`` is committed: delete the
        resource's other objects (the one it replaces among them)."""
        rid = resource_of(staged.path)
        if rid is None:
            return
        doomed, freed = [], 0
        for key, size, _ in self.objects(f"{rid[:2]}/{rid}/"):
            if key != staged.path:
                doomed.append(key)
                freed += size
        self.delete_many(doomed)
        self._adjust_used(-freed)

    def discard(self, staged: Staged) -> None:
        """The row naming ``staged.path`` was not committed: delete the new
        object (the row still names the previous one, untouched)."""
        self.delete(staged.path)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.object_name(key))
        except botocore.exceptions.BotoCoreError as e:
            raise StoreError(describe_error("Deleting from the store failed", e)) from None
        except botocore.exceptions.ClientError as e:
            raise StoreError(describe_error("Deleting from the store failed", e)) from None

    def remove(self, resource_id: str) -> int:
        """Delete every object of the resource; returns the bytes freed."""
        freed = 0
        keys = []
        for key, size, _ in self.objects(f"{resource_id[:2]}/{resource_id}/"):
            keys.append(key)
            freed += size
        self.delete_many(keys)
        self._adjust_used(-freed)
        return freed

    def delete_many(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self.prefix + k} for k in keys[start:start + 1000]]
            try:
                self.client.delete_objects(Bucket=self.bucket,
                                           Delete={"Objects": batch, "Quiet": True})
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
                raise StoreError(describe_error("Deleting from the store failed", e)) from None

    # -- reading ---------------------------------------------------------

    def _read_or_none(self, call: Any, key: str) -> Optional[dict]:
        """``call`` (a client method) on the object; None when there is no
        such object, a StoreError for any other failure."""
        try:
            return call(Bucket=self.bucket, Key=self.object_name(key))
        except botocore.exceptions.ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise StoreError(describe_error("Reading from the store failed", e)) from None
        except botocore.exceptions.BotoCoreError as e:
            raise StoreError(describe_error("Reading from the store failed", e)) from None

    def head(self, key: str) -> Optional[dict]:
        """``{"size", "metadata", "last_modified"}`` of the object, None when
        there is none."""
        r = self._read_or_none(self.client.head_object, key)
        if r is None:
            return None
        return {"size": r["ContentLength"], "metadata": r.get("Metadata") or {},
                "last_modified": r.get("LastModified")}

    def read_bytes(self, key: str, limit: int = 1 << 20) -> Optional[bytes]:
        """The object's first ``limit`` bytes (a small record), None when
        there is no such object."""
        r = self._read_or_none(self.client.get_object, key)
        if r is None:
            return None
        body = r["Body"]
        try:
            return body.read(limit)
        finally:
            body.close()

    def open(self, key: str, byte_range: Optional[tuple[int, int]] = None) -> Any:
        """A streamed body (``read(n)``, ``iter_chunks()``, ``close()``)."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.object_name(key)}
        if byte_range is not None:
            params["Range"] = "bytes={}-{}".format(*byte_range)
        try:
            return self.client.get_object(**params)["Body"]
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            raise StoreError(describe_error("Reading from the store failed", e)) from None

    def presigned_get(self, key: str, content_disposition: Optional[str] = None,
                      content_type: Optional[str] = None,
                      expires: Optional[int] = None) -> str:
        """A GET URL valid for ``expires`` (default ``presign_seconds``)
        seconds that answers with these headers (and honours Range)."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.object_name(key)}
        if content_disposition:
            params["ResponseContentDisposition"] = content_disposition
        if content_type:
            params["ResponseContentType"] = content_type
        return self.client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=expires or self.presign_seconds)

    def objects(self, under: str = "") -> Iterator[tuple[str, int, datetime.datetime]]:
        """``(key, size, last_modified)`` of every object under ``under``
        (relative to the prefix)."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + under):
                for obj in page.get("Contents", []):
                    yield obj["Key"][len(self.prefix):], obj["Size"], obj["LastModified"]
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            raise StoreError(describe_error("Listing the store failed", e)) from None

    def unfinished_uploads(self) -> Iterator[tuple[str, str, datetime.datetime]]:
        """``(key, upload_id, initiated)`` of multipart uploads in progress
        (or abandoned by a killed worker)."""
        paginator = self.client.get_paginator("list_multipart_uploads")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for up in page.get("Uploads", []):
                    yield up["Key"][len(self.prefix):], up["UploadId"], up["Initiated"]
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            raise StoreError(describe_error("Listing the store failed", e)) from None

    # -- quota -----------------------------------------------------------

    def _count_used(self) -> int:
        """The rows' bytes (``used_bytes`` of the constructor), 0 without."""
        return int(self._used_source() or 0) if self._used_source else 0

    def has_room(self, nbytes: int, on_disk: bool = False) -> bool:
        """Whether ``nbytes`` more fit in the quota (a bucket has no disk to
        fill; ``on_disk`` is accepted for the local store's signature)."""
        return self.within_quota(nbytes)

    # -- housekeeping ----------------------------------------------------

    def clean(self, keep: Union[Callable[[str], bool], set, frozenset, dict],
              dry_run: bool = False, named: Optional[Callable[[str], bool]] = None,
              min_age: float = STALE_UPLOAD_SECONDS) -> tuple:
        """Delete the objects of resources not in ``keep`` and, with
        ``named`` (is this key the one a row names?), objects of kept
        resources that no row names (left by a batch whose commit failed);
        abort multipart uploads older than ``min_age`` seconds. Objects
        younger than ``min_age`` are left alone (their row may be about to
        commit).

        :returns: ``(objects_removed, bytes_freed)`` (what would be, when
            ``dry_run``).
        """
        wanted = keep if callable(keep) else (lambda rid: rid in keep)
        cutoff = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(
            seconds=min_age)
        doomed, freed = [], 0
        for key, size, modified in self.objects():
            rid = resource_of(key)
            if rid is None:
                continue  # not ours: never touched
            if wanted(rid) and (named is None or named(key) or modified > cutoff):
                continue
            doomed.append(key)
            freed += size
        # a dataset zip's upload may run for hours: engine.zipper_s3.clean's
        stale = [(k, u) for k, u, started in self.unfinished_uploads()
                 if started < cutoff and package_of(k) is None]
        if not dry_run:
            self.delete_many(doomed)
            for key, upload_id in stale:
                self._abort(key, upload_id)
            self._adjust_used(-freed)
        return len(doomed), freed

    def _abort(self, key: str, upload_id: str) -> None:
        for attempt in range(3):
            try:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.prefix + key, UploadId=upload_id)
                return
            except botocore.exceptions.ClientError as e:
                if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return  # already gone
                if attempt == 2:
                    raise StoreError(describe_error("Aborting an upload failed", e)) from None
            except botocore.exceptions.BotoCoreError as e:
                if attempt == 2:
                    raise StoreError(describe_error("Aborting an upload failed", e)) from None
            time.sleep(0.2 * (attempt + 1))
