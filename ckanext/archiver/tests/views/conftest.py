"""Fixtures shared by the page tests."""

import pytest
from ckan.tests import factories
from pytest_httpserver import HTTPServer


@pytest.fixture
def origin():
    """An origin server of our own (one test stops it)."""
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    yield server
    if server.is_running():
        server.stop()


@pytest.fixture
def sysadmin():
    return factories.Sysadmin()
