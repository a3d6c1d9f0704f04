"""Per-host waiting lists and an adaptive pace, shared by every worker
through Redis.

A check of a host with no free slot does not wait for one: ``submit``
puts it on the host's waiting list (a sorted set: priority checks first,
then in order of arrival) and returns at once. Whenever a slot comes free
(``release``, or ``pump`` for slots whose holder died and whose lease ran
out), the script hands out the heads of the list as *grants*: the slot is
leased to the grant from the moment it is given, and the grant says when
its request may start (the host's pace), and the entry's waiting mark
goes (``Grant.mark``: what it said then). The process that freed the slot
runs what it was handed (see ``engine.timer``). So no thread, process or
prefetched task ever waits for a busy host, and the limits hold across all
workers: at most ``max_concurrent`` leases per host, starts at least the
host's current gap apart.

The gap follows the host, in the spirit of Scrapy's AutoThrottle: after a
response in time (``latency``: the caller's measure, the worker's is the
time to the response's headers) its target is ``latency / max_concurrent`` (about
``max_concurrent`` requests in flight, spread evenly), never less than
``min_interval`` and never more than ``max_interval``; the gap moves half
way towards the target when that is faster, at once when slower. A
timeout, a 429 or a 503 doubles it (at least one second), and a
``Retry-After`` keeps the host untouched that long (at most an hour). A
host not seen yet starts at ``start_interval``.

Starts are reserved: a grant whose check comes to start its request
late (a busy machine) asks again (``on_time``), so that the host does not
see its request and the next one closer than the gap.

A host whose last ``down_after`` requests timed out counts as not
answering (as in ``politeness``): one probe a minute (at once, whatever the
pace), the other checks are handed back as not tried.

The keys of ``politeness.HostLimiter`` (leases, last start, timeouts,
probe) are the same, so both can run side by side.

No CKAN imports.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

import redis

DOWN_MEMORY = 600  # seconds a host's timeouts in a row are remembered
PROBE_INTERVAL = 60  # seconds between two tries of a host that stopped answering
HORIZON = 30.0  # a grant is given at most this long before its start
RETRY_AFTER_MAX = 3600  # longest Retry-After honoured for the host's pace
PACE_MEMORY = 24 * 3600  # seconds a host's pace is remembered
WAITING_MEMORY = 7 * 24 * 3600  # as long as a pending mark

# KEYS: 1 leases (zset token -> expiry), 2 time of the last (reserved)
# start, 3 timeouts in a row, 4 probe mark, 5 pace (hash: delay,
# not_before, seq), 6 waiting (zset entry -> class * 1e15 + seq), 7 the set
# of hosts with a waiting list, 8 the waiting entries' marks (hash entry ->
# the mark's key; the marks themselves are the caller's keys, named here,
# not in KEYS: one Redis, not a cluster).
# ARGV: 1 max concurrent, 2 min interval, 3 lease, 4 down after (0 never),
# 5 probe interval, 6 start interval, 7 host, 8 horizon, then the script's.
_COMMON = """
local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function timeouts_down()
  local limit = tonumber(ARGV[4])
  local timeouts = tonumber(redis.call('GET', KEYS[3]) or '0')
  return timeouts, limit > 0 and timeouts >= limit
end

-- a granted entry's mark goes (the entry no longer waits): its value
local function take_mark(entry)
  local key = redis.call('HGET', KEYS[8], entry)
  if not key then return false end
  redis.call('HDEL', KEYS[8], entry)
  local value = redis.call('GET', key)
  redis.call('DEL', key)
  return value or ''
end

