"""One object being written to the S3-compatible store (:class:`S3Upload`,
what ``fetch(sink=...)`` streams into), the store's key rule
(:func:`check_key`) and its one-line errors (:func:`describe_error`).
See ``engine.store_s3``. No ckan / flask / celery / sqlalchemy imports."""

from __future__ import annotations

import re
from typing import Any, Optional, Union

import botocore.exceptions

from ckanext.archiver.engine.sink import StoreError

__all__ = ["S3Upload", "check_key", "check_object_key", "resource_of", "package_of",
           "describe_error", "PACKAGES"]

_RESOURCE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
PACKAGES = "packages"  # dataset zips: packages/<package_id>/... (engine.zipper_s3)


def describe_error(action: str, e: BaseException) -> str:
    """One line: what failed and the store's own words."""
    if isinstance(e, botocore.exceptions.ClientError):
        err = e.response.get("Error", {})
        code = err.get("Code") or e.response.get("ResponseMetadata", {}).get(
            "HTTPStatusCode", "?")
        message = " ".join(str(err.get("Message") or "").split())[:200]
        return f"{action}: the store answered {code}" + (f" ({message})" if message else "")
    if isinstance(e, botocore.exceptions.NoCredentialsError):
        return f"{action}: no S3 credentials configured"
    return f"{action}: {type(e).__name__} ({' '.join(str(e).split())[:200]})"


def check_key(key: str) -> str:
    """``key`` when it is a key this archive writes (``<rid[:2]>/<rid>/...``,
    plain segments, no ``..``); :class:`ValueError` otherwise."""
    if not isinstance(key, str) or key.startswith("/") or "\\" in key:
        raise ValueError(f"Not a key of the archive store: {key!r}")
    parts = key.split("/")
    if (len(parts) < 3 or not _RESOURCE_ID.match(parts[1]) or parts[0] != parts[1][:2]
            or any(p in ("", ".", "..") for p in parts)
            or any(ord(c) < 32 for c in key)):
        raise ValueError(f"Not a key of the archive store: {key!r}")
    return key


def check_object_key(key: str) -> str:
    """``key`` when it names an object this archive writes: a resource's
    copy (:func:`check_key`) or a dataset zip's object
    (``packages/<package_id>/...``); :class:`ValueError` otherwise."""
    if package_of(key) is not None:
        return key
    return check_key(key)


def package_of(key: str) -> Optional[str]:
    """The dataset id of a dataset zip's key, None for any other key."""
    if not isinstance(key, str) or "\\" in key or any(ord(c) < 32 for c in key):
        return None
    parts = key.split("/")
    if (len(parts) < 3 or parts[0] != PACKAGES or not _RESOURCE_ID.match(parts[1])
            or any(p in ("", ".", "..") for p in parts)):
        return None
    return parts[1]


def resource_of(key: str) -> Optional[str]:
    """The resource id a key belongs to, None for a foreign key."""
    try:
        return check_key(key).split("/")[1]
    except ValueError:
        return None


class S3Upload:
    """One object being written: at most one part (``store.part_size``) in
    memory, sent as a multipart upload part when full; a body smaller than
    one part is sent with one PUT on :meth:`complete`. :meth:`abort` leaves
    neither an object nor an unfinished upload."""

    def __init__(self, store: Any, key: str):  # store: engine.store_s3.S3Store
        self.store = store
        self.key = check_object_key(key)
        self.name = store.object_name(key)
        self.size = 0
        self.parts: list[dict] = []
        self.upload_id: Optional[str] = None
        self.done = False
        # the one part held in memory: grown as the first part fills (a small
        # file costs its size), then one buffer of part_size reused
        self._buf = bytearray()
        self._fill = 0
        self._fixed = False

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        self.size += len(view)
        part_size = self.store.part_size
        while view:
            n = min(len(view), part_size - self._fill)
            if self._fixed:
                self._buf[self._fill:self._fill + n] = view[:n]
            else:
                self._buf += view[:n]
            self._fill += n
            view = view[n:]
            if self._fill >= part_size:
                self._send_part(self._buf)
                if not self._fixed:
                    self._buf, self._fixed = bytearray(part_size), True
                self._fill = 0

    def _call(self, action: str, method: str, **params: Any) -> Any:
        try:
            return getattr(self.store.client, method)(
                Bucket=self.store.bucket, Key=self.name, **params)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            raise StoreError(describe_error(action, e)) from None

    def _send_part(self, body: Union[bytes, bytearray]) -> None:
        if self.upload_id is None:
            self.upload_id = self._call("Uploading to the store failed",
                                        "create_multipart_upload")["UploadId"]
        number = len(self.parts) + 1
        r = self._call("Uploading to the store failed", "upload_part",
                       UploadId=self.upload_id, PartNumber=number, Body=body)
        self.parts.append({"PartNumber": number, "ETag": r["ETag"]})

    def complete(self) -> None:
        """Make the object visible (one PUT when the body is under a part)."""
        if self.done:
            return
        tail = bytes(self._buf[:self._fill])
        self._buf, self._fill = bytearray(), 0
        try:
            if self.upload_id is None:
                self._call("Uploading to the store failed", "put_object", Body=tail)
            else:
                if tail or not self.parts:
                    self._send_part(tail)
                self._call("Uploading to the store failed", "complete_multipart_upload",
                           UploadId=self.upload_id, MultipartUpload={"Parts": self.parts})
        except BaseException:
            self.abort()
            raise
        self.done = True
        self.store._adjust_used(self.size)

    def abort(self) -> None:
        """Drop what was sent (idempotent; after :meth:`complete`, nothing)."""
        self._buf, self._fill = bytearray(), 0
        if self.done:
            return
        self.done = True
        if self.upload_id is not None:
            self.store._abort(self.name[len(self.store.prefix):], self.upload_id)
