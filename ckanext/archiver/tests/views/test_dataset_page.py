"""The dataset page's resource list says what each resource page says
about its link (the same short state: ``link_state.short_state``), and
nothing a reader of the dataset may not see.

End to end, as in ``test_link_truth.py``: a real origin on 127.0.0.1, a
real Celery worker, PostgreSQL, the pages as CKAN renders them.
"""

from __future__ import annotations

import shutil

import pytest
from ckan.tests import factories
from ckan.tests.helpers import call_action
from werkzeug import Response

from ckanext.archiver import status as st
from ckanext.archiver.tests.helpers import archival_row, checked_row, login, wait_for
from ckanext.archiver.tests.views.pages import resource_items, status_section
from ckanext.archiver.worker import dispatch

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db")

WORDS = ("Link OK", "Link works, but it moved", "Link works, but goes to a web page, not a file",
         "Link broken", "Not sure if the link works", "Not checked yet",
         "Waiting to be checked", "Being checked now", "Waiting to be tried again")


def _words(text: str) -> set[str]:
    """The short states found in a text ("Link works, but it moved" is
    not also "Link OK")."""
    return {w for w in WORDS if w in text}


def test_each_resource_item_shows_its_resource_pages_state(
        app, archiver_env, origin, ckan_config, monkeypatch):
    from celery.contrib.testing.worker import start_worker

    from ckanext.archiver import config
    from ckanext.archiver.worker import app as worker_app

    monkeypatch.setitem(ckan_config, "ckanext.archiver.max_retries", 1)
    monkeypatch.setitem(ckan_config, "ckanext.archiver.retry_delay", 300)
    new = origin.url_for("/new.csv")
    origin.expect_request("/ok.csv").respond_with_data("a\n", content_type="text/csv")
    origin.expect_request("/new.csv").respond_with_data("a\n", content_type="text/csv")
    origin.expect_request("/old.csv").respond_with_response(
        Response(status=301, headers={"Location": new}))
    origin.expect_request("/page.csv").respond_with_data(
        "<!doctype html><html><body>Log in</body></html>", content_type="text/html")
    origin.expect_request("/gone.csv").respond_with_data("no", status=404)
    origin.expect_request("/busy.csv").respond_with_data("busy", status=503)
    dataset = factories.Dataset()
    expected = {}
    for path, words in (("/ok.csv", {"Link OK"}),
                        ("/old.csv", {"Link works, but it moved"}),
                        ("/page.csv", {"Link works, but goes to a web page, not a file"}),
                        ("/gone.csv", {"Link broken"}),
                        ("/busy.csv", {"Link broken", "Waiting to be tried again"})):
        res = factories.Resource(package_id=dataset["id"], url=origin.url_for(path),
                                 name=path.strip("/"), format="CSV")
        expected[res["id"]] = (res, words)

    # no worker yet: each one waits for its first check
    items = resource_items(app, dataset, case="dataset page: queued, no worker yet")
    assert {rid: _words(text) for rid, text in items.items()} == {
        rid: {"Waiting to be checked"} for rid in expected}

    app_ = worker_app.get_app()
    app_.amqp.queues.select([config.current().queue_name(n) for n in ("priority", "bulk")])
    with start_worker(app_, pool="threads", concurrency=2, perform_ping_check=False,
                      shutdown_timeout=10, loglevel="WARNING"):
        for rid in expected:
            wait_for(lambda rid=rid: checked_row(rid))
    items = resource_items(app, dataset, case="dataset page: after the checks")
    for rid, (res, words) in expected.items():
        assert _words(items[rid]) == words, (res["name"], items[rid])
        # the resource page shows the same words (in its longer sentences)
        page = status_section(app, dataset, res, case=f"resource page: {res['name']}")
        assert _words(page) == words, (res["name"], page)
    busy = next(rid for rid, (_res, words) in expected.items() if len(words) == 2)
    assert "Waiting to be tried again at" in status_section(app, dataset, expected[busy][0])
    german = resource_items(app, dataset, lang="de", case="dataset page: in German")
    assert "Link defekt" in german[busy] and "Wartet auf einen neuen Versuch" in german[busy]

    # package_show's archiver dicts say the same of what is on its way
    shown = call_action("package_show", {"user": ""}, id=dataset["id"])
    assert {r["id"]: r["archiver"]["pending"] for r in shown["resources"]} == {
        rid: ("retry" if rid == busy else None) for rid in expected}


def test_a_private_datasets_list_shows_members_the_state_and_no_one_the_path(
        app, celery_worker, httpserver, archive_dir, sysadmin):
    httpserver.expect_request("/ok.csv").respond_with_data("a,b\n", content_type="text/csv")
    member = factories.User()
    org = factories.Organization(users=[{"name": member["name"], "capacity": "editor"}])
    dataset = factories.Dataset(owner_org=org["id"], private=True)
    res = factories.Resource(package_id=dataset["id"], url=httpserver.url_for("/ok.csv"),
                             name="private file")
    first = wait_for(lambda: checked_row(res["id"]))
    assert first.status_id == st.ARCHIVED and first.cache_filepath
    # a fault of the site on the next check: its cause names the folder
    shutil.rmtree(archive_dir)
    archive_dir.write_text("the archive folder became a file")
    dispatch.enqueue([(res["id"], dataset["id"])], "priority", force=True)
    row = wait_for(lambda: (r := archival_row(res["id"])) is not None
                   and r.site_fault_at is not None and r)
    secrets = (str(archive_dir), row.cache_filepath, row.site_fault)

    login(app, None)
    answer = app.get(f"/dataset/{dataset['name']}")
    assert answer.status_code == 404
    body = answer.get_data(as_text=True)
    assert res["id"] not in body and "Link OK" not in body and "private file" not in body

    for user in (member, sysadmin):  # the list shows no one the path or the cause
        items = resource_items(app, dataset, user, case="private dataset: " + (
            "sysadmin" if user is sysadmin else "member"))
        assert _words(items[res["id"]]) == {"Link OK"}, items
        login(app, user)
        body = app.get(f"/dataset/{dataset['name']}").get_data(as_text=True)
        assert not [s for s in secrets if s in body], user["name"]
    # the API keeps them for sysadmins only
    info = call_action("package_show", {"user": member["name"]},
                       id=dataset["id"])["resources"][0]["archiver"]
    assert "cache_filepath" not in info and "site_fault" not in info
    assert info["cache_filename"] and info["pending"] is None
    info = call_action("package_show", {"user": sysadmin["name"]},
                       id=dataset["id"])["resources"][0]["archiver"]
    assert info["cache_filepath"] == row.cache_filepath and info["site_fault"] == row.site_fault
