"""A resource found claimed by another worker is sent again a moment later
(``worker.tasks._send_busy``); the claim goes as soon as the other worker's
row is committed, and the re-sent check is skipped if that row was written
since it was found busy: two overlapping requests make one check."""

import threading
import time

import pytest
from celery import signals
from ckan import model
from ckan.tests import factories

from ckanext.archiver import config, interfaces, keys
from ckanext.archiver.model import Archival, ArchivalHistory
from ckanext.archiver.tests.helpers import wait_for
from ckanext.archiver.tests.http_fixtures import serve_bytes
from ckanext.archiver.worker import app as worker_app
from ckanext.archiver.worker import batch as worker_batch
from ckanext.archiver.worker import dispatch, tasks

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db", "archiver_env")


@pytest.fixture
def slow(raw_server):
    """A resource whose server takes 1.2 s to answer, and the requests it got."""
    hits = []
    plain = serve_bytes(b"a,b\n1,2\n", "text/csv")

    def handler(request, conn):
        hits.append(time.monotonic())
        time.sleep(1.2)
        plain(request, conn)

    resource = factories.Resource(url=raw_server.route("/slow.csv", handler))
    dispatch.purge(for_good=True)  # the hook's check: not ours
    return resource["id"], hits


def _history(rid):
    model.Session.remove()
    return model.Session.query(ArchivalHistory).filter_by(resource_id=rid).count()


@pytest.mark.parametrize("force", [True, False])
def test_two_overlapping_tasks_make_one_check(slow, celery_worker, force):
    """The second task finds the resource claimed and sends it again 1 s
    later; by then the first has written its row: the re-sent one skips
    it (forced, and without queued_at, like a retry: ``already_done`` of
    its own request time could not tell)."""
    rid, hits = slow
    finished = []

    def count(sender=None, **_kwargs):
        if sender is not None and sender.name == worker_app.ARCHIVE_TASK:
            finished.append(_kwargs.get("retval"))

    signals.task_postrun.connect(count, weak=False)
    try:
        bulk = config.current().queue_name("bulk")
        tasks.archive_resources.apply_async(args=[[rid]], kwargs={"force": force}, queue=bulk)
        wait_for(lambda: hits, timeout=10, interval=0.02)  # the first is downloading
        tasks.archive_resources.apply_async(args=[[rid]], kwargs={"force": force}, queue=bulk)
        # the first, the second (busy, sent again, busy again while the
        # first lasts) and the last one sent again (not busy any more)
        wait_for(lambda: [r["busy elsewhere"] for r in finished].count(0) >= 2,
                 timeout=30, interval=0.05)
        time.sleep(0.3)
    finally:
        signals.task_postrun.disconnect(count)
    assert 1 in [r["busy elsewhere"] for r in finished], finished
    assert sum(r["archived"] for r in finished) == 1, finished
    assert len(hits) == 1
    assert _history(rid) == 1
    assert Archival.get_for_resource(rid).status_id == 0


def test_the_claim_goes_before_the_check_is_announced(slow):
    """A check whose row is committed is over: its claim is released before
    downstream plugins hear of it (they may queue the resource again)."""
    rid, _hits = slow
    options = config.current()
    claim = keys.running(options, rid)
    seen = []

    def listener(_sender, **params):
        seen.append((params["resource_id"], keys.client(options).exists(claim)))

    interfaces.signal("archived").connect(listener)
    try:
        worker_batch.archive_batch([rid], force=True)
    finally:
        interfaces.signal("archived").disconnect(listener)
    assert seen == [(rid, 0)]


def test_a_busy_resource_sent_again_is_skipped_once_recorded(slow):
    """What the re-sent task gets (``handed_off_at`` = ``busy_since``):
    skipped as checked since, even forced; not skipped when nothing was
    recorded since (the other worker died before its row)."""
    rid, hits = slow
    first = threading.Thread(target=worker_batch.archive_batch, args=([rid],),
                             kwargs={"force": True})
    first.start()
    try:
        wait_for(lambda: hits, timeout=10, interval=0.02)
        busy = worker_batch.archive_batch([rid], force=True)
        assert [j.resource_id for j in busy.busy] == [rid]
        assert busy.busy_since is not None
        model.Session.remove()
    finally:
        first.join()
    since = busy.busy_since.isoformat()
    again = worker_batch.archive_batch([rid], force=True, handed_off_at=since)
    assert [(j.resource_id, j.skip_reason) for j in again.skipped] == [
        (rid, "already checked since queued")]
    assert len(hits) == 1 and _history(rid) == 1
    # nothing recorded since then: checked
    model.Session.query(Archival).update({"updated": busy.busy_since.replace(year=2000)})
    model.Session.commit()
    again = worker_batch.archive_batch([rid], force=True, handed_off_at=since)
    assert [j.resource_id for j in again.recorded] == [rid]
    assert len(hits) == 2 and _history(rid) == 2
