"""Every `ckan archiver` command through CKAN's cli fixture."""


import os
import re
import subprocess
import sys

import pytest
from ckan import model
from ckan.cli.cli import ckan
from ckan.tests import factories
from ckan.tests.helpers import call_action

from ckanext.archiver import queue, tasks
from ckanext.archiver import status as st
from ckanext.archiver.model import Archival, ArchivalHistory, utcnow
from ckanext.archiver.tests.conftest import json_output
from ckanext.archiver.tests.factories import make_archival

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
    queue.purge()
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
    queue.purge()
    assert "Queued 2 resources on priority" in run(
        "update", public["name"], "--queue", "priority").output
    queue.purge()
    assert "Queued 1 resource on bulk\n" in run("update", private["resources"][0]["id"]).output
    assert queue.lengths() == {"priority": 0, "bulk": 1}


def test_update_group(run, two_datasets):
    org, public, private = two_datasets
    group = factories.Group()
    call_action("member_create", id=group["id"], object=public["id"], object_type="package",
                capacity="public")
    queue.purge()
    assert "Queued 2 resources" in run("update", group["name"]).output


def test_update_stale_and_broken(run, two_datasets):
    org, public, private = two_datasets
    run("update", "--now")
    queue.purge()
    assert "Queued 0 resources" in run("update", "--stale", "1").output
    model.Session.query(Archival).filter(
        Archival.resource_id == private["resources"][0]["id"]).update(
        {"updated": utcnow().replace(year=2020)})
    model.Session.commit()
    assert "Queued 1 resource on" in run("update", "--stale", "1").output
    queue.purge()
    assert "Queued 1 resource on" in run("update", "--broken").output


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
    assert "Waiting: 0 resources on priority, 0 resources on bulk" in text
    assert "Download error" in text


def test_view(run, two_datasets):
    org, public, private = two_datasets
    run("update", "--now")
    out = run("view", public["name"]).output
    assert "Archived successfully (Downloaded OK)" in out
    assert "Download error (Broken)" in out and "410" in out
    assert "3 resources checked, 1 broken link\n" in run("view").output
    nope = run("view", "nope")
    assert nope.exit_code == 1
    assert "Not a dataset or resource: nope" in nope.output


def test_clean_status_and_cached(run, two_datasets, archive_dir):
    org, public, private = two_datasets
    run("update", "--now")
    gone = public["resources"][0]
    # a deleted resource whose hook did not run (e.g. deleted by SQL)
    model.Session.query(model.Resource).filter(model.Resource.id == gone["id"]).update(
        {"state": "deleted"})
    model.Session.commit()
    dry = run("clean-cached", "--dry-run")
    assert "Would remove 1 file, 4 bytes" in dry.output
    assert len([p for p in archive_dir.rglob("*") if p.is_file()]) == 2
    assert "Removed 1 file, 4 bytes" in run("clean-cached").output
    assert len([p for p in archive_dir.rglob("*") if p.is_file()]) == 1
    make_archival({"id": "orphan", "package_id": public["id"]})
    assert "Deleted 2 archival rows" in run("clean-status").output
    assert model.Session.query(ArchivalHistory).count() == 3


def test_purge_queues_and_init(run, two_datasets):
    org, public, private = two_datasets
    queue.purge()
    run("update")
    # resources, not Celery messages (the three travel in one batch)
    assert "Purged 0 resources from priority, 3 resources from bulk" in run(
        "purge-queues").output
    assert queue.lengths() == {"priority": 0, "bulk": 0}
    assert run("init").exit_code == 0


def test_update_now_runs_without_celery(run, two_datasets):
    # archive_batch is what --now runs; it needs no worker
    org, public, private = two_datasets
    result = tasks.archive_batch([r["id"] for r in public["resources"]])
    assert len(result.recorded) == 2


# -- failures: one clear line and a non-zero exit ---------------------------

