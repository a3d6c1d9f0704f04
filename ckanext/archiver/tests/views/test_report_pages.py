"""The report and the pages as people use them: exports with organization,
private flag and time zones, sorting, sub-organizations, row actions, the
zip and report links, the edit form, 404s and headers."""

from __future__ import annotations

import csv
import datetime
import http.client
import io
import json
import re
from urllib.parse import urlsplit

import pytest
from ckan import model
from ckan.tests import factories

from ckanext.archiver import status as st
from ckanext.archiver.model import Archival
from ckanext.archiver.tests.helpers import login
from ckanext.archiver.tests.views.test_views import REPORT, Site, _cache, _csrf_token, get

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db")


@pytest.fixture
def site():
    return Site()


def _cached(archive_dir, resource):
    path = _cache(archive_dir, resource)
    row = model.Session.query(Archival).filter_by(resource_id=resource["id"]).one()
    row.cache_filepath = str(path)
    row.size = 8
    model.Session.commit()
    return path


def test_csv_has_organization_private_and_offsets(app, site):
    res = get(app, f"{REPORT}/health", site.member, query_string={"format": "csv"})
    assert res.headers["Content-Type"] == "text/csv; charset=utf-8"  # one charset
    rows = list(csv.DictReader(io.StringIO(res.get_data(as_text=True))))
    by_name = {r["resource_name"]: r for r in rows}
    assert by_name["Clinic list"]["organization"] == "health"
    assert by_name["Clinic list"]["private"] == "False"
    assert by_name["'=Beds"]["private"] == "True"
    for column in ("first_failure", "last_checked"):
        value = by_name["Clinic list"][column]
        assert value.endswith("+00:00"), value
        assert datetime.datetime.fromisoformat(value).utcoffset() == datetime.timedelta(0)
    data = json.loads(get(app, f"{REPORT}/health", site.member,
                          query_string={"format": "json"}).get_data(as_text=True))
    assert data["rows"][0]["last_checked"].endswith("+00:00")
    assert get(app, REPORT, None, query_string={"format": "json"}).headers[
        "Content-Type"] == "application/json"


def test_index_sorts_and_refuses_unknown_sorts(app, site):
    def order(**args):
        body = app.get(REPORT, query_string=args).get_data(as_text=True)
        return re.findall(r'class="archiver-org-link" href="[^"]*">([^<]+)</a>', body)

    assert order() == ["Health", site.other_org["title"]]  # worst first
    assert order(sort="-resources") == ["Health", site.other_org["title"]]
    assert order(sort="resources") == [site.other_org["title"], "Health"]
    titles = sorted(["Health", site.other_org["title"]], key=str.lower)
    assert order(sort="organization") == titles
    assert order(sort="-organization") == titles[::-1]
    body = app.get(REPORT, query_string={"sort": "resources"}).get_data(as_text=True)
    assert 'aria-sort="ascending"' in body
    assert 'href="/report/broken-links?sort=-resources"' in body  # click again: reverse
    rows = list(csv.DictReader(io.StringIO(app.get(
        REPORT, query_string={"format": "csv", "sort": "resources"}).get_data(as_text=True))))
    assert [r["organization"] for r in rows] == [site.other_org["name"], "health"]
    bad = app.get(REPORT, query_string={"sort": "password"})
    assert bad.status_code == 400
    assert "Unknown sort password" in bad.get_data(as_text=True)


def test_sub_organizations_roll_up(app, site):
    child = factories.Organization(name="health-north", title="Health North")
    # CKAN's hierarchy (as ckanext-hierarchy stores it): the child is the
    # member's group, the parent its table_id
    model.Session.add(model.Member(group=model.Group.get(child["id"]), table_id=site.org["id"],
                                   table_name="group", capacity="parent", state="active"))
    model.Session.commit()
    sub = factories.Dataset(owner_org=child["id"], name="north-clinics",
                            resources=[{"name": "North list", "url": "http://example.com/n.csv"}])
    from ckanext.archiver.tests.views.test_views import make_archival
    make_archival(sub["resources"][0], st.REQUEST_FAILED, reason="Connection refused")

    plain = app.get(f"{REPORT}/health").get_data(as_text=True)
    assert "North list" not in plain
    assert 'name="include_sub_organizations"' in plain  # offered: it has children
    rolled = app.get(f"{REPORT}/health",
                     query_string={"include_sub_organizations": "1"}).get_data(as_text=True)
    assert "North list" in rolled and "Clinic list" in rolled
    assert 'href="/report/broken-links/health-north">Health North</a>' in rolled
    data = json.loads(app.get(f"{REPORT}/health", query_string={
        "include_sub_organizations": "1", "format": "json"}).get_data(as_text=True))
    assert {r["organization"] for r in data["rows"]} == {"health", "health-north"}
    assert data["filters"]["include_sub_organizations"] is True
    # the child's own page has no children to offer
    assert 'name="include_sub_organizations"' not in app.get(
        f"{REPORT}/health-north").get_data(as_text=True)


