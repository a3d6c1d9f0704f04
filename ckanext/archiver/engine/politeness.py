"""Per-host politeness shared by every worker, through Redis: at most N
requests in flight to one host and a least gap between two requests to it.

A slot is a member of a sorted set scored by its expiry, so a worker that
dies holding one does not block the host for longer than the lease.

A host that stopped answering (its last requests all timed out) is not
tried for each of its resources, only once a minute: without that, a dead
host with thousands of resources holds its slots for a whole
``read_timeout`` per resource, for hours.
"""

from __future__ import annotations

import time
import uuid
from typing import Optional

import redis

# KEYS[1] leases (zset member=token score=expiry), KEYS[2] time of the
# last start, KEYS[3] timeouts in a row, KEYS[4] the probe mark. ARGV: max
# concurrent, min interval (s), lease (s), token, timeouts before the host
# counts as not answering (0: never), seconds between probes.
# Returns 0 when the slot is taken, -n when the host did not answer its
# last n requests (not tried), else milliseconds worth waiting.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit = tonumber(ARGV[5])
local timeouts = tonumber(redis.call('GET', KEYS[3]) or '0')
local down = limit > 0 and timeouts >= limit
if down and redis.call('EXISTS', KEYS[4]) == 1 then
  return -timeouts
end
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
if down then
  redis.call('SET', KEYS[4], '1', 'EX', ARGV[6])
end
local lease = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + lease, ARGV[4])
redis.call('EXPIRE', KEYS[1], math.ceil(lease) + 60)
redis.call('SET', KEYS[2], tostring(now), 'EX', math.ceil(gap) + 60)
return 0
"""

DOWN_MEMORY = 600  # seconds a host's timeouts in a row are remembered
PROBE_INTERVAL = 60  # seconds between two tries of a host that stopped answering


class HostNotAnswering(Exception):
    """The host timed out on its last ``timeouts`` requests: not tried."""

    def __init__(self, host: str, timeouts: int):
        super().__init__(host, timeouts)
        self.host, self.timeouts = host, timeouts


class HostLimiter:
    """``acquire`` a slot before a request to a host, ``release`` it after,
    saying whether the host answered. After ``down_after`` timeouts in a
    row (0: never) a host counts as not answering: ``acquire`` raises
    HostNotAnswering, except for one probe request every PROBE_INTERVAL
    seconds, until the host answers again or DOWN_MEMORY seconds pass
    without a timeout."""

    def __init__(self, client: redis.Redis, prefix: str, max_concurrent: int,
                 min_interval: float, lease: float, down_after: int = 0):
        self.client = client
        self.prefix = prefix
        self.max_concurrent = max(1, max_concurrent)
        self.min_interval = max(0.0, min_interval)
        self.lease = lease
        self.down_after = max(0, down_after)
        self._script = client.register_script(_ACQUIRE)

    def _keys(self, host: str) -> list[str]:
        base = f"{self.prefix}:host:{host.lower()}"
        return [base + ":leases", base + ":last", base + ":timeouts", base + ":probe"]

    def acquire(self, host: str, timeout: float) -> Optional[str]:
        """Wait for a slot on ``host`` for up to ``timeout`` seconds; return
        its token, or None when none came free in time."""
        token = uuid.uuid4().hex
        give_up = time.monotonic() + timeout
        keys = self._keys(host)
        while True:
            wait_ms = int(self._script(
                keys=keys,
                args=[self.max_concurrent, self.min_interval, self.lease, token,
                      self.down_after, PROBE_INTERVAL]))
            if wait_ms == 0:
                return token
            if wait_ms < 0:
                raise HostNotAnswering(host, -wait_ms)
            if time.monotonic() + wait_ms / 1000 > give_up:
                return None
            time.sleep(wait_ms / 1000)

    def release(self, host: str, token: str, answered: Optional[bool] = None) -> None:
        """Give the slot back; ``answered`` False: the host timed out before
        sending a response, True: it sent one, None: neither is known."""
        keys = self._keys(host)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zrem(keys[0], token)
            if answered:
                pipe.delete(keys[2], keys[3])
            elif answered is False:
                pipe.incr(keys[2])
                pipe.expire(keys[2], DOWN_MEMORY)
            pipe.execute()
