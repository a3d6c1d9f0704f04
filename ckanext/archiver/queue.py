"""Old import path: putting resources on the queues is ``worker.dispatch``."""

from __future__ import annotations

from ckanext.archiver import config, keys
from ckanext.archiver.keys import _clients as _redis  # noqa: F401 (tests clear it)
from ckanext.archiver.worker.dispatch import (
    PENDING_TTL,
    QUEUES,
    after_commit,
    enqueue,
    lengths,
    needing_check,
    purge,
    release,
    requeue_lost,
)

__all__ = ["QUEUES", "PENDING_TTL", "enqueue", "release", "requeue_lost", "lengths", "purge",
           "needing_check", "after_commit", "redis_client", "pending_key"]


def redis_client():
    return keys.client(config.current())


def pending_key(resource_id: str) -> str:
    return keys.pending(config.current(), resource_id)
