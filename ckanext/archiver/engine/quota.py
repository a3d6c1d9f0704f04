"""The archive quota (``max_archive_bytes``): the bytes the archive keeps,
counted once a minute and adjusted meanwhile by the store's own writes and
deletions. The one copy of this bookkeeping, shared by the local
``engine.storage.Storage`` and the S3 ``engine.store_s3.S3Store`` (each says
how its bytes are counted: a walk of ``archive_dir``, or the rows' sizes
from the database). Standard library only."""

from __future__ import annotations

import threading
import time
from typing import Optional

__all__ = ["UsedBytes", "USED_BYTES_TTL"]

USED_BYTES_TTL = 60.0


class UsedBytes:
    """Base of the stores: ``used_bytes``, the quota check and
    ``_adjust_used``. A subclass calls :meth:`_init_used` and implements
    :meth:`_count_used`."""

    max_archive_bytes: int

    def _init_used(self, max_archive_bytes: int) -> None:
        self.max_archive_bytes = max_archive_bytes or 0
        self._lock = threading.Lock()
        self._used: Optional[int] = None
        self._used_at = 0.0

    def _count_used(self) -> int:
        """The bytes the archive keeps, counted afresh (slow)."""
        raise NotImplementedError

    def used_bytes(self, refresh: bool = False) -> int:
        """Bytes kept by the archive (cached for a minute; adjusted by this
        instance's own stores and removals)."""
        with self._lock:
            fresh = time.monotonic() - self._used_at < USED_BYTES_TTL
            if self._used is not None and fresh and not refresh:
                return self._used
        used = self._count_used()
        with self._lock:
            self._used, self._used_at = used, time.monotonic()
        return used

    def within_quota(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more fit in ``max_archive_bytes`` (0: no quota)."""
        nbytes = max(int(nbytes or 0), 0)
        return not (self.max_archive_bytes
                    and self.used_bytes() + nbytes > self.max_archive_bytes)

    def _adjust_used(self, delta: int) -> None:
        with self._lock:
            if self._used is not None:
                self._used = max(self._used + delta, 0)