-- hand out the heads of the waiting list while slots are free; each
-- grant is 4 values: entry, token, ms (or -timeouts), its mark's value
-- ('' none, false: not known)
local function grant(now, out)
  local C = tonumber(ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  while true do
    local head = redis.call('ZRANGE', KEYS[6], 0, 0)
    if #head == 0 then
      redis.call('SREM', KEYS[7], ARGV[7])
      break
    end
    local timeouts, down = timeouts_down()
    if down and redis.call('EXISTS', KEYS[4]) == 1 then
      redis.call('ZREM', KEYS[6], head[1])
      table.insert(out, head[1]); table.insert(out, ''); table.insert(out, -timeouts)
      table.insert(out, take_mark(head[1]))
    else
      if redis.call('ZCARD', KEYS[1]) >= C then break end
      local delay = tonumber(redis.call('HGET', KEYS[5], 'delay') or ARGV[6])
      local nb = tonumber(redis.call('HGET', KEYS[5], 'not_before') or '0')
      local last = tonumber(redis.call('GET', KEYS[2]) or '0')
      local start = math.max(now, last + delay, nb)
      if down then start = now end  -- the probe: one a PROBE_INTERVAL, not paced
      if start - now > tonumber(ARGV[8]) then break end  -- pump gives it later
      redis.call('ZREM', KEYS[6], head[1])
      if down then redis.call('SET', KEYS[4], '1', 'EX', ARGV[5]) end
      local token = string.format('%.6f:%d', now,
                                  redis.call('HINCRBY', KEYS[5], 'seq', 1))
      local lease = tonumber(ARGV[3])
      redis.call('ZADD', KEYS[1], start + lease, token)
      redis.call('EXPIRE', KEYS[1], math.ceil(start - now + lease) + 60)
      redis.call('SET', KEYS[2], string.format('%.6f', start),
                 'EX', math.ceil(start - now + delay) + 60)
      table.insert(out, head[1]); table.insert(out, token)
      table.insert(out, math.floor((start - now) * 1000))
      table.insert(out, take_mark(head[1]))
    end
  end
  return out
end
"""

# KEYS 9 the entry's pending mark ('' none). ARGV 9 entry, 10 class (0
# priority, 1 bulk), 11 the mark's value, 12 its expiry. Returns {-timeouts}
# when the host does not answer (the entry is not queued), else {0,
# grants...}. The mark is set (never lowered from 'priority' or a forced
# check's 'priority:force', worker.dispatch) while the
# entry waits: set in the same script, no grant can come before it.
_SUBMIT = _COMMON + """
local now = now_s()
local timeouts, down = timeouts_down()
if down and redis.call('EXISTS', KEYS[4]) == 1 then
  return {-timeouts}
end
local seq = redis.call('HINCRBY', KEYS[5], 'seq', 1)
redis.call('ZADD', KEYS[6], tonumber(ARGV[10]) * 1e15 + seq, ARGV[9])
redis.call('EXPIRE', KEYS[6], 604800)
redis.call('EXPIRE', KEYS[5], 86400)
redis.call('SADD', KEYS[7], ARGV[7])
local out = grant(now, {0})
if KEYS[9] ~= '' and redis.call('ZSCORE', KEYS[6], ARGV[9]) then
  local held = redis.call('GET', KEYS[9])
  if held ~= 'priority:force' and (held ~= 'priority' or ARGV[11] == 'priority:force') then
    redis.call('SET', KEYS[9], ARGV[11], 'EX', ARGV[12])
  end
  redis.call('HSET', KEYS[8], ARGV[9], KEYS[9])
  redis.call('EXPIRE', KEYS[8], 604800)
end
return out
"""

# ARGV 9 token, 10 answered ('1', '0' or ''), 11 latency s ('' unknown),
# 12 HTTP status (0 unknown), 13 Retry-After s (0 none), 14 max interval.
_RELEASE = _COMMON + """
local now = now_s()
redis.call('ZREM', KEYS[1], ARGV[9])
local answered = ARGV[10]
if answered == '1' then
  redis.call('DEL', KEYS[3], KEYS[4])
elseif answered == '0' then
  redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], 600)
end
local lo, hi = tonumber(ARGV[2]), tonumber(ARGV[14])
local delay = tonumber(redis.call('HGET', KEYS[5], 'delay') or ARGV[6])
local status = tonumber(ARGV[12])
local latency = tonumber(ARGV[11])
if answered == '0' or status == 429 or status == 503 then
  delay = math.max(2 * delay, 1)
  local wait = tonumber(ARGV[13])
  if wait > 0 then
    redis.call('HSET', KEYS[5], 'not_before', now + math.min(wait, 3600))
  end
elseif answered == '1' and latency and status > 0 and status < 400 then
  local target = math.max(lo, latency / tonumber(ARGV[1]))
  delay = math.max(target, (delay + target) / 2)
