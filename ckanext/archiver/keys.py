"""Redis: the client of a process and every key the archiver writes.

All keys start with ``archiver:<site_id>`` (``Options.redis_prefix``), so
that portals sharing a Redis server never see each other's state:

* ``archiver:<site_id>:pending:<resource_id>``: queued, not started (the
  queue it waits on, ``SET NX`` with an expiry);
* ``archiver:<site_id>:deliveries:<task id>``: times a task was handed out;
* ``archiver:<site_id>:host:<host>:{leases,last,timeouts,probe}``: per-host
  politeness (``engine.politeness``), with ``:pace`` and ``:waiting`` (and
  the set ``archiver:<site_id>:waiting-hosts``) the per-host waiting lists
  (``engine.hostqueue``);
* ``archiver:<site_id>:package-pending:<package_id>``: a zip build waiting;
* ``archiver:<site_id>:package-request:<package_id>:<user_id>``: a user asked
  for a zip by email (at most once in ten minutes);
* ``archiver:<site_id>:running:<resource_id>``: a worker's claim on a
  resource it is archiving now (``worker.inflight``).
"""

from __future__ import annotations

import redis

from ckanext.archiver.config import Options
from ckanext.archiver.engine import pool

__all__ = ["REDIS_CONNECTIONS", "client", "pending", "pending_pattern", "deliveries",
           "hosts_prefix", "host_pattern", "package_pending", "package_request", "package_lock",
           "lost_sweep", "running"]

_clients: dict[str, redis.Redis] = {}

# Every download thread of a process may talk to Redis at once (its host's
# slot and waiting list): one connection each, and a thread that finds
# them all in use waits for one instead of failing.
REDIS_CONNECTIONS = pool.POOL_SIZE + 16


def client(options: Options) -> redis.Redis:
    """The process's connection to the broker's Redis (made once per URL)."""
    url = options.broker_url
    if url not in _clients:
        _clients[url] = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
            url, max_connections=REDIS_CONNECTIONS, timeout=10, socket_timeout=5,
            socket_connect_timeout=3))
    return _clients[url]


def forget_clients() -> None:
    """Drop the connections (tests that change the broker URL)."""
    _clients.clear()


def pending(options: Options, resource_id: str) -> str:
    return f"{options.redis_prefix}:pending:{resource_id}"


def pending_pattern(options: Options) -> str:
    return f"{options.redis_prefix}:pending:*"


def deliveries(options: Options, task_id: str) -> str:
    return f"{options.redis_prefix}:deliveries:{task_id}"


def hosts_prefix(options: Options) -> str:
    """Prefix given to ``engine.politeness.HostLimiter``."""
    return options.redis_prefix


def host_pattern(options: Options) -> str:
    return f"{options.redis_prefix}:host:*"


def package_pending(options: Options, package_id: str) -> str:
    return f"{options.redis_prefix}:package-pending:{package_id}"


def package_request(options: Options, package_id: str, user_id: str) -> str:
    return f"{options.redis_prefix}:package-request:{package_id}:{user_id}"


def package_lock(options: Options, package_id: str) -> str:
    """One builder of a dataset's zip at a time, on any host (S3 mode)."""
    return f"{options.redis_prefix}:package-lock:{package_id}"


def lost_sweep(options: Options) -> str:
    """Held by the worker sweeping for lost checks (worker/lost.py)."""
    return f"{options.redis_prefix}:lost-sweep"


def running(options: Options, resource_id: str) -> str:
    """A worker's claim on a resource it is archiving now (worker/inflight.py)."""
    return f"{options.redis_prefix}:running:{resource_id}"
