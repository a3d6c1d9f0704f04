"""engine.hostqueue on the test Redis: waiting lists per host, priority
first, grants spaced by the host's pace, the pace following latency and
backing off, slots of dead workers given out again."""

import time
import uuid

import pytest
import redis

from ckanext.archiver.engine import hostqueue
from ckanext.archiver.engine.hostqueue import HostQueue


@pytest.fixture
def queue_for(ckan_config):
    client = redis.Redis.from_url(ckan_config["ckan.redis.url"])
    prefix = f"archiver:test-{uuid.uuid4().hex}"

    def make(**options):
        options = {"max_concurrent": 2, "min_interval": 0, "lease": 30,
                   "start_interval": 0} | options
        return HostQueue(client, prefix, **options)

    yield make
    keys = list(client.scan_iter(match=prefix + ":*"))
    if keys:
        client.delete(*keys)


def _entries(grants):
    return [g.entry for g in grants]


def test_a_busy_host_queues_checks_and_each_free_slot_takes_the_next(queue_for):
    hq = queue_for(max_concurrent=2)
    granted = []
    for name in "abcde":
        timeouts, grants = hq.submit("Example.org", name)
        assert timeouts == 0
        granted += grants
    assert _entries(granted) == ["a", "b"], "two slots, the rest wait"
    assert hq.waiting("example.org") == ["c", "d", "e"]
    assert hq.pace("example.org")["leased"] == 2
    assert _entries(hq.submit("other.example", "x")[1]) == ["x"], "another host is free"
    nxt = hq.release("example.org", granted[0].token, answered=True, latency=0.01,
                     http_status=200)
    assert _entries(nxt) == ["c"] and nxt[0].token
    assert hq.waiting("example.org") == ["d", "e"]
    assert hq.pace("example.org")["leased"] == 2, "the slot went to c at once"


def test_priority_takes_the_next_free_slot_ahead_of_bulk(queue_for):
    hq = queue_for(max_concurrent=1)
    [first] = hq.submit("example.org", "bulk-1")[1]
    for k in range(2, 6):
        assert hq.submit("example.org", f"bulk-{k}")[1] == []
    assert hq.submit("example.org", "edit", priority=True)[1] == []
    [nxt] = hq.release("example.org", first.token)
    assert nxt.entry == "edit"
    assert hq.waiting("example.org") == [f"bulk-{k}" for k in range(2, 6)]


def test_the_waiting_mark_is_set_only_while_waiting(queue_for):
    hq = queue_for(max_concurrent=1)
    client = hq.client
    marks = [f"{hq.prefix}:pending:{k}" for k in range(3)]
    client.set(marks[2], "priority")
    hq.submit("example.org", "0", mark=(marks[0], "bulk"))
    hq.submit("example.org", "1", mark=(marks[1], "bulk"))
    hq.submit("example.org", "2", mark=(marks[2], "bulk"))
    assert client.get(marks[0]) is None, "granted at once: not waiting"
    assert client.get(marks[1]) == b"bulk"
    assert client.get(marks[2]) == b"priority", "never lowered"


def test_a_grant_drops_the_waiting_mark_and_says_what_it_was(queue_for):
    """The mark goes with the grant (no second round trip), and the grant
    says what it said then: an edit raised it to priority meanwhile."""
    hq = queue_for(max_concurrent=1)
    client = hq.client
    marks = [f"{hq.prefix}:pending:{k}" for k in range(3)]
    [first] = hq.submit("example.org", "0", mark=(marks[0], "bulk"))[1]
    assert first.mark is None, "granted at once: it had no waiting mark"
    hq.submit("example.org", "1", mark=(marks[1], "bulk"))
    hq.submit("example.org", "2", mark=(marks[2], "bulk"))
    client.set(marks[2], "priority")  # an edit raised it while it waited
    [nxt] = hq.release("example.org", first.token)
    assert (nxt.entry, nxt.mark) == ("1", "bulk")
    assert client.get(marks[1]) is None
    [last] = hq.release("example.org", nxt.token)
    assert (last.entry, last.mark) == ("2", "priority")
    assert client.get(marks[2]) is None
    assert client.hlen(hq._keys("example.org")[7]) == 0


