"""One line instead of CKAN core's traceback when Redis is unreachable.

``ckan.lib.redis.is_redis_available`` logs the whole exception chain (44
lines) at start-up, before any ``ckan archiver`` command can say clearly
that the broker is down. This filter keeps CKAN's record and its error,
without the traceback: ``Redis is not available (Error 111 connecting to
127.0.0.1:6379. Connection refused.)``.
"""

from __future__ import annotations

import logging

LOGGER = "ckan.lib.redis"


class OneLineRedisError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({error})"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def install() -> None:
    """Add the filter to CKAN's Redis logger (once)."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(f, OneLineRedisError) for f in logger.filters):
        logger.addFilter(OneLineRedisError())
