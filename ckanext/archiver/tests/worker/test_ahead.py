"""worker.ahead: the checks next on a busy host's list are loaded together
(a few queries for the whole backlog, not two per check), and what was
loaded ahead is not used once the check's mark changed (an edit). Real
HTTP server on 127.0.0.1, PostgreSQL, Redis."""

import json

import pytest

from ckanext.archiver.model import checks
from ckanext.archiver.tests.helpers import wait_for
from ckanext.archiver.tests.worker.test_scheduling import Origin, _checked, _dataset, polite  # noqa: F401
from ckanext.archiver.worker import ahead, tasks

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db", "archiver_env")


def test_a_hosts_backlog_is_loaded_a_few_checks_at_a_time(raw_server, polite, monkeypatch):  # noqa: F811
    polite(1, min_interval=0.0, start=0.0)
    loads = []
    real = checks.load_jobs

    def counting(ids):
        loads.append(list(ids))
        return real(ids)

    monkeypatch.setattr(checks, "load_jobs", counting)
    origin = Origin(0.02)
    _pkg, ids = _dataset(raw_server, origin, 24)
    counts = tasks.archive_resources.apply(args=[ids], kwargs={"queue": "bulk"}).get()
    waited = counts["waiting for their host"]
    assert waited >= 20, counts
    wait_for(lambda: _checked(ids) == len(ids), timeout=20)
    granted_loads = loads[1:]  # the first: the task's batch
    assert len(granted_loads) <= waited // 4, granted_loads
    assert len(origin.seen) == len(ids), "one attempt per resource"


def test_what_was_loaded_ahead_goes_when_forgotten(raw_server, polite):  # noqa: F811
    _pkg, ids = _dataset(raw_server, Origin(0), 2)
    job = checks.load_jobs([ids[0]])[0]
    entry = json.dumps({"a": 0, "f": False, "q": "bulk", "r": ids[0], "t": None})
    with ahead._lock:
        ahead._loaded[ids[0]] = (ahead.time.monotonic(), entry, job, "h")
    assert ahead._take(ids[0], entry) is job
    assert ahead._take(ids[0], entry) is None, "used once"
    with ahead._lock:
        ahead._loaded[ids[0]] = (ahead.time.monotonic(), entry, job, "h")
    ahead.forget(ids[0])
    assert ahead._take(ids[0], entry) is None
    with ahead._lock:
        ahead._loaded[ids[0]] = (ahead.time.monotonic() - ahead.MAX_AGE - 1, entry, job, "h")
    assert ahead._take(ids[0], entry) is None, "too old"


def _entry(rid):
    return json.dumps({"a": 0, "f": False, "q": "bulk", "r": rid, "t": None}, sort_keys=True)


def test_a_refill_loads_what_is_next_and_drops_what_left_the_list(raw_server, polite):  # noqa: F811
    """Loaded meanwhile on a download thread (``refill``): the checks next
    on the host's list that are not loaded yet; what was loaded for checks
    no longer on it (granted elsewhere) goes; a check forgotten while the
    load ran (an edit) is not kept."""
    from ckanext.archiver.worker import hosts

    _pkg, ids = _dataset(raw_server, Origin(0), 4)
    hq = hosts.hostqueue()
    host = "refill.example"
    waiting = hq._keys(host)[5]  # on the host's list (as submit puts them), not granted
    hq.client.zadd(waiting, {_entry(rid): 1e15 + k for k, rid in enumerate(ids[1:])})
    stale = checks.load_jobs([ids[0]])[0]
    with ahead._lock:
        ahead._loaded[ids[0]] = (ahead.time.monotonic(), _entry(ids[0]), stale, host)
    real = checks.load_jobs

    def edited_meanwhile(rids):
        ahead.forget(ids[3])  # its mark changed while the rows were read
        return real(rids)

    checks.load_jobs = edited_meanwhile
    try:
        ahead.refill(host, hq)
    finally:
        checks.load_jobs = real
    with ahead._lock:
        loaded = {rid: got[1] for rid, got in ahead._loaded.items() if got[3] == host}
    assert ids[0] not in loaded, "not on the list any more"
    assert ids[3] not in loaded, "forgotten while loading"
    assert loaded == {ids[1]: _entry(ids[1]), ids[2]: _entry(ids[2])}
    assert ahead._take(ids[1], _entry(ids[1])).url.endswith("/r1.csv")
    hq.client.delete(waiting)
