"""Per-host politeness shared by every worker, through Redis: at most N
requests in flight to one host and a least gap between two requests to it.

A slot is a member of a sorted set scored by its expiry, so a worker that
dies holding one does not block the host for longer than the lease.
"""

from __future__ import annotations

import time
import uuid
from typing import Optional

import redis

# KEYS[1] leases (zset member=token score=expiry), KEYS[2] time of the
# last start. ARGV: max concurrent, min interval (s), lease (s), token.
# Returns 0 when the slot is taken, else milliseconds worth waiting.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(10, math.min(250, math.ceil((tonumber(first[2]) - now) * 1000)))
end
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local gap = tonumber(ARGV[2])
if now - last < gap then
  return math.max(1, math.ceil((gap - (now - last)) * 1000))
end
local lease = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + lease, ARGV[4])
redis.call('EXPIRE', KEYS[1], math.ceil(lease) + 60)
redis.call('SET', KEYS[2], tostring(now), 'EX', math.ceil(gap) + 60)
return 0
"""


class HostLimiter:
    def __init__(self, client: redis.Redis, prefix: str, max_concurrent: int,
                 min_interval: float, lease: float):
        self.client = client
        self.prefix = prefix
        self.max_concurrent = max(1, max_concurrent)
        self.min_interval = max(0.0, min_interval)
        self.lease = lease
        self._script = client.register_script(_ACQUIRE)

    def _keys(self, host: str) -> list[str]:
        base = f"{self.prefix}:host:{host.lower()}"
        return [base + ":leases", base + ":last"]

    def acquire(self, host: str, timeout: float) -> Optional[str]:
        """Wait for a slot on ``host`` for up to ``timeout`` seconds; return
        its token, or None when none came free in time."""
        token = uuid.uuid4().hex
        give_up = time.monotonic() + timeout
        keys = self._keys(host)
        while True:
            wait_ms = int(self._script(
                keys=keys,
                args=[self.max_concurrent, self.min_interval, self.lease, token]))
            if wait_ms == 0:
                return token
            if time.monotonic() + wait_ms / 1000 > give_up:
                return None
            time.sleep(wait_ms / 1000)

    def release(self, host: str, token: str) -> None:
        self.client.zrem(self._keys(host)[0], token)
