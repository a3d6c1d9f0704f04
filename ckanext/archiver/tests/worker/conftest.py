"""Fixtures shared by the worker tests."""

import pytest

from ckanext.archiver import interfaces


@pytest.fixture
def events():
    """``(signal name, resource or package id)`` of every ``archived`` and
    ``package-archived`` signal sent while the test runs, in order."""
    seen = []

    def listener(sender, **kw):
        seen.append((sender, kw.get("resource_id") or kw.get("package_id")))

    for name in ("archived", "package-archived"):
        interfaces.signal(name).connect(listener)
    yield seen
    for name in ("archived", "package-archived"):
        interfaces.signal(name).disconnect(listener)