def test_a_forced_checks_mark_is_never_lowered_and_raises_priority(queue_for):
    """A forced check waiting for its host keeps ``priority:force`` (so a
    second "Check link now" is not queued twice), and a routine check never
    takes a forced one's mark (issue 13's pending marks)."""
    hq = queue_for(max_concurrent=1)
    client = hq.client
    marks = [f"{hq.prefix}:pending:{k}" for k in range(3)]
    hq.submit("example.org", "busy")  # takes the only slot
    client.set(marks[0], "priority:force")
    client.set(marks[1], "priority")
    hq.submit("example.org", "0", mark=(marks[0], "bulk"))
    hq.submit("example.org", "1", mark=(marks[1], "priority:force"))
    hq.submit("example.org", "2", mark=(marks[2], "bulk:force"))
    assert client.get(marks[0]) == b"priority:force", "never lowered"
    assert client.get(marks[1]) == b"priority:force", "a forced check raises it"
    assert client.get(marks[2]) == b"bulk:force"


def test_grants_are_spaced_by_the_pace(queue_for):
    hq = queue_for(max_concurrent=3, start_interval=0.2)
    waits = [hq.submit("example.org", name)[1][0].wait for name in "abc"]
    assert waits[0] == 0
    assert waits[1] == pytest.approx(0.2, abs=0.02)
    assert waits[2] == pytest.approx(0.4, abs=0.02)


def test_the_pace_follows_latency(queue_for):
    hq = queue_for(max_concurrent=2, min_interval=0.01, start_interval=0.5,
                   max_interval=10)
    for _ in range(8):
        [grant] = hq.submit("fast.example", "x")[1]
        hq.release("fast.example", grant.token, answered=True, latency=0.1, http_status=200)
    gap = hq.pace("fast.example")["gap"]
    assert 0.05 <= gap < 0.06, "latency / concurrency, approached from the start gap"
    [grant] = hq.submit("fast.example", "x")[1]
    hq.release("fast.example", grant.token, answered=True, latency=4.0, http_status=200)
    assert hq.pace("fast.example")["gap"] == pytest.approx(2.0), "slower at once"
    # errors never speed it up
    [grant] = hq.submit("fast.example", "x")[1]
    hq.release("fast.example", grant.token, answered=True, latency=0.001, http_status=404)
    assert hq.pace("fast.example")["gap"] == pytest.approx(2.0)


def test_configured_values_are_the_ceilings(queue_for):
    hq = queue_for(max_concurrent=2, min_interval=0.2, start_interval=0.2)
    for _ in range(5):
        [grant] = hq.submit("fast.example", "x")[1]
        hq.release("fast.example", grant.token, answered=True, latency=0.001, http_status=200)
    assert hq.pace("fast.example")["gap"] == pytest.approx(0.2)


def test_429_with_retry_after_backs_off(queue_for):
    hq = queue_for(max_concurrent=2, start_interval=0.1, max_interval=30)
    [grant] = hq.submit("busy.example", "a")[1]
    hq.release("busy.example", grant.token, answered=True, latency=0.01, http_status=429,
               retry_after=2)
    pace = hq.pace("busy.example")
    assert pace["gap"] == pytest.approx(1.0), "doubled, at least 1 s"
    assert pace["not_before"] - time.time() == pytest.approx(2, abs=0.3)
    [grant] = hq.submit("busy.example", "b")[1]
    assert grant.wait == pytest.approx(2, abs=0.3), "nothing before Retry-After"


def test_timeouts_back_off_then_the_host_is_not_tried(queue_for):
    hq = queue_for(max_concurrent=5, down_after=2, max_interval=4)
    for name in "ab":
        [grant] = hq.submit("dead.example", name)[1]
        hq.release("dead.example", grant.token, answered=False)
        hq.client.delete(hq._keys("dead.example")[1])  # forget the last start
    assert hq.pace("dead.example")["gap"] == 2.0
    [probe] = hq.submit("dead.example", "probe")[1]
    assert probe.token, "one probe request goes through"
    assert hq.submit("dead.example", "c") == (2, []), "not tried, not queued"


