"""Resources being archived right now, across every worker and host.

A worker claims each resource of its batch with a Redis key
(``archiver:<site_id>:running:<rid>``, ``SET NX`` with a short expiry and
its own token) and keeps the claims alive from a heartbeat thread while it
works; it releases each one once its row is committed. A second worker
handed the same resource meanwhile (a message delivered again by the
broker's visibility timeout, an edit queued on priority) sees it claimed and
puts it back on the queue for later, so no resource is archived twice at the
same time. The claims of a host that dies expire ``TTL`` seconds after its
last heartbeat.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from typing import Iterable

import redis

from ckanext.archiver import config, keys

__all__ = ["Claims", "TTL"]

log = logging.getLogger(__name__)

TTL = 30  # seconds a claim outlives its worker's last heartbeat
_RELEASE = """
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[1] then n = n + redis.call('del', key) end
end
return n
"""
_EXTEND = """
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[1] then n = n + redis.call('expire', key, ARGV[2]) end
end
return n
"""


class Claims:
    """The claims of one batch (see the module docstring)."""

    def __init__(self, options: config.Options, ttl: int = TTL):
        self.options = options
        self.ttl = ttl
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._redis = keys.client(options)

    def _key(self, resource_id: str) -> str:
        return keys.running(self.options, resource_id)

    def claim(self, resource_ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """``(claimed, busy)``: busy ones are being archived elsewhere. When
        Redis cannot be reached every resource counts as claimed (archiving
        goes on, as without this guard)."""
        ids = list(resource_ids)
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for rid in ids:
                    pipe.set(self._key(rid), self.token, nx=True, ex=self.ttl)
                got = pipe.execute()
        except redis.exceptions.RedisError as e:
            log.warning("Could not claim resources in Redis (%s): archiving anyway", e)
            return ids, []
        claimed = [rid for rid, ok in zip(ids, got) if ok]
        with self._lock:
            self.held.update(claimed)
        if claimed and self._thread is None:
            self._thread = threading.Thread(target=self._beat, daemon=True,
                                            name="archiver-claims")
            self._thread.start()
        return claimed, [rid for rid, ok in zip(ids, got) if not ok]

    def release(self, resource_ids: Iterable[str]) -> None:
        with self._lock:
            ids = [rid for rid in resource_ids if rid in self.held]
            self.held.difference_update(ids)
            empty = not self.held
        if ids:
            try:
                self._redis.eval(_RELEASE, len(ids), *[self._key(r) for r in ids], self.token)
            except redis.exceptions.RedisError as e:  # they expire by themselves
                log.warning("Could not release claims in Redis (%s)", e)
        if empty:
            self._stop.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with self._lock:
                ids = list(self.held)
            if not ids:
                break
            try:
                self._redis.eval(_EXTEND, len(ids), *[self._key(r) for r in ids],
                                 self.token, self.ttl)
            except redis.exceptions.RedisError as e:
                log.warning("Could not extend claims in Redis (%s)", e)
