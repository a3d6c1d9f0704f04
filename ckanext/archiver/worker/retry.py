"""When a task is tried again: after a transient failure (exponential
backoff with jitter, at least the server's Retry-After), and when the
handed-off downloads of a batch are checked."""

from __future__ import annotations

import random
from typing import Optional

from ckanext.archiver import config
from ckanext.archiver.worker.app import MAX_COUNTDOWN

__all__ = ["backoff", "late_check_delay", "MAX_DELIVERIES"]

# A message that killed its worker this many times is not given out again.
MAX_DELIVERIES = 3


def backoff(attempt: int, retry_after: Optional[float] = None,
            options: Optional[config.Options] = None) -> int:
    """Seconds before retry number ``attempt + 1``: exponential, with
    jitter, at least the server's Retry-After, at most MAX_COUNTDOWN."""
    options = options or config.current()
    delay = options.retry_delay * (2 ** attempt) * random.uniform(0.75, 1.25)
    if retry_after:
        delay = max(delay, retry_after)
    return int(min(delay, MAX_COUNTDOWN))


def late_check_delay(options: Optional[config.Options] = None) -> int:
    """Seconds after which a handed-off download has surely ended (its
    wait for a host slot plus its deadline, and time to record it), at
    most MAX_COUNTDOWN."""
    options = options or config.current()
    return int(min(options.download_time_max + 15, MAX_COUNTDOWN))