def test_checks_waiting_when_the_host_stops_answering_come_back_not_tried(queue_for):
    hq = queue_for(max_concurrent=1, down_after=1, max_interval=0.01)
    [first] = hq.submit("dead.example", "a")[1]
    hq.submit("dead.example", "b")
    hq.submit("dead.example", "c")
    probe, c = hq.release("dead.example", first.token, answered=False)
    assert probe.entry == "b" and probe.token, "the probe"
    assert (c.entry, c.token, c.timeouts) == ("c", "", 1), "the others: not tried"
    assert hq.waiting("dead.example") == []


def test_pump_gives_out_the_slot_of_a_dead_worker(queue_for, monkeypatch):
    hq = queue_for(max_concurrent=1, lease=0.3)
    assert hq.submit("example.org", "held")[1], "a worker takes it, then dies"
    assert hq.submit("example.org", "next")[1] == []
    assert hq.pump() == []
    time.sleep(0.35)
    [grant] = hq.pump()
    assert grant.entry == "next"
    assert hq.pump() == [] and hq.client.smembers(hq.hosts_key) == set()


def test_a_start_beyond_the_horizon_waits_for_the_pump(queue_for, monkeypatch):
    monkeypatch.setattr(hostqueue, "HORIZON", 0.2)
    hq = queue_for(max_concurrent=2, start_interval=0.5)
    assert hq.submit("slow.example", "a")[1][0].wait == 0
    assert hq.submit("slow.example", "b")[1] == [], "0.5 s away: not granted yet"
    time.sleep(0.35)
    [grant] = hq.pump()
    assert grant.entry == "b" and 0.1 <= grant.wait <= 0.2


def test_purge_forgets_every_waiting_list(queue_for):
    hq = queue_for(max_concurrent=1)
    for name in "abc":
        hq.submit("one.example", name)
        hq.submit("two.example", name)
    assert hq.purge() == 4
    assert hq.waiting("one.example") == [] and hq.pump() == []


def test_not_answering_once_the_probe_is_out(queue_for):
    hq = queue_for(max_concurrent=4, down_after=2)
    assert hq.not_answering("dead.example") == 0
    for name in "ab":
        [grant] = hq.submit("dead.example", name)[1]
        hq.release("dead.example", grant.token, answered=False)
    assert hq.not_answering("dead.example") == 0, "down, but its probe not out yet"
    assert hq.submit("dead.example", "probe")[1][0].wait == 0, "the probe, not paced"
    assert hq.not_answering("dead.example") == 2


def test_a_late_start_is_moved_after_the_starts_reserved_since(queue_for):
    hq = queue_for(max_concurrent=3, min_interval=0.2, start_interval=0.2, max_interval=1)
    [a] = hq.submit("late.example", "a")[1]
    assert hq.on_time(a, slack=0.05) is a, "on time: no new start"
    [b] = hq.submit("late.example", "b")[1]
    assert b.wait == pytest.approx(0.2, abs=0.02)
    time.sleep(0.1)  # a is 0.1 s late: b would reach the host 0.1 s after it
    moved = hq.on_time(a, slack=0.05)
    assert moved.token == a.token and moved.entry == "a"
    # b starts 0.2 s after a's reserved start, a now 0.2 s after b: 0.3 s from now
    assert moved.wait == pytest.approx(0.3, abs=0.03), "after b's start, by the gap"
    [c] = hq.submit("late.example", "c")[1]
    assert c.wait == pytest.approx(moved.wait + 0.2, abs=0.03), "reserved after a's new start"


def test_a_late_start_with_none_reserved_since_goes_now(queue_for):
    hq = queue_for(max_concurrent=2, min_interval=0.2, start_interval=0.2, max_interval=1)
    [a] = hq.submit("alone.example", "a")[1]
    time.sleep(0.1)
    moved = hq.on_time(a, slack=0.05)
    assert moved.wait == 0
    [b] = hq.submit("alone.example", "b")[1]
    assert b.wait == pytest.approx(0.2, abs=0.03), "the gap counts from a's real start"
