"""pool.run_batch: waiting for a batch, handing off its stragglers, and
back-pressure (plain threads and events: nothing of CKAN)."""

import threading
import time

import pytest

from ckanext.archiver.engine import pool


def _work(gates):
    """Work that ends when its item's gate opens (items without one end at
    once); records the thread it ran on."""
    threads = {}

    def work(item):
        threads[item] = threading.current_thread().name
        gate = gates.get(item)
        if gate is not None:
            assert gate.wait(10)
    return work, threads


def test_without_wait_max_waits_for_every_item():
    gate = threading.Event()
    work, _ = _work({3: gate})
    started = time.monotonic()  # before the timer starts: it opens the gate 0.3 s later
    threading.Timer(0.3, gate.set).start()
    done, late = pool.run_batch(list(range(10)), work)
    assert time.monotonic() - started >= 0.3
    assert sorted(done) == list(range(10)) and late == []


def test_stragglers_handed_off_once_the_batch_is_mostly_done():
    gate = threading.Event()
    work, threads = _work({7: gate})
    recorded = []
    on_late_thread = []

    def on_late(item):
        on_late_thread.append(threading.current_thread().name)
        recorded.append(item)

    started = time.monotonic()
    done, late = pool.run_batch(list(range(20)), work, on_late, wait_max=30)
    took = time.monotonic() - started
    assert late == [7] and sorted(done) == [i for i in range(20) if i != 7]
    assert took < 5, "19 of 20 done at once: handed off, not waited for"
    assert pool.late_count() == 1
    assert recorded == []
    gate.set()
    assert pool.drain(5) == 0
    assert recorded == [7]
    assert on_late_thread == [threads[7]], "on_late runs on the straggler's own thread"


def test_wait_max_hands_off_a_batch_that_is_not_mostly_done():
    gates = {i: threading.Event() for i in range(5)}
    work, _ = _work(gates)
    recorded = []
    started = time.monotonic()
    done, late = pool.run_batch(list(range(10)), work, recorded.append, wait_max=0.3)
    took = time.monotonic() - started
    assert 0.3 <= took < 3
    assert sorted(late) == [0, 1, 2, 3, 4] and sorted(done) == [5, 6, 7, 8, 9]
    for gate in gates.values():
        gate.set()
    assert pool.drain(5) == 0
    assert sorted(recorded) == [0, 1, 2, 3, 4]


def test_mostly_done_batch_waits_half_as_long_again_for_its_tail():
    """90% done after about 0.4 s: the tail gets about 0.2 s more, and an
    item that ends within it is not handed off."""
    slow = threading.Event()
    tail = threading.Event()
    late_gate = threading.Event()
    work, _ = _work({i: slow for i in range(18)} | {18: tail, 19: late_gate})
    threading.Timer(0.4, slow.set).start()
    threading.Timer(0.5, tail.set).start()
    done, late = pool.run_batch(list(range(20)), work, lambda item: None, wait_max=30)
    assert late == [19] and 18 in done
    late_gate.set()
    assert pool.drain(5) == 0


def test_back_pressure_when_too_many_are_late(monkeypatch):
    monkeypatch.setattr(pool, "LATE_MAX", 2)
    gates = {i: threading.Event() for i in range(3)}
    work, _ = _work(gates)
    returned = threading.Event()
    result = {}

    def batch():
        result["value"] = pool.run_batch(list(range(30)), work, lambda item: None,
                                         wait_max=0.2)
        returned.set()

    threading.Thread(target=batch).start()
    assert not returned.wait(1), "3 late > LATE_MAX 2: the batch waits"
    assert pool.late_count() == 3
    gates[0].set()
    assert returned.wait(5), "back to LATE_MAX: the batch returns"
    assert sorted(result["value"][1]) == [0, 1, 2]
    gates[1].set()
    gates[2].set()
    assert pool.drain(5) == 0


def test_failing_work_and_on_late_are_logged_not_lost(caplog):
    gate = threading.Event()

    def work(item):
        if item == 0:
            raise RuntimeError("boom")
        if item == 9:
            gate.wait(10)
            raise RuntimeError("late boom")

    def on_late(item):
        raise RuntimeError("cannot record")

    done, late = pool.run_batch(list(range(10)), work, on_late, wait_max=0.2)
    assert 0 in done and late == [9]
    gate.set()
    assert pool.drain(5) == 0, "the late count goes down even when on_late fails"
    messages = [r.getMessage() for r in caplog.records]
    assert "A download thread failed" in messages
    assert "Recording a late download failed" in messages


def test_drain_gives_up_after_its_timeout():
    gate = threading.Event()
    work, _ = _work({1: gate})
    pool.run_batch([0, 1], work, lambda item: None, wait_max=0.1)
    started = time.monotonic()
    assert pool.drain(0.2) == 1
    assert time.monotonic() - started == pytest.approx(0.2, abs=0.15)
    gate.set()
    assert pool.drain(5) == 0
