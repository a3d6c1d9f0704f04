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

A claim names the URL it archives (a digest of it, after the token): a
check of a resource's new URL (an edit) takes the claim over from a worker
still downloading the old one, whose result then goes to the history only
(``model.checks``: superseded), so an edit never waits for a stale download.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import uuid
from typing import Iterable, Optional, Sequence

import redis

from ckanext.archiver import config, keys

__all__ = ["Claims", "TTL"]

log = logging.getLogger(__name__)

TTL = 30  # seconds a claim outlives its worker's last heartbeat
# a claim's value: "<token>:<url digest>"; ARGV[1] is "<token>:"
_MINE = "local v = redis.call('get', key) if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then "
_RELEASE = """
local n = 0
for i, key in ipairs(KEYS) do
  """ + _MINE + """n = n + redis.call('del', key) end
end
return n
"""
_EXTEND = """
local n = 0
for i, key in ipairs(KEYS) do
  """ + _MINE + """n = n + redis.call('expire', key, ARGV[2]) end
end
return n
"""
# KEYS: the claims; ARGV: token, ttl, then one value per key. Free, or held
# for another URL of the resource (an edit overtook that download): taken.
_CLAIM = """
local out = {}
for i, key in ipairs(KEYS) do
  local value = ARGV[i + 2]
  local v = redis.call('get', key)
  local url = string.match(value, ':([^:]*)$')
  local held = v and string.match(v, ':([^:]*)$')
  if (not v) or (url ~= '' and held ~= '' and held ~= url) then
    redis.call('set', key, value, 'EX', ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""


def _digest(url: Optional[str]) -> str:
    return hashlib.sha1((url or "").strip().encode()).hexdigest()[:16] if url else ""


class Claims:
    """The claims of one batch (see the module docstring)."""

    def __init__(self, options: config.Options, ttl: int = TTL, shared: bool = False):
        self.options = options
        self.ttl = ttl
        self.shared = shared  # the process's (of_process): its heartbeat never stops
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._redis = keys.client(options)
        self._claim = self._redis.register_script(_CLAIM)  # sent once, then by digest
        self._release = self._redis.register_script(_RELEASE)
        self._extend = self._redis.register_script(_EXTEND)

    @classmethod
    def of_process(cls, options: config.Options) -> Claims:
        """This process's claims for the checks that waited for their host
        (each a batch of one: one heartbeat thread for all of them, not one
        each). A forked worker child makes its own."""
        key = (os.getpid(), id(keys.client(options)), keys.running(options, ""))
        claims = _shared.get(key)
        if claims is None:
            with _shared_lock:
                claims = _shared.setdefault(key, cls(options, shared=True))
        return claims

    def _key(self, resource_id: str) -> str:
        return keys.running(self.options, resource_id)

    def claim(self, resource_ids: Iterable[str],
              urls: Optional[Sequence[Optional[str]]] = None) -> tuple[list[str], list[str]]:
        """``(claimed, busy)``: busy ones are being archived elsewhere (at
        the same URL, when ``urls`` gives each resource's). When Redis
        cannot be reached every resource counts as claimed (archiving goes
        on, as without this guard)."""
        ids = list(resource_ids)
        if not ids:
            return [], []
        digests = [_digest(u) for u in urls] if urls is not None else [""] * len(ids)
        try:
            got = self._claim(keys=[self._key(r) for r in ids], args=[
                self.token, self.ttl, *[f"{self.token}:{d}" for d in digests]])
        except redis.exceptions.RedisError as e:
            log.warning("Could not claim resources in Redis (%s): archiving anyway", e)
            return ids, []
        claimed = [rid for rid, ok in zip(ids, got) if ok]
        with self._lock:
            self.held.update(claimed)
            start = claimed and self._thread is None
            if start:
                self._thread = threading.Thread(target=self._beat, daemon=True,
                                                name="archiver-claims")
        if start:
            self._thread.start()
        return claimed, [rid for rid, ok in zip(ids, got) if not ok]

    def release(self, resource_ids: Iterable[str]) -> None:
        with self._lock:
            ids = [rid for rid in resource_ids if rid in self.held]
            self.held.difference_update(ids)
            empty = not self.held
        if ids:
            try:
                self._release(keys=[self._key(r) for r in ids], args=[self.token + ":"])
            except redis.exceptions.RedisError as e:  # they expire by themselves
                log.warning("Could not release claims in Redis (%s)", e)
        if empty and not self.shared:
            self._stop.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with self._lock:
                ids = list(self.held)
            if not ids:
                if self.shared:
                    continue
                break
            try:
                self._extend(keys=[self._key(r) for r in ids], args=[self.token + ":", self.ttl])
            except redis.exceptions.RedisError as e:
                log.warning("Could not extend claims in Redis (%s)", e)


_shared: dict[tuple, Claims] = {}
_shared_lock = threading.Lock()
