"""Service statistics against a known state: figures.numbers, the
archiver_status action, `ckan archiver status --json` and the Prometheus
endpoint (flag and token)."""

from __future__ import annotations

import datetime
import json
import re

import ckan.plugins.toolkit as tk
import pytest
from ckan import model
from ckan.cli.cli import ckan
from ckan.tests import factories
from ckan.tests.helpers import call_action

from ckanext.archiver import status as st
from ckanext.archiver.model import Archival, ArchivalHistory, utcnow
from ckanext.archiver.tests.factories import make_archival
from ckanext.archiver.tests.helpers import json_output
from ckanext.archiver.worker import dispatch, figures

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db", "archiver_env")

DEAD = "http://127.0.0.1:9/"
NOW = utcnow().replace(minute=40, second=0, microsecond=0)
MIN = datetime.timedelta(minutes=1)


@pytest.fixture(autouse=True)
def no_auto_queue(monkeypatch):
    monkeypatch.setattr(dispatch, "needing_check", lambda package_id: [])


@pytest.fixture
def known():
    """Five active resources (archived, unchanged, broken, system error,
    never checked: a queued placeholder row), a deleted one, and checks in
    this hour, the previous one and a day and a half ago."""
    pkg = factories.Dataset(resources=[{"name": n, "url": DEAD + n} for n in
                                       ("ok", "same", "broken", "error", "never", "gone")])
    ok, same, broken, error, never, gone = pkg["resources"]
    make_archival(ok, st.ARCHIVED, updated=NOW - 10 * MIN)
    make_archival(same, st.UNCHANGED, updated=NOW - 100 * MIN)
    make_archival(broken, st.DOWNLOAD_ERROR, updated=NOW - 20 * MIN)
    make_archival(error, st.SYSTEM_ERROR, updated=NOW - 70 * MIN)
    model.Session.add(Archival(id=never["id"], resource_id=never["id"],
                               package_id=pkg["id"], queued_at=NOW, failure_count=0))
    make_archival(gone, st.DOWNLOAD_ERROR, updated=NOW - 2000 * MIN)
    call_action("resource_delete", id=gone["id"])
    for res, minutes, broken_, nbytes in [
            (ok, 10, False, 1000), (broken, 20, True, 0),  # this hour
            (same, 65, False, 500), (error, 70, None, 0),  # the hour before
            (ok, 30 * 60, False, 7)]:                      # outside 24 hours
        model.Session.add(ArchivalHistory(
            resource_id=res["id"], package_id=pkg["id"], checked_at=NOW - minutes * MIN,
            status_id={False: 0, True: 12, None: 23}[broken_], is_broken=broken_,
            bytes_received=nbytes))
    model.Session.commit()
    return pkg


def test_numbers(known):
    n = figures.numbers(with_workers=False, now=NOW)
    assert n["queues"] == {"priority": 0, "bulk": 0}
    assert n["resources"] == {"total": 5, "never_checked": 1, "ok": 2, "broken": 1,
                              "not_sure": 1, "site_faults": 0}
    assert [(c["status_id"], c["count"]) for c in n["status_counts"]] == [
        (0, 1), (1, 1), (12, 1), (23, 1)]
    assert n["status_counts"][2]["status"] == "Download error"
    assert n["hours"] == 24 and len(n["per_hour"]) == 24
    this_hour, hour_before = n["per_hour"][-1], n["per_hour"][-2]
    assert this_hour["hour"] == NOW.replace(minute=0).isoformat()
    assert {k: this_hour[k] for k in ("done", "failed", "broken", "bytes")} == {
        "done": 2, "failed": 1, "broken": 1, "bytes": 1000}
    assert {k: hour_before[k] for k in ("done", "failed", "broken", "bytes")} == {
        "done": 2, "failed": 1, "broken": 0, "bytes": 500}
    assert (n["done"], n["failed"], n["bytes_downloaded"]) == (4, 2, 1500)
    assert n["last_hour"] == {"done": 2, "failed": 1, "site_faults": 0, "bytes": 1000}
    never = known["resources"][4]
    assert n["oldest_unchecked"]["resource_id"] == never["id"]
    assert n["oldest_check"] == (NOW - 100 * MIN).isoformat()
    assert n["oldest_check_age_seconds"] == 6000.0
    assert figures.numbers(with_workers=False, hours=2, now=NOW)["done"] == 4

    dispatch.enqueue([(never["id"], known["id"])], "bulk")
    assert figures.numbers(with_workers=False, now=NOW)["queues"] == {"priority": 0, "bulk": 1}


def test_status_action_for_sysadmins_only(known, celery_worker):
    sysadmin, user = factories.Sysadmin(), factories.User()
    for name in (user["name"], ""):
        with pytest.raises(tk.NotAuthorized):
            call_action("archiver_status", {"user": name, "ignore_auth": False},
                        with_workers=False)
    n = call_action("archiver_status", {"user": sysadmin["name"], "ignore_auth": False},
                    hours=3)
    assert n["resources"]["broken"] == 1 and len(n["per_hour"]) == 3
    assert len(n["workers"]) == 1 and n["tasks_in_flight"] == 0
    json.dumps(n)  # JSON-ready


def test_cli_status_json_has_the_figures(known, cli, make_ini):
    result = cli.invoke(ckan, ["-c", make_ini(), "archiver", "status", "--json",
                               "--no-workers"])
    assert result.exit_code == 0, result.output
    data = json_output(result.output)
    assert {r["status"] for r in data["status_counts"]} >= {"Download error"}
    assert data["resources"]["never_checked"] == 1
    assert data["oldest_unchecked"]["resource_id"] == known["resources"][4]["id"]
    assert len(data["per_hour"]) == 24 and "bytes_downloaded" in data


# -- Prometheus endpoint ---------------------------------------------------------

SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})?'
                    r" (-?[0-9.]+(e[+-]?[0-9]+)?|NaN|[+-]Inf)$")


def test_metrics_flag_and_token(app, known, ckan_config, monkeypatch):
    url = "/archiver/metrics"
    assert app.get(url).status_code == 404  # off by default
    monkeypatch.setitem(ckan_config, "ckanext.archiver.metrics_enabled", True)
    assert app.get(url, headers={"Authorization": "Bearer "}).status_code == 403  # no token set
    monkeypatch.setitem(ckan_config, "ckanext.archiver.metrics_token", "t0ken")
    for header in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic t0ken"},
                   {"Authorization": "Bearer t0ken2"}, {"X-Archiver-Metrics-Token": "t0ke"},
                   {"X-Archiver-Metrics-Token": "", "Authorization": "Bearer t0ken"}):
        assert app.get(url, headers=header).status_code == 403, header
    assert app.get(url, headers={"Authorization": "Bearer t0ken"}).status_code == 200
    res = app.get(url, headers={"X-Archiver-Metrics-Token": "t0ken"})
    assert res.status_code == 200
    assert res.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = res.get_data(as_text=True)
    lines = text.splitlines()
    assert text.endswith("\n")
    for line in lines:
        assert line.startswith(("# HELP ", "# TYPE ")) or SAMPLE.match(line), line
    types = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert len(types) == len(set(types))
    for expected in ('archiver_queue_length{queue="bulk"} 0', "archiver_broker_up 1",
                     'archiver_resources{status_id="12",status="Download error",'
                     'result="broken"} 1',
                     "archiver_resources_never_checked 1", "archiver_resources_broken 1"):
        assert expected in lines, expected
    assert any(line.startswith("archiver_checks_last_hour ") for line in lines)
