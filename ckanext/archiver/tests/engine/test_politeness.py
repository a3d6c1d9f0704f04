"""politeness.HostLimiter on the test Redis: slots, the least gap, and hosts
that stopped answering."""

import time
import uuid

import pytest
import redis

from ckanext.archiver.engine import politeness
from ckanext.archiver.engine.politeness import HostLimiter, HostNotAnswering


@pytest.fixture
def limiter_for(ckan_config):
    client = redis.Redis.from_url(ckan_config["ckan.redis.url"])
    prefix = f"archiver:test-{uuid.uuid4().hex}"

    def make(**options):
        options = {"max_concurrent": 2, "min_interval": 0, "lease": 30} | options
        return HostLimiter(client, prefix, **options)

    yield make
    keys = list(client.scan_iter(match=prefix + ":*"))
    if keys:
        client.delete(*keys)


def test_slots_per_host(limiter_for):
    limiter = limiter_for(max_concurrent=2)
    a = limiter.acquire("example.org", timeout=1)
    b = limiter.acquire("EXAMPLE.org", timeout=1)
    assert a and b
    assert limiter.acquire("example.org", timeout=0.1) is None, "both slots taken"
    assert limiter.acquire("other.example", timeout=0.1), "another host is not held up"
    limiter.release("example.org", a)
    assert limiter.acquire("example.org", timeout=0.1)


def test_least_gap_between_requests(limiter_for):
    limiter = limiter_for(max_concurrent=5, min_interval=0.3)
    started = time.monotonic()
    limiter.acquire("example.org", timeout=2)
    limiter.acquire("example.org", timeout=2)
    assert time.monotonic() - started >= 0.29


def test_host_not_answering_after_timeouts_in_a_row(limiter_for):
    limiter = limiter_for(max_concurrent=10, down_after=3)
    for _ in range(2):
        limiter.release("dead.example", limiter.acquire("dead.example", 1), answered=False)
    # an answer in between starts the count again
    limiter.release("dead.example", limiter.acquire("dead.example", 1), answered=True)
    for _ in range(3):
        limiter.release("dead.example", limiter.acquire("dead.example", 1), answered=False)
    probe = limiter.acquire("dead.example", 1)
    assert probe, "one probe request goes through"
    with pytest.raises(HostNotAnswering) as e:
        limiter.acquire("dead.example", 1)
    assert (e.value.host, e.value.timeouts) == ("dead.example", 3)
    assert limiter.acquire("alive.example", 1), "other hosts are tried"
    # neither an answer nor a timeout known (a refused connection, say)
    limiter.release("dead.example", probe, answered=None)
    with pytest.raises(HostNotAnswering):
        limiter.acquire("dead.example", 1)


def test_probe_that_times_out_keeps_the_host_down(limiter_for, monkeypatch):
    monkeypatch.setattr(politeness, "PROBE_INTERVAL", 1)
    limiter = limiter_for(max_concurrent=10, down_after=2)
    for _ in range(2):
        limiter.release("dead.example", limiter.acquire("dead.example", 1), answered=False)
    probe = limiter.acquire("dead.example", 1)
    limiter.release("dead.example", probe, answered=False)
    with pytest.raises(HostNotAnswering) as e:
        limiter.acquire("dead.example", 1)
    assert e.value.timeouts == 3
    time.sleep(1.1)
    probe = limiter.acquire("dead.example", 1)
    assert probe, "the next probe, a probe interval later"
    limiter.release("dead.example", probe, answered=True)
    assert limiter.acquire("dead.example", 1) and limiter.acquire("dead.example", 1), (
        "it answered: every request goes again")


def test_timeouts_forgotten_after_a_while(limiter_for, monkeypatch):
    monkeypatch.setattr(politeness, "DOWN_MEMORY", 1)
    limiter = limiter_for(max_concurrent=10, down_after=1)
    limiter.release("dead.example", limiter.acquire("dead.example", 1), answered=False)
    limiter.acquire("dead.example", 1)  # the probe
    with pytest.raises(HostNotAnswering):
        limiter.acquire("dead.example", 1)
    time.sleep(1.2)
    assert limiter.acquire("dead.example", 1)


def test_zero_never_skips(limiter_for):
    limiter = limiter_for(max_concurrent=10, down_after=0)
    for _ in range(20):
        limiter.release("dead.example", limiter.acquire("dead.example", 1), answered=False)
    assert limiter.acquire("dead.example", 1)
