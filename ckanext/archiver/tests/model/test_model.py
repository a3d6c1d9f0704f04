import datetime

import pytest
import sqlalchemy as sa
from ckan import model
from ckan.tests import factories

from ckanext.archiver import status as st
from ckanext.archiver.model import (
    Archival,
    ArchivalHistory,
    dataset_summary,
    utcnow,
)
from ckanext.archiver.tests.factories import make_archival

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db")


def test_round_trip_every_column():
    res = factories.Resource(url="http://example.com/a.csv")
    now = utcnow().replace(microsecond=0)
    make_archival(
        res, st.ARCHIVED, size=10**10, mimetype="text/csv", hash="a" * 40,
        sha256="b" * 64, etag='"x"', last_modified="Mon, 02 Jan 2026 00:00:00 GMT",
        cache_control="max-age=60", fresh_until=now, http_status=200,
        is_web_page=False, queued_at=now, started_at=now, next_check_at=now,
        cache_filepath="/a/b", cache_url="http://c/d", url_redirected_to="http://e",
    )
    model.Session.expunge_all()
    row = Archival.get_for_resource(res["id"])
    assert row.size == 10**10
    assert (row.sha256, row.hash, row.http_status) == ("b" * 64, "a" * 40, 200)
    assert row.fresh_until == now
    data = row.as_dict()
    assert data["status"] == "Archived successfully"
    assert data["is_broken_printable"] == "Downloaded OK"
    assert data["fresh_until"] == now.isoformat()
    assert "id" not in data and "resource_id" not in data
    assert Archival.get_for_package(res["package_id"]) == [row]


def test_one_row_per_resource_enforced():
    res = factories.Resource()
    make_archival(res)
    model.Session.add(Archival(package_id=res["package_id"], resource_id=res["id"]))
    with pytest.raises(sa.exc.IntegrityError):
        model.Session.commit()
    model.Session.rollback()


def test_get_for_packages_one_query_many_datasets():
    r1, r2 = factories.Resource(), factories.Resource()
    make_archival(r1)
    found = Archival.get_for_packages([r1["package_id"], r2["package_id"]])
    assert [a.resource_id for a in found[r1["package_id"]]] == [r1["id"]]
    # r2 was only queued (its row has no status yet)
    assert [a.status_id for a in found[r2["package_id"]]] == [None]
    assert Archival.get_for_packages([]) == {}


def test_dataset_summary_worst_wins():
    ok = Archival(status_id=0, is_broken=False, reason="ok")
    unsure = Archival(status_id=21, is_broken=None, reason="too big")
    broken = Archival(status_id=12, is_broken=True, reason="404")
    assert dataset_summary([ok, unsure])["status_id"] == 21
    assert dataset_summary([ok, broken, unsure]) == {
        "status_id": 12, "status": "Download error", "reason": "404", "is_broken": True}
    assert dataset_summary([])["status"] is None


def test_history_retention():
    res = factories.Resource()
    old = utcnow() - datetime.timedelta(days=500)
    for when in (old, utcnow()):
        model.Session.add(ArchivalHistory(
            resource_id=res["id"], package_id=res["package_id"], checked_at=when,
            status_id=0, is_broken=False, http_status=200, duration=0.1, bytes_received=5))
    model.Session.commit()
    assert ArchivalHistory.delete_older_than(400) == 1
    assert model.Session.query(ArchivalHistory).count() == 1


def test_status_table_matches_status_module():
    rows = model.Session.execute(
        sa.text("select id, text, is_broken from archiver_status order by id")).all()
    assert [(r.id, r.text, r.is_broken) for r in rows] == [
        (i, t, st.is_broken(i)) for i, t in sorted(st.STATUSES.items())]


def test_a_new_row_is_keyed_by_its_resource_id():
    """Every writer (queue marks, batches, the test factory) makes the row's
    id its resource's id; the model's default is the same rule (it was a
    uuid)."""
    res = factories.Resource(url="http://example.com/id.csv")
    model.Session.query(Archival).filter_by(resource_id=res["id"]).delete()
    model.Session.commit()
    row = Archival(package_id=res["package_id"], resource_id=res["id"], status_id=st.ARCHIVED)
    model.Session.add(row)
    model.Session.commit()
    assert row.id == res["id"]