end
delay = math.min(hi, math.max(lo, delay))
redis.call('HSET', KEYS[5], 'delay', string.format('%.6f', delay))
redis.call('EXPIRE', KEYS[5], 86400)
return grant(now, {0})
"""

_PUMP = _COMMON + """
return grant(now_s(), {0})
"""

# A grant that starts ``late`` seconds after its reserved start (ARGV 9
# token, 10 late): if a later start was reserved meanwhile, its request
# would reach the host less than the gap after that one, so it gets a new
# start after every start reserved so far; else its start moves to now
# (the next ones are reserved from there). Returns ms to wait.
_RESTART = _COMMON + """
local now = now_s()
if not redis.call('ZSCORE', KEYS[1], ARGV[9]) then return 0 end  -- lease gone
local delay = tonumber(redis.call('HGET', KEYS[5], 'delay') or ARGV[6])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local start = now
if last > now - tonumber(ARGV[10]) + 0.001 then start = math.max(now, last + delay) end
redis.call('SET', KEYS[2], string.format('%.6f', start), 'EX', math.ceil(start - now + delay) + 60)
redis.call('ZADD', KEYS[1], 'XX', start + tonumber(ARGV[3]), ARGV[9])
return math.floor((start - now) * 1000)
"""


@dataclasses.dataclass(frozen=True)
class Grant:
    """A waiting check given a slot: start it ``wait`` seconds from now and
    ``release`` ``token`` after. ``timeouts`` > 0: the host does not answer
    (no slot, no token): record it as not tried. ``mark``: the value of
    the entry's waiting mark when the grant dropped it ('' gone meanwhile,
    None: the entry had none)."""

    host: str
    entry: str
    token: str
    wait: float
    timeouts: int = 0
    mark: Optional[str] = None
    at: float = dataclasses.field(default_factory=time.monotonic, compare=False)

    @property
    def due(self) -> float:
        """When its request may start (``time.monotonic``)."""
        return self.at + self.wait


class HostQueue:
    """``submit`` a check of a host, ``release`` its slot after the request
    with what the host did; both return the grants to run now (see the
    module's docstring)."""

    def __init__(self, client: redis.Redis, prefix: str, max_concurrent: int,
                 min_interval: float, lease: float, down_after: int = 0,
                 start_interval: float = 0.5, max_interval: float = 60.0):
        self.client = client
        self.prefix = prefix
        self.max_concurrent = max(1, max_concurrent)
        self.min_interval = max(0.0, min_interval)
        self.max_interval = max(self.min_interval, max_interval)
        self.start_interval = min(max(self.min_interval, start_interval), self.max_interval)
        self.lease = lease
        self.down_after = max(0, down_after)
        self._submit = client.register_script(_SUBMIT)
        self._release = client.register_script(_RELEASE)
        self._pump = client.register_script(_PUMP)
        self._restart = client.register_script(_RESTART)

    @property
    def hosts_key(self) -> str:
        return f"{self.prefix}:waiting-hosts"

    def _keys(self, host: str) -> list[str]:
        base = f"{self.prefix}:host:{host.lower()}"
        return [base + ":leases", base + ":last", base + ":timeouts", base + ":probe",
                base + ":pace", base + ":waiting", self.hosts_key, base + ":marks"]

    def _args(self, host: str) -> list:
        return [self.max_concurrent, self.min_interval, self.lease, self.down_after,
                PROBE_INTERVAL, self.start_interval, host.lower(), HORIZON]

    @staticmethod
    def _grants(host: str, reply: list) -> list[Grant]:
        out = []
        for k in range(1, len(reply) - 3, 4):
            entry, token, ms, mark = reply[k:k + 4]
            ms = int(ms)
            entry = entry.decode() if isinstance(entry, bytes) else entry
            token = token.decode() if isinstance(token, bytes) else token
            mark = mark.decode() if isinstance(mark, bytes) else (mark or None)
            if ms < 0:
                out.append(Grant(host, entry, "", 0.0, timeouts=-ms, mark=mark))
            else:
                out.append(Grant(host, entry, token, ms / 1000, mark=mark))
        return out

    def submit(self, host: str, entry: str, priority: bool = False,
               mark: Optional[tuple[str, str]] = None) -> tuple[int, list[Grant]]:
        """Put ``entry`` on ``host``'s waiting list (priority ones first);
        return ``(timeouts, grants)``: ``timeouts`` > 0 when the host does
        not answer (``entry`` was not queued: not tried), and the grants
        this call handed out (``entry``'s own among them if its turn came).
        ``mark`` (key, value): set while the entry waits."""
        host = host.lower()
        key, value = mark or ("", "")
        reply = self._submit(keys=self._keys(host) + [key], args=self._args(host) + [
            entry, 0 if priority else 1, value, WAITING_MEMORY])
        if int(reply[0]) < 0:
            return -int(reply[0]), []
        return 0, self._grants(host, reply)

    def release(self, host: str, token: str, answered: Optional[bool] = None,
                latency: Optional[float] = None, http_status: Optional[int] = None,
                retry_after: Optional[float] = None) -> list[Grant]:
        """Give a slot back, saying what the host did (``answered`` True: it
        sent a response after ``latency`` s with ``http_status``; False: it
        timed out; None: not known); return the grants handed out."""
        host = host.lower()
        answered_arg = {True: "1", False: "0", None: ""}[answered]
        reply = self._release(keys=self._keys(host), args=self._args(host) + [
            token, answered_arg, "" if latency is None else f"{latency:.6f}",
            int(http_status or 0), float(retry_after or 0), self.max_interval])
        return self._grants(host, reply)

    def on_time(self, grant: Grant, slack: float) -> Grant:
        """``grant`` itself when its start is less than ``slack`` s late
        (or it has no slot: not answering), else the same slot with a
        new start: at once unless a later start was reserved meanwhile
        (the host would see two requests less than its gap apart), then
        after every start reserved so far."""
        late = time.monotonic() - grant.due
        if late <= slack or not grant.token:
            return grant
        ms = int(self._restart(keys=self._keys(grant.host), args=self._args(grant.host) + [
            grant.token, f"{late:.6f}"]))
        return dataclasses.replace(grant, wait=ms / 1000, at=time.monotonic())

    def pump(self) -> list[Grant]:
        """Grants for hosts whose slots came free without a release (a
        worker died holding them and their lease ran out) or whose next
        start has come within reach."""
        out: list[Grant] = []
        for raw in self.client.smembers(self.hosts_key):
            host = raw.decode()
            out += self._grants(host, self._pump(keys=self._keys(host),
                                                 args=self._args(host)))
        return out

    def not_answering(self, host: str) -> int:
        """Timeouts in a row when ``host`` counts as not answering and its
        probe is out (a check granted earlier should not start), else 0."""
        keys = self._keys(host.lower())
        with self.client.pipeline(transaction=False) as pipe:
            pipe.get(keys[2])
            pipe.exists(keys[3])
            timeouts, probe = pipe.execute()
        timeouts = int(timeouts or 0)
        down = self.down_after and timeouts >= self.down_after and probe
        return timeouts if down else 0

    def pace(self, host: str) -> dict:
        """The host's state: gap (s), not_before, waiting, leased."""
        keys = self._keys(host.lower())
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys[4])
            pipe.zcard(keys[5])
            pipe.zcard(keys[0])
            pace, waiting, leased = pipe.execute()
        return {"gap": float(pace.get(b"delay", self.start_interval)),
                "not_before": float(pace.get(b"not_before", 0)),
                "waiting": int(waiting), "leased": int(leased)}

    def waiting(self, host: str, limit: Optional[int] = None) -> list[str]:
        """The entries waiting for ``host``, next first (the first ``limit``)."""
        end = -1 if limit is None else max(limit, 1) - 1
        return [e.decode() for e in self.client.zrange(self._keys(host.lower())[5], 0, end)]

    def purge(self) -> int:
        """Forget every waiting list; return how many checks were on them."""
        removed = 0
        for raw in self.client.smembers(self.hosts_key):
            keys = self._keys(raw.decode())
            removed += int(self.client.zcard(keys[5]))
            self.client.delete(keys[5], keys[7])
        for key in self.client.scan_iter(match=f"{self.prefix}:host:*:waiting", count=1000):
            removed += int(self.client.zcard(key))
            self.client.delete(key, key[:-len(b"waiting")] + b"marks")
        self.client.delete(self.hosts_key)
        return removed
