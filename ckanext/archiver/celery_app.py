"""The Celery app (``celery -A ckanext.archiver.celery_app worker``): old and
public import path of ``worker.app``. Importing it loads no Celery and
connects no signal: the app is built on first use, and its worker signals
are connected when a worker starts (``worker.signals``)."""

from __future__ import annotations

from typing import Any, Optional

from ckanext.archiver import config
from ckanext.archiver.worker.app import MAX_COUNTDOWN, build, get_app, reset

__all__ = ["MAX_COUNTDOWN", "build", "get_app", "reset", "queue_name", "broker_url",
           "download_time_max", "time_limits"]


def _options(cfg: Any = None) -> config.Options:
    return config.current(cfg)


def queue_name(name: str, cfg: Optional[Any] = None) -> str:
    """The Celery queue of ``priority`` or ``bulk``: ``<site_id>:<name>``."""
    return _options(cfg).queue_name(name)


def broker_url(cfg: Optional[Any] = None) -> str:
    return _options(cfg).broker_url


def download_time_max(cfg: Optional[Any] = None) -> float:
    return _options(cfg).download_time_max


def time_limits(cfg: Optional[Any] = None) -> tuple[int, int]:
    return _options(cfg).time_limits


def __getattr__(name: str) -> Any:
    # `celery -A ckanext.archiver.celery_app` looks for `app` (or `celery`)
    if name in ("app", "celery"):
        return get_app()
    raise AttributeError(name)
