"""Every `ckan archiver` command through CKAN's cli fixture."""


import pytest
from ckan import model
from ckan.cli.cli import ckan
from ckan.tests import factories
from ckan.tests.helpers import call_action

from ckanext.archiver.model import Archival, ArchivalHistory, utcnow
from ckanext.archiver.tests.factories import make_archival
from ckanext.archiver.tests.helpers import json_output
from ckanext.archiver.worker import batch, dispatch

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db", "archiver_env")


@pytest.fixture
def run(cli, make_ini):
    """Run `ckan -c <ini> archiver ARGS` (options: keyword arguments)."""
    def invoke(*args, **options):
        return cli.invoke(ckan, ["-c", make_ini(**options), "archiver", *args])
    return invoke


@pytest.fixture
def two_datasets(httpserver):
    httpserver.expect_request("/a.csv").respond_with_data("a,b\n", content_type="text/csv")
    httpserver.expect_request("/gone").respond_with_data("", status=410)
    org = factories.Organization()
    public = factories.Dataset(owner_org=org["id"], resources=[
        {"url": httpserver.url_for("/a.csv")}, {"url": httpserver.url_for("/gone")}])
    private = factories.Dataset(owner_org=org["id"], private=True, resources=[
        {"url": httpserver.url_for("/a.csv")}])
    dispatch.purge()
    return org, public, private


def test_update_now_all_with_summary(run, two_datasets):
    result = run("update", "--now")
    assert result.exit_code == 0, result.output
    assert "Done: 2 archived, 0 unchanged, 1 broken, 0 not sure" in result.output
    assert model.Session.query(Archival).filter(Archival.status_id.isnot(None)).count() == 3
    again = run("update", "--now")
    assert "Done: 0 archived, 2 unchanged, 1 broken" in again.output


def test_update_queues_by_org_dataset_resource(run, two_datasets):
    org, public, private = two_datasets
    assert "Queued 3 resources on bulk" in run("update", org["name"]).output
    dispatch.purge()
    assert "Queued 2 resources on priority" in run(
        "update", public["name"], "--queue", "priority").output
    dispatch.purge()
    assert "Queued 1 resources" in run("update", private["resources"][0]["id"]).output
    assert dispatch.lengths() == {"priority": 0, "bulk": 1}


def test_update_group(run, two_datasets):
    org, public, private = two_datasets
    group = factories.Group()
    call_action("member_create", id=group["id"], object=public["id"], object_type="package",
                capacity="public")
    dispatch.purge()
    assert "Queued 2 resources" in run("update", group["name"]).output


def test_update_stale_and_broken(run, two_datasets):
    org, public, private = two_datasets
    run("update", "--now")
    dispatch.purge()
    assert "Queued 0 resources" in run("update", "--stale", "1").output
    model.Session.query(Archival).filter(
        Archival.resource_id == private["resources"][0]["id"]).update(
        {"updated": utcnow().replace(year=2020)})
    model.Session.commit()
    assert "Queued 1 resources" in run("update", "--stale", "1").output
    dispatch.purge()
    assert "Queued 1 resources" in run("update", "--broken").output


def test_unknown_id_one_clear_line(run, two_datasets):
    result = run("update", "no-such-thing")
    assert result.exit_code == 1
    assert "Not a dataset, resource, organization or group: no-such-thing" in result.output
    assert "Traceback" not in result.output


def test_unreachable_broker(run, two_datasets):
    down = {"broker_url": "redis://127.0.0.1:1/0"}
    for args in (["update"], ["purge-queues"], ["worker", "bulk"]):
        result = run(*args, **down)
        assert result.exit_code == 1, args
        assert "Cannot reach the broker at redis://127.0.0.1:1/0" in result.output
        assert "Traceback" not in result.output
    status = run("status", "--no-workers", **down)
    assert status.exit_code == 0 and "broker unreachable" in status.output


def test_unwritable_archive_dir(run, two_datasets, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    result = run("update", "--now", archive_dir=blocked / "sub")
    assert result.exit_code == 1 and "cannot be created" in result.output
    assert "Traceback" not in result.output


def test_status_json_and_text(run, two_datasets):
    run("update", "--now")
    data = json_output(run("status", "--json", "--no-workers").output)
    assert {r["status"]: r["count"] for r in data["status_counts"]} == {
        "Archived successfully": 2, "Download error": 1}
    assert set(data["queues"]) == {"priority", "bulk"}
    assert data["last_hour"]["done"] == 3
    text = run("status", "--no-workers").output
    assert "Queues: priority " in text and "Download error" in text


def test_view(run, two_datasets):
    org, public, private = two_datasets
    run("update", "--now")
    out = run("view", public["name"]).output
    assert "Archived successfully (Downloaded OK)" in out
    assert "Download error (Broken)" in out and "410" in out
    assert "3 resources have archival rows, 1 broken links" in run("view").output
    assert run("view", "nope").exit_code == 1


def test_clean_status_and_cached(run, two_datasets, archive_dir):
    org, public, private = two_datasets
    run("update", "--now")
    gone = public["resources"][0]
    # a deleted resource whose hook did not run (e.g. deleted by SQL)
    model.Session.query(model.Resource).filter(model.Resource.id == gone["id"]).update(
        {"state": "deleted"})
    model.Session.commit()
    dry = run("clean-cached", "--dry-run")
    assert "Would remove 1 files, 4 bytes" in dry.output
    assert len([p for p in archive_dir.rglob("*") if p.is_file()]) == 2
    assert "Removed 1 files, 4 bytes" in run("clean-cached").output
    assert len([p for p in archive_dir.rglob("*") if p.is_file()]) == 1
    make_archival({"id": "orphan", "package_id": public["id"]})
    assert "Deleted 2 archival rows" in run("clean-status").output
    assert model.Session.query(ArchivalHistory).count() == 3


def test_purge_queues_and_init(run, two_datasets):
    org, public, private = two_datasets
    dispatch.purge()
    run("update")
    assert ", 1 from bulk" in run("purge-queues").output
    assert dispatch.lengths() == {"priority": 0, "bulk": 0}
    # for good: a worker's start does not queue it all again
    assert dispatch.requeue_lost() == 0
    assert dispatch.lengths() == {"priority": 0, "bulk": 0}
    assert run("init").exit_code == 0


def test_update_now_runs_without_celery(run, two_datasets):
    # archive_batch is what --now runs; it needs no worker
    org, public, private = two_datasets
    result = batch.archive_batch([r["id"] for r in public["resources"]])
    assert len(result.recorded) == 2