def _no_traceback(result):
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_update_now_needs_no_broker(run, two_datasets):
    result = run("update", "--now", broker_url="redis://127.0.0.1:1/0")
    assert result.exit_code == 0, result.output
    assert "Done: 2 archived, 0 unchanged, 1 broken" in result.output
    _no_traceback(result)


def test_invalid_arguments_refused_by_click(run, two_datasets):
    for args in (["update", "--stale", "-1"], ["update", "--queue", "fast"],
                 ["clean-cached", "--larger-than", "0"], ["size-report", "--limit", "x"]):
        result = run(*args)
        assert result.exit_code == 2, args
        assert "Invalid value" in result.output, args
    assert queue.lengths() == {"priority": 0, "bulk": 0}  # --stale -1 queued nothing


def test_clean_cached_with_unusable_archive_dir(run, two_datasets, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    for args in (["clean-cached"], ["clean-cached", "--dry-run"], ["orphans"]):
        result = run(*args, archive_dir=blocked)
        assert result.exit_code == 1, (args, result.output)
        assert "is not usable" in result.output
        _no_traceback(result)


def _ini_with(path, **core):
    text = open(path).read().splitlines()
    text = [line for line in text if line.split("=")[0].strip() not in core]
    at = text.index("[app:main]") + 1
    text[at:at] = [f"{k} = {v}" for k, v in core.items()]
    with open(path, "w") as f:
        f.write("\n".join(text) + "\n")
    return path


def test_notify_without_mail_from_and_unknown_org(cli, make_ini, two_datasets):
    ini = _ini_with(make_ini(), **{"smtp.mail_from": ""})
    result = cli.invoke(ckan, ["-c", ini, "archiver", "notify"])
    assert result.exit_code == 1
    assert "smtp.mail_from is not set" in result.output
    _no_traceback(result)
    assert cli.invoke(ckan, ["-c", ini, "archiver", "notify", "--dry-run"]).exit_code == 0
    unknown = cli.invoke(ckan, ["-c", ini, "archiver", "notify", "no-such-org", "--dry-run"])
    assert unknown.exit_code == 1
    assert "Not an organization: no-such-org" in unknown.output


def test_ckan_core_redis_error_is_one_line(make_ini, two_datasets):
    # a real `ckan` process: CKAN checks Redis while it starts, before the
    # command runs, and logs through the config's own handlers
    ini = _ini_with(make_ini(broker_url="redis://127.0.0.1:1/0"),
                    **{"ckan.redis.url": "redis://127.0.0.1:1/0"})
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ckan"), "-c", ini, "archiver",
         "update"], capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "Traceback" not in output
    assert "Redis is not available (Error 111 connecting to 127.0.0.1:1" in output
    assert "Cannot reach the broker at redis://127.0.0.1:1/0" in output


# -- what the commands say --------------------------------------------------

def test_update_says_what_was_already_waiting(run, two_datasets):
    assert "Queued 3 resources on bulk\n" in run("update").output
    again = run("update").output
    assert "Queued 0 resources on bulk; 3 resources already waiting (not queued again)" in again
    status = run("status", "--no-workers").output
    assert "Waiting: 0 resources on priority, 3 resources on bulk" in status


def test_update_wait_follows_the_run(run, two_datasets, celery_worker):
    result = run("update", "--wait", "--interval", "0.2")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Queued 3 resources on bulk"
    progress = [line for line in lines if " checked (" in line]
    assert progress and progress[-1].startswith("3/3 checked (100%), ")
    assert "ETA 0s, 1 broken so far" in progress[-1]
    assert lines[-1].startswith("Done: 3 resources checked, 1 broken, in ")


