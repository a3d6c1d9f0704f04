"""Streaming a response body to a temporary file: the download part of an
attempt (``engine.attempt._Attempt`` inherits it), with hashing, the size
cap on decoded bytes, the deadline between reads, and sniffing. No CKAN
imports."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any, Iterator, Optional

import requests
import urllib3

from ckanext.archiver import status
from ckanext.archiver.engine.deadline import Deadline
from ckanext.archiver.engine.errors import Done, os_error
from ckanext.archiver.engine.hashing import Hasher
from ckanext.archiver.engine.headers import human
from ckanext.archiver.engine.outcome import Outcome
from ckanext.archiver.engine.sink import StoreError
from ckanext.archiver.engine.sniff import HTML_TYPES, SNIFF_BYTES, decide_mimetype

__all__ = ["Download", "chunks"]


class Download:
    """The body of a 2xx response (mixed into the attempt: uses its
    ``settings``, ``deadline``, ``previous``, ``tmp_dir``, ``sink``,
    ``staged`` and ``stop``)."""

    def _download(self, response, declared_type, length, filename) -> Outcome:
        raw = response.raw
        cap = self.settings.max_content_length or 0
        chunk_size = max(int(self.settings.chunk_size or 0), 1024)
        hasher = Hasher()
        head = bytearray()
        written = 0
        if self.sink is not None:
            out: Any = self._open_sink(filename)
        else:
            try:
                os.makedirs(self.tmp_dir, exist_ok=True)
                fd, self.tmp_path = tempfile.mkstemp(
                    dir=self.tmp_dir, prefix="fetch-", suffix=".part")
            except OSError as e:
                reason = f"Could not create a temporary file ({os_error(e)})"
                raise self.stop(status.SYSTEM_ERROR, reason) from None
            out = open(fd, "wb", buffering=0)
        with out, hasher:
            try:
                for chunk in chunks(raw, chunk_size, self.deadline):
                    written += len(chunk)
                    self.bytes_received = raw.tell()
                    if cap and written > cap:
                        raise self._too_large(cap, written, response)
                    hasher.update(chunk)
                    if len(head) < SNIFF_BYTES:
                        head += chunk[: SNIFF_BYTES - len(head)]
                    self._write(out, chunk)
                self.deadline.observe(None, None)  # the connection is back in the pool
                self.bytes_received = raw.tell()
                if self.deadline.expired:
                    raise self._timeout()
                if raw.length_remaining:  # belt and braces: urllib3 raises first
                    raise self._incomplete(length)
            except Done:
                raise
            except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as e:
                self.bytes_received = raw.tell()
                raise self._body_error(e, length, response) from None

        sha1_hex, sha256_hex = hasher.hexdigests()
        mimetype = decide_mimetype(declared_type, bytes(head), filename)
        is_web_page = mimetype in HTML_TYPES
        fields = dict(
            mimetype=mimetype,
            size=written,
            hash=sha1_hex,
            sha256=sha256_hex,
            filename=filename,
            is_web_page=is_web_page,
        )
        if self.previous.sha256 and self.previous.sha256 == sha256_hex and self._cache_file_ok():
            self.discard_tmp()
            return self.result(
                status.UNCHANGED,
                "Content has not changed (the server sent the same file again)",
                **fields,
            )
        if written == 0:
            reason = "Empty file (0 bytes)"
        elif is_web_page:
            reason = f"Downloaded {human(written)}, but the link goes to a web page, not a file"
        else:
            reason = f"Downloaded {human(written)}"
        return self.result(status.ARCHIVED, reason, tmp_path=self.tmp_path,
                           staged=self.staged, **fields)

    def _discard(self, response: requests.Response) -> None:
        """Let go of a response whose body is not wanted: read a small rest so
        the connection can be reused, otherwise close it."""
        raw = response.raw
        remaining = getattr(raw, "length_remaining", None)
        try:
            if remaining is not None and remaining <= 64 * 1024:
                raw.drain_conn()  # still under the deadline: a drip cannot hold it
                if not self.deadline.expired:
                    raw.release_conn()
                    return
        except Exception:  # noqa: BLE001 - any failure: just close
            pass
        finally:
            self.deadline.observe(None, None)  # the connection may be back in the pool
        response.close()

    def _write(self, out: Any, chunk: bytes) -> None:
        """Write all of ``chunk`` to the unbuffered file (or the sink); a
        disk or store error (disk full, store refused...) is a system error."""
        if self.staged is not None:
            try:
                self.staged.write(chunk)
            except StoreError as e:
                raise self.stop(status.SYSTEM_ERROR, f"Could not save the download ({e})") from None
            return
        view = memoryview(chunk)
        try:
            while view:
                view = view[out.write(view) :]
        except OSError as e:
            reason = f"Could not save the download ({os_error(e)})"
            raise self.stop(status.SYSTEM_ERROR, reason) from None

    def _open_sink(self, filename: Optional[str]) -> Any:
        try:
            self.staged = self.sink(filename or "resource")
        except (StoreError, ValueError) as e:
            raise self.stop(status.SYSTEM_ERROR, f"Could not save the download ({e})") from None
        return contextlib.nullcontext(self.staged)



def chunks(raw: Any, chunk_size: int, deadline: Deadline) -> Iterator[bytes]:
    """Decoded body chunks, one socket read at a time (``read1``), checking
    the deadline between reads."""
    while True:
        left = deadline.remaining()
        if left is not None and left <= 0:
            return
        chunk = raw.read1(chunk_size, decode_content=True)
        if not chunk:
            return
        yield chunk
