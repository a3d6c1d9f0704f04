"""Checks lost with a worker that died are queued again by the live
workers' sweep (``worker.lost``); a check granted its host's slot looks
started from then on and keeps its claim until its row is committed.
Real PostgreSQL, Redis and HTTP server on 127.0.0.1."""

import dataclasses
import datetime
import time

import pytest
from ckan import model
from ckan.tests import factories

from ckanext.archiver import config, keys
from ckanext.archiver.engine.hostqueue import Grant
from ckanext.archiver.model import Archival, rows, utcnow
from ckanext.archiver.model.checks import Job
from ckanext.archiver.tests.helpers import wait_for
from ckanext.archiver.tests.http_fixtures import KEEP_ALIVE, respond
from ckanext.archiver.worker import batch, dispatch, hosts, inflight, lost, tasks
from ckanext.archiver.worker.recorder import Recorder

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db", "archiver_env")


def _row(resource_id):
    model.Session.expire_all()
    return Archival.get_for_resource(resource_id)


def test_age_and_interval_follow_the_total_timeout():
    options = config.current()
    assert lost.age(options) == options.total_timeout + inflight.TTL
    assert lost.INTERVAL_MIN <= lost.interval(options) <= lost.INTERVAL_MAX
    assert lost.interval(dataclasses.replace(options, total_timeout=300)) == 60  # the default
    assert lost.interval(dataclasses.replace(options, total_timeout=5)) == 10


def test_the_sweep_queues_again_only_what_is_lost():
    options = config.current()
    dataset = factories.Dataset()
    names = ["lost", "started recently", "queued recently", "claimed", "pending", "recorded"]
    ids = {name: factories.Resource(package_id=dataset["id"], url=f"http://a.example/{n}.csv")
           ["id"] for n, name in enumerate(names)}
    dispatch.purge()  # the hook's checks: their marks go, their rows still say queued
    now = utcnow()
    old = now - datetime.timedelta(seconds=lost.age(options) + 5)
    recent = now - datetime.timedelta(seconds=5)
    values = {"lost": (old, old, None), "started recently": (old, recent, None),
              "queued recently": (recent, old, None), "claimed": (old, old, None),
              "pending": (old, old, None), "recorded": (old, old, now)}
    for name, (queued, started, updated) in values.items():
        model.Session.query(Archival).filter_by(resource_id=ids[name]).update(
            {"queued_at": queued, "started_at": started, "updated": updated})
    model.Session.commit()
    holder = inflight.Claims(options, ttl=10)  # a live worker on it
    holder.claim([ids["claimed"]])
    r = keys.client(options)
    r.set(keys.pending(options, ids["pending"]), "bulk")  # waiting in a queue
    r.delete(keys.lost_sweep(options))
    try:
        assert lost.sweep() == 1
        assert r.get(keys.pending(options, ids["lost"])) == b"bulk"  # queued again
        assert dispatch.lengths()["bulk"] == 1
        assert _row(ids["lost"]).queued_at > now
        assert lost.sweep() is None  # another sweep within the interval: not now
        assert 0 < r.ttl(keys.lost_sweep(options)) <= lost.interval(options)
    finally:
        holder.release([ids["claimed"]])
        r.delete(keys.lost_sweep(options))


@pytest.fixture
def one_at_a_time(ckan_config, monkeypatch):
    for key, value in {"per_host_concurrency": 1, "per_host_min_interval": 0.0,
                       "per_host_start_interval": 0.0}.items():
        monkeypatch.setitem(ckan_config, "ckanext.archiver." + key, value)
    monkeypatch.setattr(Recorder, "WAIT", 1.0)  # the granted check's row comes 1 s late


