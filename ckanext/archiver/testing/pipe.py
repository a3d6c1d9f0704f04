"""Test-only plugin ``archiver_test_pipe``: an ``IPipe`` implemented the way
ckanext-qa implements it (``p.implements(IPipe, inherit=True)`` and
``receive_data(operation, queue, **params)`` that loads the dataset of a
``package-archived`` event), recording every event it gets with a snapshot,
read on a connection of its own, of the dataset's archival rows at that
moment. Not for production sites."""

from __future__ import annotations

import threading
from typing import Any

import ckan.plugins as p
import sqlalchemy as sa
from ckan import model

from ckanext.archiver.interfaces import IPipe
from ckanext.archiver.model import rounds

__all__ = ["RecordingPipe"]

_SNAPSHOT = sa.text(f"""
    SELECT r.id, a.status_id, a.reason, ({rounds.WAITING}) AS waiting
    FROM resource r LEFT JOIN archival a ON a.resource_id = r.id
    WHERE r.package_id = :pid AND r.state = 'active'
    ORDER BY r.position
""")


class RecordingPipe(p.SingletonPlugin):
    p.implements(IPipe, inherit=True)

    events: list[dict[str, Any]] = []
    _lock = threading.Lock()

    @classmethod
    def clear(cls) -> None:
        with cls._lock:
            cls.events.clear()

    @classmethod
    def of(cls, operation: str, **params: Any) -> list[dict[str, Any]]:
        with cls._lock:
            return [e for e in cls.events if e["operation"] == operation
                    and all(e["params"].get(k) == v for k, v in params.items())]

    def receive_data(self, operation, queue, **params):
        event = {"operation": operation, "queue": queue, "params": dict(params)}
        if operation == "package-archived":
            dataset = model.Package.get(params["package_id"])  # as qa does
            assert dataset
            with model.meta.engine.connect() as conn:
                event["rows"] = [dict(row._mapping) for row in conn.execute(
                    _SNAPSHOT, {"pid": dataset.id})]
        with self._lock:
            self.events.append(event)
