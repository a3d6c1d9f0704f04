"""The webhook's Retry-After rule is the engine's (it ignored HTTP dates)."""

from __future__ import annotations

import datetime
from email.utils import format_datetime

import pytest

from ckanext.archiver.engine.headers import parse_retry_after
from ckanext.archiver.worker.webhook import MAX_RETRY_AFTER, retry_after


def test_retry_after_as_an_http_date_counts():
    when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=30)
    value = format_datetime(when, usegmt=True)
    assert 25 <= retry_after(value) <= 31
    assert retry_after(value) == pytest.approx(parse_retry_after(value), abs=1)


@pytest.mark.parametrize("value, seconds", [
    ("5", 5.0), ("0", 0.0), ("3600", MAX_RETRY_AFTER), ("soon", None), ("", None),
    (None, None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
])
def test_retry_after_values(value, seconds):
    assert retry_after(value) == seconds