def test_a_granted_check_looks_started_and_keeps_its_claim_until_recorded(raw_server,
                                                                         one_at_a_time,
                                                                         monkeypatch):
    # the granted check's row comes 2 s after its download
    monkeypatch.setattr(batch._recorder(), "LINGER", 2.0)
    seen = []

    def origin(request, conn):
        seen.append(request.path)
        time.sleep(0.3)
        respond(conn, 200, b"a,b\n1,2\n", {"Content-Type": "text/csv"}, keep_alive=True)
        return KEEP_ALIVE

    dataset = factories.Dataset()
    first, second = (factories.Resource(package_id=dataset["id"],
                                        url=raw_server.route(f"/g{k}.csv", origin))["id"]
                     for k in range(2))
    dispatch.enqueue([(first, dataset["id"]), (second, dataset["id"])], "bulk")
    counts = tasks.archive_resources.apply(
        args=[[first, second]], kwargs={"queue": "bulk", "queued_at": utcnow().isoformat()}
    ).get()
    assert counts["waiting for their host"] == 1, counts
    batch_started = _row(first).started_at
    options = config.current()
    claim = keys.running(options, second)
    r = keys.client(options)
    wait_for(lambda: len(seen) == 2, timeout=10, interval=0.02)  # granted, downloading
    # granted: it says it started then (within STARTED_LAG, not when the
    # batch did), with no pending mark any more; it holds its claim until
    # its row is committed
    wait_for(lambda: _row(second).started_at > batch_started,
             timeout=dispatch.STARTED_LAG + 0.5, interval=0.02)
    assert r.exists(keys.pending(options, second)) == 0
    time.sleep(0.5)  # downloaded; its row waits for the recorder
    assert _row(second).status_id is None
    assert r.exists(claim) == 1
    wait_for(lambda: _row(second).status_id == 0, timeout=10, interval=0.05)
    wait_for(lambda: not r.exists(claim), timeout=2, interval=0.02)
    assert sorted(seen) == ["/g0.csv", "/g1.csv"]
    assert dispatch.requeue_lost(datetime.timedelta(0), queued_too=True) == 0


@pytest.mark.parametrize("meanwhile", ["recorded", "granted"])
def test_a_check_that_moves_on_between_the_query_and_the_look_in_redis_is_not_lost(
        meanwhile, monkeypatch):
    """The sweep's query is older than its look in Redis: a check recorded
    in between (its claim released after its commit), or granted its
    host's slot in between (its pending mark gone with the grant, its
    claim not taken yet), must not be queued again: it would be checked
    twice (the 10,000-links bench saw 4 such)."""
    options = config.current()
    dataset = factories.Dataset()
    rid = factories.Resource(package_id=dataset["id"], url="http://a.example/x.csv")["id"]
    dispatch.purge()  # no pending mark, no claim: between two states
    old = utcnow() - datetime.timedelta(seconds=lost.age(options) + 5)
    model.Session.query(Archival).filter_by(resource_id=rid).update(
        {"queued_at": old, "started_at": old, "updated": None})
    model.Session.commit()
    real = rows.lost
    calls = []

    def then_it_moves_on(*args, **kwargs):
        found = real(*args, **kwargs)
        if not calls:  # the sweep's query has been made; now the check moves on
            if meanwhile == "recorded":
                model.Session.query(Archival).filter_by(resource_id=rid).update(
                    {"updated": utcnow(), "status_id": 0})
                model.Session.commit()
            else:
                rows.mark_started([rid])
        calls.append(found)
        return found

    monkeypatch.setattr(rows, "lost", then_it_moves_on)
    assert dispatch.requeue_lost(datetime.timedelta(seconds=lost.age(options)),
                                 queued_too=True) == 0
    assert calls[0] == [(rid, dataset["id"])]  # it looked lost to the query
    assert dispatch.lengths()["bulk"] == 0
    assert not keys.client(options).exists(keys.pending(options, rid))


def test_a_check_granted_just_before_the_sweep_is_not_lost(monkeypatch):
    """A granted check's row says it started a moment later (written a few
    at a time, ``worker.hosts``): the sweep asks the rows again only once
    that moment has passed, so a check granted between its query and its
    look in Redis (no pending mark, no claim yet) is not queued twice."""
    options = config.current()
    dataset = factories.Dataset()
    rid = factories.Resource(package_id=dataset["id"], url="http://a.example/x.csv")["id"]
    dispatch.purge()
    old = utcnow() - datetime.timedelta(seconds=lost.age(options) + 5)
    model.Session.query(Archival).filter_by(resource_id=rid).update(
        {"queued_at": old, "started_at": old, "updated": None})
    model.Session.commit()
    ran = []
    monkeypatch.setattr(hosts, "_runner", [ran.append])
    real = rows.lost
    calls = []

    def granted_meanwhile(*args, **kwargs):
        found = real(*args, **kwargs)
        if not calls:  # after the query, before the look in Redis: granted
            entry = hosts.Deferral(hosts.hostqueue(options), "bulk", None, False, 0).entry(
                Job(resource_id=rid))
            hosts.start([Grant("a.example", entry, "token", 0.0)])
        calls.append(found)
        return found

    monkeypatch.setattr(rows, "lost", granted_meanwhile)
    assert dispatch.requeue_lost(datetime.timedelta(seconds=lost.age(options)),
                                 queued_too=True) == 0
    assert calls[0] == [(rid, dataset["id"])], "it looked lost to the query"
    assert calls[1] == [], "asked again once its start was written"
    assert dispatch.lengths()["bulk"] == 0
    wait_for(lambda: len(ran) == 1, timeout=2)
