"""sha1 + sha256 of a stream or a file. No CKAN imports."""

from __future__ import annotations

import hashlib
import queue
import threading
from typing import Any, Optional

__all__ = ["Hasher", "hash_file"]


class Hasher:
    """sha1 + sha256 of a stream. Past the first MB the hashing moves to a
    helper thread (hashlib releases the GIL), overlapping it with the socket
    reads and file writes. Chunks are handed over in batches of about 1 MB
    through a small bounded queue, so memory stays flat (a few MB at most)."""

    INLINE_BYTES = 1 << 20
    BATCH_BYTES = 1 << 20

    def __init__(self) -> None:
        self._hashes = (hashlib.sha1(), hashlib.sha256())
        self._seen = 0
        self._batch: list = []
        self._batch_bytes = 0
        self._queue: Optional[queue.Queue] = None
        self._thread: Optional[threading.Thread] = None

    def update(self, chunk: bytes) -> None:
        self._seen += len(chunk)
        if self._queue is None and self._seen <= self.INLINE_BYTES:
            for h in self._hashes:
                h.update(chunk)
            return
        if self._queue is None:
            self._queue = queue.Queue(maxsize=4)
            self._thread = threading.Thread(target=self._work, name="fetch-hash", daemon=True)
            self._thread.start()
        self._batch.append(chunk)
        self._batch_bytes += len(chunk)
        if self._batch_bytes >= self.BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            self._queue.put(self._batch)
            self._batch, self._batch_bytes = [], 0

    def _work(self) -> None:
        while (batch := self._queue.get()) is not None:
            for chunk in batch:
                for h in self._hashes:
                    h.update(chunk)

    def close(self) -> None:
        if self._thread is not None:
            self._flush()
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def hexdigests(self) -> tuple:
        self.close()
        return tuple(h.hexdigest() for h in self._hashes)

    def __enter__(self) -> Hasher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def hash_file(path: str, chunk_size: int = 1 << 20) -> tuple[str, str, int]:
    """(sha1 hex, sha256 hex, size) of a file, read in chunks."""
    sha1, sha256, size = hashlib.sha1(), hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            sha1.update(chunk)
            sha256.update(chunk)
            size += len(chunk)
    return sha1.hexdigest(), sha256.hexdigest(), size
