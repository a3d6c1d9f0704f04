import contextlib
import json

import pytest
import sqlalchemy as sa
from ckan import model, plugins
from ckan.tests import factories
from ckan.tests.helpers import call_action

from ckanext.archiver import status as st
from ckanext.archiver.tests.factories import make_archival

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db")


@contextlib.contextmanager
def count_queries():
    statements = []

    def listener(conn, cursor, statement, *args):
        statements.append(statement)

    engine = model.meta.engine
    sa.event.listen(engine, "before_cursor_execute", listener)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", listener)


def _archival_queries(statements):
    return [s for s in statements if "FROM archival" in s]


def test_archiver_keys_at_both_levels():
    dataset = factories.Dataset()
    ok = factories.Resource(package_id=dataset["id"])
    bad = factories.Resource(package_id=dataset["id"])
    unchecked = factories.Resource(package_id=dataset["id"])
    make_archival(ok, st.ARCHIVED, size=12, mimetype="text/csv")
    make_archival(bad, st.DOWNLOAD_ERROR, reason="Server returned 404 Not Found")

    shown = call_action("package_show", id=dataset["id"])
    by_id = {r["id"]: r for r in shown["resources"]}
    assert by_id[ok["id"]]["archiver"]["status"] == "Archived successfully"
    assert by_id[ok["id"]]["archiver"]["size"] == 12
    assert by_id[bad["id"]]["archiver"]["is_broken"] is True
    assert by_id[bad["id"]]["archiver"]["is_broken_printable"] == "Broken"
    assert by_id[unchecked["id"]]["archiver"]["status"] is None  # queued, not checked
    assert by_id[unchecked["id"]]["archiver"]["queued_at"]
    assert shown["archiver"] == {
        "status_id": 12, "status": "Download error",
        "reason": "Server returned 404 Not Found", "is_broken": True}


def test_resource_dicts_add_pending_to_the_older_archivers_keys():
    """Only added: every key of the older archiver's contract stays, and
    ``pending`` says whether a check is on its way (as in
    ``archiver_resource_show``)."""
    from ckanext.archiver.model import PUBLIC_COLUMNS

    dataset = factories.Dataset()
    checked = factories.Resource(package_id=dataset["id"])
    queued = factories.Resource(package_id=dataset["id"])
    make_archival(checked, st.ARCHIVED)
    sysadmin = {"user": factories.Sysadmin()["name"]}  # the older archiver's keys, path too
    shown = call_action("package_show", dict(sysadmin), id=dataset["id"])
    by_id = {r["id"]: r["archiver"] for r in shown["resources"]}
    older = {"resource_timestamp", "status_id", "is_broken", "reason", "url_redirected_to",
             "cache_filepath", "cache_url", "size", "mimetype", "hash", "etag",
             "last_modified", "first_failure", "last_success", "failure_count", "created",
             "updated", "status", "is_broken_printable"}
    for info in by_id.values():
        assert older <= set(info)
        assert set(info) == set(PUBLIC_COLUMNS) | {"status", "is_broken_printable",
                                                   "site_fault", "pending"}
    assert by_id[checked["id"]]["pending"] is None
    assert by_id[queued["id"]]["pending"] == "queued"
    assert call_action("archiver_resource_show", id=queued["id"])["pending"] == "queued"
    listed = call_action("archiver_dataset_show", id=dataset["id"])["resources"]
    assert {r["resource_id"]: r["pending"] for r in listed} == {
        checked["id"]: None, queued["id"]: "queued"}


@pytest.mark.parametrize("n_resources", [0, 1, 200])
def test_one_query_per_dataset(n_resources):
    dataset = factories.Dataset()
    if n_resources:
        resources = [{"url": f"http://example.com/{i}.csv", "name": f"r{i}"}
                     for i in range(n_resources)]
        dataset = call_action("package_patch", id=dataset["id"], resources=resources)
        for res in dataset["resources"]:
            make_archival(res)
    with count_queries() as statements:
        shown = call_action("package_show", id=dataset["id"])
    assert len(shown["resources"]) == n_resources
    assert all("archiver" in r for r in shown["resources"])
    assert len(_archival_queries(statements)) == 1


def test_archiver_data_not_indexed():
    plugin = plugins.get_plugin("archiver")
    dataset = factories.Dataset()
    res = factories.Resource(package_id=dataset["id"])
    make_archival(res)
    shown = call_action("package_show", id=dataset["id"])
    indexed = plugin.before_dataset_index(dict(
        shown, data_dict=json.dumps(shown), validated_data_dict=json.dumps(shown)))
    assert "archiver" not in indexed
    assert all("archiver" not in r for r in indexed["resources"])
    for key in ("data_dict", "validated_data_dict"):
        data = json.loads(indexed[key])
        assert "archiver" not in data
        assert "archiver" not in data["resources"][0]