def test_rows_link_cached_copy_and_editors_check_again(app, site, archive_dir):
    _cached(archive_dir, site.broken)
    copy = f'href="/dataset/clinics/resource/{site.broken["id"]}/archive/data.csv"'
    anonymous = get(app, f"{REPORT}/health").get_data(as_text=True)
    assert copy in anonymous
    assert "Check again" not in anonymous
    assert "Check again" not in get(app, f"{REPORT}/health", site.member).get_data(as_text=True)
    body = get(app, f"{REPORT}/health", site.editor,
               query_string={"sort": "-failure_count"}).get_data(as_text=True)
    assert body.count("Check again") == 2
    res = app.post("/dataset/clinics/archiver/check", data={
        "_csrf_token": _csrf_token(body), "resource_id": site.broken["id"],
        "came_from": "/report/broken-links/health?sort=-failure_count"},
        follow_redirects=False)
    assert res.status_code == 302
    assert res.headers["Location"].endswith("/report/broken-links/health?sort=-failure_count")
    for evil in ("//evil.example/report/broken-links", "https://evil.example/",
                 "/report/broken-linksX", "/dataset/x"):
        res = app.post("/dataset/clinics/archiver/check", data={
            "_csrf_token": _csrf_token(body), "resource_id": site.broken["id"],
            "came_from": evil}, follow_redirects=False)
        assert res.headers["Location"].endswith(
            f"/dataset/clinics/resource/{site.broken['id']}"), evil


def test_zip_and_report_links_where_editors_look(app, site, archive_dir):
    assert "archive.zip" not in app.get("/dataset/clinics").get_data(as_text=True)
    _cached(archive_dir, site.broken)
    body = app.get("/dataset/clinics").get_data(as_text=True)
    assert 'href="/dataset/clinics/archive.zip"' in body
    assert "1 archived file and datapackage.json" in body
    editor = get(app, "/dataset", site.editor).get_data(as_text=True)
    assert 'href="/report/broken-links/health"' in editor  # user menu
    assert 'href="/report/broken-links' not in get(
        app, "/dataset", site.member).get_data(as_text=True)


def test_resource_edit_form_shows_link_status(app, site):
    body = get(app, f"/dataset/clinics/resource/{site.broken['id']}/edit",
               site.editor).get_data(as_text=True)
    assert "Link status" in body
    assert "Link broken" in body and "Server returned 404 Not Found" in body
    assert body.index("Link status") < body.index('id="resource-edit"')


def test_cached_copy_has_one_date_header(site, archive_dir, live_server):
    _cached(archive_dir, site.broken)
    conn = http.client.HTTPConnection("127.0.0.1", urlsplit(live_server).port, timeout=10)
    conn.request("GET", f"/dataset/clinics/resource/{site.broken['id']}/archive/data.csv")
    res = conn.getresponse()
    assert res.status == 200 and res.read() == b"a,b\n1,2\n"
    assert len(res.headers.get_all("Date")) == 1
    conn.close()


def test_private_copy_404_for_those_who_may_not_see_it(app, site, archive_dir):
    _cached(archive_dir, site.private_res)
    url = f"/dataset/secret-beds/resource/{site.private_res['id']}/archive/data.csv"
    for user in (None, site.outsider):
        assert get(app, url, user).status_code == 404
    login(app, None)
    api = app.get("/api/3/action/archiver_resource_show",
                  query_string={"id": site.private_res["id"]})
    assert api.status_code == 404
    assert api.json["error"]["__type"] == "Not Found Error"
