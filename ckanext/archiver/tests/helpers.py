"""Helpers shared by the tests (imported from here, never from conftest)."""

from __future__ import annotations

import json
import time
from urllib.parse import urlparse

import pytest
from ckan import model
from ckan.common import config as ckan_config

from ckanext.archiver import config, keys
from ckanext.archiver.model import Archival


def login(app, user):
    """Log ``user`` (a dict, or None for anonymous) into the test app's
    session. The test client writes the session cookie for "localhost"
    while requests go to ckan.site_url's host: copy it there. (Session
    requests keep CSRF checks on; API-token requests skip them for good.)"""
    if not hasattr(app, "set_session_user"):
        pytest.skip("session logins in tests need CKAN 2.12's test app")
    app.set_session_user(user["id"] if user else None)
    if user:
        cookie = app.client.get_cookie("ckan", domain="localhost")
        host = urlparse(ckan_config["ckan.site_url"]).hostname
        app.client.set_cookie("ckan", cookie.value, domain=host)


def forget_hosts():
    """Per-host politeness state of earlier tests (every test server is a
    127.0.0.1 host: its timeouts must not make a later test skip it)."""
    options = config.current()
    r = keys.client(options)
    found = list(r.scan_iter(match=keys.host_pattern(options)))
    if found:
        r.delete(*found)


def json_output(output):
    """The JSON document a command printed (older click mixes log lines from
    stderr into the test runner's output: skip to the document)."""
    start = output.index("{") if output.startswith("{") else output.index("\n{") + 1
    return json.loads(output[start:])


def archival_row(resource_id):
    """The resource's archival row as the database has it now."""
    model.Session.remove()
    return Archival.get_for_resource(resource_id)


def checked_row(resource_id):
    """The row once the resource has been checked at least once, else None."""
    row = archival_row(resource_id)
    return row if row is not None and row.status_id is not None else None


def wait_for(predicate, timeout=20.0, interval=0.1):
    """Poll until predicate() is truthy; return its value or fail."""
    give_up = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {predicate}")
        time.sleep(interval)