def test_view_resource_times_failing_since_redirect(run, two_datasets):
    org, public, private = two_datasets
    run("update", "--now")
    gone = public["resources"][1]
    model.Session.query(Archival).filter(Archival.resource_id == gone["id"]).update(
        {"url_redirected_to": "http://example.com/moved"})
    model.Session.commit()
    out = run("view", gone["id"]).output
    assert out.startswith(f"{public['name']}: ")
    assert public["resources"][0]["id"] not in out  # only the one resource
    assert re.search(r"checked \d{4}-\d\d-\d\d \d\d:\d\d UTC \(\d+s ago\)", out), out
    assert re.search(r"failing since \d{4}-\d\d-\d\d \d\d:\d\d UTC .*\(1 failed check\)", out)
    assert "last success never" in out
    assert "redirected to http://example.com/moved" in out
    assert "." not in re.search(r"checked (\S+ \S+)", out).group(1)  # no microseconds


def test_status_summary_and_disk_use(run, two_datasets):
    run("update", "--now")
    out = run("status", "--no-workers").output
    assert "Links: 2 ok, 1 broken, 0 not sure, 0 never checked" in out
    assert re.search(r"Archive: 2 cached files, 8 bytes \(.*, [\d.]+ [kMGT]?B free\)", out), out
    assert re.search(r"Oldest check: \d{4}-\d\d-\d\d \d\d:\d\d UTC \(", out)
    data = json_output(run("status", "--json", "--no-workers").output)
    assert data["verdicts"] == {"ok": 2, "broken": 1, "not sure": 0}
    assert data["archive"]["files"] == 2 and data["archive"]["bytes"] == 8


def test_size_report_and_clean_larger_than(run, two_datasets, archive_dir, httpserver):
    org, public, private = two_datasets
    httpserver.expect_request("/big.csv").respond_with_data("x" * 5000,
                                                            content_type="text/csv")
    big = factories.Resource(package_id=public["id"], url=httpserver.url_for("/big.csv"))
    run("update", "--now")
    report = run("size-report").output
    assert "Archive: 3 cached files, 5.0 kB" in report
    assert "text/csv" in report
    largest = report.split("Largest files:")[1].splitlines()[1]
    assert big["id"] in largest and "5.0 kB" in largest
    dry = run("clean-cached", "--larger-than", "1000", "--dry-run").output
    assert "Would remove 1 file larger than 1.0 kB, 5.0 kB" in dry
    assert run("clean-cached", "--larger-than", "1000").exit_code == 0
    row = model.Session.query(Archival).filter(Archival.resource_id == big["id"]).one()
    model.Session.refresh(row)
    assert row.cache_filepath is None and row.status_id == st.ARCHIVED
    assert len([p for p in archive_dir.rglob("*") if p.is_file()]) == 2


def test_orphans_dry_run_first(run, two_datasets, archive_dir):
    org, public, private = two_datasets
    run("update", "--now")
    make_archival({"id": "gone-resource", "package_id": public["id"]})
    stray = archive_dir / "stray-folder" / "left.csv"
    stray.parent.mkdir()
    stray.write_text("left over")
    dry = run("orphans")
    assert "row   gone-resource" in dry.output
    assert f"file  {stray}" in dry.output
    assert "1 orphan row and 1 orphan file; run again with --delete" in dry.output
    assert stray.exists()
    assert "Deleted 1 orphan row and 1 orphan file" in run("orphans", "--delete").output
    assert not stray.exists()
    assert model.Session.query(Archival).count() == 3
    assert "0 orphan rows and 0 orphan files" in run("orphans").output


def test_update_wait_draws_a_progress_bar_on_a_terminal(make_ini, two_datasets,
                                                        celery_worker):
    # a real `ckan` process whose stdout is a pseudo-terminal
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "ckan"), "-c", make_ini(),
         "archiver", "update", "--wait", "--interval", "0.2"],
        stdin=subprocess.DEVNULL, stdout=follower, stderr=subprocess.STDOUT)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the process closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "Queued 3 resources on bulk" in screen
    assert "Checking" in screen and "3/3" in screen  # click's bar: label, pos/length
    assert "3/3 checked (100%)" in screen and "1 broken so far" in screen
    assert "\r" in screen  # redrawn in place, not one line per update
    assert "Done: 3 resources checked, 1 broken, in " in screen
