"""A resource claimed by another worker is not archived at the same time."""

import pytest
from ckan import model
from ckan.tests import factories

from ckanext.archiver import config
from ckanext.archiver.model import Archival
from ckanext.archiver.worker import inflight
from ckanext.archiver.worker.batch import archive_batch

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db", "archiver_env")


def test_a_claimed_resource_is_left_to_its_worker(httpserver):
    httpserver.expect_request("/a.csv").respond_with_data("a\n")
    httpserver.expect_request("/b.csv").respond_with_data("b\n")
    a = factories.Resource(url=httpserver.url_for("/a.csv"))
    b = factories.Resource(url=httpserver.url_for("/b.csv"))
    other = inflight.Claims(config.current(), ttl=5)  # another worker, on another host
    assert other.claim([a["id"]]) == ([a["id"]], [])

    result = archive_batch([a["id"], b["id"]])

    assert [j.resource_id for j in result.busy] == [a["id"]]
    assert [j.resource_id for j in result.recorded] == [b["id"]]
    model.Session.expire_all()
    assert Archival.get_for_resource(a["id"]).status_id is None  # untouched
    # the batch released its own claims, not the other worker's
    probe = inflight.Claims(config.current())
    assert probe.claim([a["id"], b["id"]]) == ([b["id"]], [a["id"]])
    probe.release([b["id"]])

    other.release([a["id"]])
    result = archive_batch([a["id"]])
    assert [j.resource_id for j in result.recorded] == [a["id"]]


def test_claims_expire_without_heartbeat_and_live_with_it():
    import time

    alive, dead = inflight.Claims(config.current(), ttl=2), inflight.Claims(config.current(), ttl=2)
    alive.claim(["r-alive"])
    dead.claim(["r-dead"])
    dead._stop.set()  # its host died: no more heartbeats
    time.sleep(3.2)
    probe = inflight.Claims(config.current())
    assert probe.claim(["r-alive", "r-dead"]) == (["r-dead"], ["r-alive"])
    alive.release(["r-alive"])
    probe.release(["r-dead"])


def test_a_new_url_takes_the_claim_over_and_the_old_holder_keeps_its_hands_off():
    """An edit's check (the resource's new URL) is not held up by a worker
    still downloading the old URL; the same URL stays claimed once."""
    old, new = inflight.Claims(config.current(), ttl=5), inflight.Claims(config.current(), ttl=5)
    again = inflight.Claims(config.current(), ttl=5)
    assert old.claim(["r-edit"], ["http://a.example/old.csv"]) == (["r-edit"], [])
    assert again.claim(["r-edit"], ["http://a.example/old.csv"]) == ([], ["r-edit"])
    assert new.claim(["r-edit"], ["http://a.example/new.csv"]) == (["r-edit"], [])
    assert again.claim(["r-edit"], ["http://a.example/new.csv"]) == ([], ["r-edit"])
    old.release(["r-edit"])  # the old holder's release leaves the new claim alone
    assert again.claim(["r-edit"], ["http://a.example/new.csv"]) == ([], ["r-edit"])
    new.release(["r-edit"])
    assert again.claim(["r-edit"], ["http://a.example/new.csv"]) == (["r-edit"], [])
    again.release(["r-edit"])
