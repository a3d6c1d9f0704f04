"""Report pages, exports, cached copies and "Check now", through CKAN's
test client, for every kind of reader."""

from __future__ import annotations

import csv
import datetime
import io
import json
import re

import pytest
from ckan import logic, model
from ckan.tests import factories

from ckanext.archiver import status as st
from ckanext.archiver.model import Archival, ArchivalHistory, utcnow
from ckanext.archiver.tests import factories as archiver_factories
from ckanext.archiver.tests.helpers import login
from ckanext.archiver.views import cached_copy_url
from ckanext.archiver.worker import dispatch

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db")

REPORT = "/report/broken-links"


class Site:
    """Two organizations; in ``org`` a public dataset (one broken, one ok
    web-page resource) and a private one (one broken resource)."""

    def __init__(self):
        self.sysadmin = factories.Sysadmin()
        self.member = factories.User()
        self.editor = factories.User()
        self.outsider = factories.User()
        self.org = factories.Organization(
            name="health", title="Health",
            users=[{"name": self.member["name"], "capacity": "member"},
                   {"name": self.editor["name"], "capacity": "editor"}])
        self.other_org = factories.Organization(
            name="transport", users=[{"name": self.outsider["name"],
                                      "capacity": "admin"}])
        # resources made with their dataset: one action (and one queueing
        # hook) per dataset, which keeps the fixture cheap
        self.public = factories.Dataset(
            owner_org=self.org["id"], name="clinics", title="Clinics",
            resources=[
                {"name": "Clinic list", "format": "CSV",
                 "url": "http://example.com/" + "long/" * 20 + "clinics.csv"},
                {"name": "Clinic page", "format": "HTML",
                 "url": "http://example.com/clinics"}])
        self.broken, self.web = self.public["resources"]
        self.private = factories.Dataset(
            owner_org=self.org["id"], name="secret-beds", private=True,
            resources=[{"name": "=Beds", "format": "XLS",
                        "url": "http://example.com/beds.xls"}])
        (self.private_res,) = self.private["resources"]
        self.other = factories.Dataset(
            owner_org=self.other_org["id"],
            resources=[{"url": "http://example.com/other.csv"}])
        (self.other_res,) = self.other["resources"]

        make_archival(self.broken, st.DOWNLOAD_ERROR,
                      reason="Server returned 404 Not Found", http_status=404,
                      failure_count=5,
                      url_redirected_to="http://example.com/moved")
        make_archival(self.web, st.ARCHIVED, is_web_page=True)
        make_archival(self.private_res, st.URL_INVALID, reason="Bad URL",
                      failure_count=2)
        make_archival(self.other_res, st.ARCHIVED)


def make_archival(resource, status_id=st.ARCHIVED, **fields):
    """make_archival, replacing the row that queueing the new resource may
    already have made (status_id NULL, queued_at set)."""
    model.Session.query(Archival).filter_by(
        resource_id=resource["id"]).delete()
    model.Session.commit()
    return archiver_factories.make_archival(resource, status_id, **fields)


@pytest.fixture
def site():
    return Site()


def get(app, url, user=None, **kwargs):
    login(app, user)
    return app.get(url, **kwargs)


def index_json(app, user=None):
    res = get(app, REPORT, user, query_string={"format": "json"})
    assert res.status_code == 200
    return json.loads(res.get_data(as_text=True))


def org_json(app, org, user=None, **args):
    res = get(app, f"{REPORT}/{org}", user,
              query_string=dict(args, format="json"))
    assert res.status_code == 200, res.status_code
    return json.loads(res.get_data(as_text=True))


# -- index -------------------------------------------------------------------

READERS = [(None, 1, 2, 1), ("outsider", 1, 2, 1), ("member", 2, 3, 2),
           ("sysadmin", 2, 3, 2)]


def test_index_counts_what_each_reader_may_see(app, site):
    for who, datasets, resources, broken in READERS:
        data = index_json(app, getattr(site, who) if who else None)
        health = next(o for o in data["rows"] if o["organization"] == "health")
        assert (health["datasets"], health["resources"],
                health["broken_resources"]) == (datasets, resources, broken), who
        assert health["broken_datasets"] == datasets
        assert health["broken_resources_percent"] == round(
            100.0 * broken / resources, 1)
        assert data["rows"][0]["organization"] == "health"  # worst first
        assert data["rows"][1]["broken_resources"] == 0


def test_index_page_and_csv(app, site):
    res = app.get(REPORT)
    assert res.status_code == 200
    body = res.get_data(as_text=True)
    assert 'href="/report/broken-links/health"' in body
    assert 'href="/report/broken-links/transport"' in body
    # no check recorded in archival_history yet: no trend (not a row of 0s)
    assert "archiver-trend" not in body
    totals = re.search(r'<tr class="archiver-totals">(.*?)</tr>', body, re.S)
    cells = re.findall(r'<td class="archiver-num">([^<]*)</td>',
                       totals.group(1))
    # datasets, broken datasets, %, resources, broken resources, %
    assert cells[:6] == ["2", "1", "50.0", "3", "1", "33.3"]
    assert "secret-beds" not in body

    res = app.get(REPORT, query_string={"format": "csv"})
    assert res.status_code == 200
    assert res.is_streamed
    assert res.mimetype == "text/csv"
    assert "attachment" in res.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(res.get_data(as_text=True))))
    assert [r["organization"] for r in rows] == ["health", "transport"]

    assert app.get(REPORT, query_string={"format": "xml"}).status_code == 400
    res = get(app, REPORT, site.member, query_string={"format": "csv"})
    assert "private" in res.headers["Cache-Control"]
    assert "public" not in res.headers["Cache-Control"]


# -- organization page -------------------------------------------------------

def test_org_page_html(app, site):
    res = app.get(f"{REPORT}/health")
    assert res.status_code == 200
    body = res.get_data(as_text=True)
    assert "Clinic list" in body
    assert "Server returned 404 Not Found" in body
    assert "secret-beds" not in body and "Beds" not in body
    assert "Clinic page" not in body  # ok links are not listed by default
    # shortened URL, the whole one on hover
    assert f'title="{site.broken["url"]}"' in body
    assert "\u2026" in body
    assert 'href="/dataset/clinics"' in body
    assert f'href="/dataset/clinics/resource/{site.broken["id"]}"' in body
    assert "http://example.com/moved" in body
    assert "<svg" not in body  # no check in archival_history yet

    assert app.get(f"{REPORT}/{site.org['id']}").status_code == 200
    assert app.get(f"{REPORT}/no-such-org").status_code == 404
    assert app.get(f"{REPORT}/no-such-org",
                   query_string={"format": "csv"}).status_code == 404


def test_org_rows_follow_read_permission(app, site):
    for who, expected in [
            (None, {"Clinic list"}), ("outsider", {"Clinic list"}),
            ("member", {"Clinic list", "=Beds"}),
            ("sysadmin", {"Clinic list", "=Beds"})]:
        data = org_json(app, "health", getattr(site, who) if who else None)
        assert {r["resource_name"] for r in data["rows"]} == expected, who
        assert data["organization"]["name"] == "health"


def test_org_filters_sort_and_pagination(app, site, ckan_config, monkeypatch):
    admin = site.sysadmin
    web = org_json(app, "health", admin, status="webpage")["rows"]
    assert [r["resource_name"] for r in web] == ["Clinic page"]
    assert web[0]["is_web_page"] is True
    only = org_json(app, "health", admin, status=str(st.URL_INVALID))["rows"]
    assert [r["resource_name"] for r in only] == ["=Beds"]
    for nonsense in ("99999999999999999999", "-1", "drop table", "99"):
        res = get(app, f"{REPORT}/health", admin, query_string={"status": nonsense})
        assert res.status_code == 400, nonsense  # never a silent "all broken"
        assert "Unknown status filter" in res.get_data(as_text=True)
    for args in ({"sort": "url"}, {"page": "two"}):
        res = get(app, f"{REPORT}/health", admin, query_string=args)
        assert res.status_code == 400, args
    csv_rows = org_json(app, "health", admin, res_format="csv")["rows"]
    assert [r["resource_name"] for r in csv_rows] == ["Clinic list"]
    by_count = org_json(app, "health", admin, sort="-failure_count")["rows"]
    assert [r["failure_count"] for r in by_count] == [5, 2]
    by_count = org_json(app, "health", admin, sort="failure_count")["rows"]
    assert [r["failure_count"] for r in by_count] == [2, 5]

    body = app.get(f"{REPORT}/health", query_string={"status": "webpage"}
                   ).get_data(as_text=True)
    assert "Link goes to a web page, not a file" in body
    assert "Clinic page" in body
    assert '<option value="csv"' not in body  # formats of the selection
    assert '<option value="html"' in body

    monkeypatch.setitem(ckan_config, "ckanext.archiver.report_page_size", 1)
    page1 = get(app, f"{REPORT}/health", admin,
                query_string={"sort": "-failure_count"})
    page2 = get(app, f"{REPORT}/health", admin,
                query_string={"sort": "-failure_count", "page": 2})
    assert "Clinic list" in page1.get_data(as_text=True)
    assert "=Beds" not in page1.get_data(as_text=True)
    assert "=Beds" in page2.get_data(as_text=True)
    assert "page=2" in page1.get_data(as_text=True)  # pager link


def test_org_csv_export(app, site):
    res = get(app, f"{REPORT}/health", site.member,
              query_string={"format": "csv"})
    assert res.status_code == 200 and res.is_streamed
    assert 'filename="broken-links-health.csv"' in res.headers[
        "Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(res.get_data(as_text=True))))
    assert {r["resource_name"] for r in rows} == {"Clinic list", "'=Beds"}
    row = next(r for r in rows if r["resource_name"] == "Clinic list")
    assert row["status"] == "Download error"
    assert row["failure_count"] == "5"
    assert row["dataset_url"] == "http://test.ckan.net/dataset/clinics"


# -- cached copies -------------------------------------------------------

def _cache(archive_dir, resource, name="data.csv", body=b"a,b\n1,2\n"):
    folder = archive_dir / resource["id"][:2] / resource["id"]
    folder.mkdir(parents=True)
    path = folder / name
    path.write_bytes(body)
    return path


def _copy_url(dataset, resource, filename="data.csv"):
    return (f"/dataset/{dataset['name']}/resource/{resource['id']}"
            f"/archive/{filename}")


@pytest.fixture
def cached(site, archive_dir):
    """Cached files for the public broken resource and the private one."""
    for res in (site.broken, site.private_res):
        path = _cache(archive_dir, res)
        row = model.Session.query(Archival).filter_by(
            resource_id=res["id"]).one()
        row.cache_filepath = str(path)
        row.mimetype = "text/csv"
        row.sha256 = "abc123"
        model.Session.commit()
    return site


def test_cached_copy_served_with_range_and_etag(app, cached):
    url = _copy_url(cached.public, cached.broken)
    res = app.get(url)
    assert res.status_code == 200
    assert res.get_data() == b"a,b\n1,2\n"
    assert res.mimetype == "text/csv"
    assert res.headers["Content-Disposition"] == (
        'attachment; filename="data.csv"; filename*=UTF-8\'\'data.csv')
    assert res.headers["ETag"] == '"abc123"'
    assert res.headers["Accept-Ranges"] == "bytes"
    assert res.headers["X-Content-Type-Options"] == "nosniff"

    part = app.get(url, headers={"Range": "bytes=2-5"})
    assert part.status_code == 206
    assert part.get_data() == b"b\n1,"
    assert part.headers["Content-Range"] == "bytes 2-5/8"
    assert app.get(url, headers={"If-None-Match": '"abc123"'}).status_code == 304

    # the URL the worker stores (no request context needed) is this route
    absolute = cached_copy_url(cached.public["id"], cached.broken["id"],
                               "data.csv")
    assert absolute == (f"http://test.ckan.net/dataset/{cached.public['id']}"
                        f"/resource/{cached.broken['id']}/archive/data.csv")
    assert app.get(absolute).status_code == 200


def test_private_cached_copy_needs_read_permission(app, cached):
    url = _copy_url(cached.private, cached.private_res)
    # 404, as for the dataset page: a 403 would confirm that the ids exist
    for who, status in [(None, 404), ("outsider", 404), ("member", 200),
                        ("sysadmin", 200)]:
        res = get(app, url, getattr(cached, who) if who else None)
        assert res.status_code == status, who
        if status == 200:
            assert "public" not in res.headers["Cache-Control"]
            assert res.get_data() == b"a,b\n1,2\n"


def test_cached_copy_refuses_wrong_names_and_paths(app, cached, tmp_path):
    site = cached
    url = _copy_url(site.public, site.broken, "other.csv")
    assert app.get(url).status_code == 404  # not the row's file name
    # the resource in another dataset's URL
    assert app.get(_copy_url(site.other, site.broken)).status_code == 404
    assert app.get(_copy_url(site.public, site.other_res)).status_code == 404
    # a row pointing outside archive_dir
    outside = tmp_path / "data.csv"
    outside.write_bytes(b"secret")
    row = Archival.get_for_resource(site.broken["id"])
    row.cache_filepath = str(outside)
    model.Session.commit()
    assert app.get(_copy_url(site.public, site.broken)).status_code == 404


def test_cached_copy_handed_to_the_web_server(app, cached, archive_dir,
                                              ckan_config, monkeypatch):
    url = _copy_url(cached.public, cached.broken)
    rid = cached.broken["id"]
    monkeypatch.setitem(ckan_config, "ckanext.archiver.serve_with",
                        "x-accel-redirect")
    monkeypatch.setitem(ckan_config, "ckanext.archiver.x_accel_prefix",
                        "/_files/")
    res = app.get(url)
    assert res.headers["X-Accel-Redirect"] == f"/_files/{rid[:2]}/{rid}/data.csv"
    assert res.get_data() == b""
    assert res.mimetype == "text/csv"
    assert "filename*=UTF-8''data.csv" in res.headers["Content-Disposition"]

    monkeypatch.setitem(ckan_config, "ckanext.archiver.serve_with",
                        "x-sendfile")
    res = app.get(url)
    assert res.headers["X-Sendfile"] == str(
        archive_dir.resolve() / rid[:2] / rid / "data.csv")
    assert res.get_data() == b""


def test_cached_copy_url_with_root_path(ckan_config, monkeypatch):
    assert cached_copy_url("pkg", "rid", "a file.csv") == (
        "http://test.ckan.net/dataset/pkg/resource/rid/archive/a%20file.csv")
    monkeypatch.setitem(ckan_config, "ckan.root_path", "/data/{{LANG}}")
    assert cached_copy_url("pkg", "rid", "x.csv") == (
        "http://test.ckan.net/data/dataset/pkg/resource/rid/archive/x.csv")


# -- resource and dataset pages --------------------------------------------

def test_resource_page_shows_status_and_cached_copy(app, cached):
    site = cached
    row = Archival.get_for_resource(site.broken["id"])
    row.last_success = utcnow() - datetime.timedelta(days=10)
    model.Session.commit()
    body = app.get(f"/dataset/clinics/resource/{site.broken['id']}"
                   ).get_data(as_text=True)
    assert "Link broken" in body
    assert "Server returned 404 Not Found" in body
    assert "Failed 5 checks in a row since" in body
    assert "Download cached copy" in body
    assert _copy_url(site.public, site.broken) in body
    assert "cached before the link broke" in body
    assert "Check link now" not in body  # anonymous may not edit


def test_resource_page_ok_and_unchecked_and_dataset_badge(app, site):
    body = app.get(f"/dataset/clinics/resource/{site.web['id']}"
                   ).get_data(as_text=True)
    # a web page where a file was promised: a warning, not "Link OK"
    assert "Link works, but goes to a web page, not a file" in body
    assert "Link OK" not in body and "archiver-status-warning" in body
    assert "in a row since" not in body and "One-off failure" not in body
    unchecked = factories.Resource(package_id=site.other["id"])
    body = app.get(f"/dataset/{site.other['name']}/resource/{unchecked['id']}"
                   ).get_data(as_text=True)
    assert "This link has not been checked yet." in body

    body = app.get("/dataset/clinics").get_data(as_text=True)
    assert "archiver-broken-badge" in body
    assert "1 broken link" in body
    body = app.get(f"/dataset/{site.other['name']}").get_data(as_text=True)
    assert "archiver-broken-badge" not in body


def test_report_linked_from_org_admin_and_header(app, site):
    body = app.get("/organization/health").get_data(as_text=True)
    assert 'href="/report/broken-links/health"' in body
    body = get(app, "/ckan-admin", site.sysadmin).get_data(as_text=True)
    assert body.count('href="/report/broken-links"') >= 2  # tab and header
    body = get(app, "/dataset/clinics", site.member).get_data(as_text=True)
    assert 'href="/report/broken-links"' not in body


# -- check now ---------------------------------------------------------------

def _csrf_token(body):
    return re.search(r'name="_csrf_token" value="([^"]+)"', body).group(1)


@pytest.fixture
def fake_update(monkeypatch):
    """Record calls of archiver_update instead of queueing anything."""
    calls = []

    def archiver_update(context, data_dict):
        calls.append(data_dict)
        return {}

    logic.get_action("package_show")  # make sure the registry is loaded
    monkeypatch.setitem(logic._actions, "archiver_update", archiver_update)
    return calls


def test_check_now_queues_and_redirects(app, site, fake_update):
    login(app, site.editor)
    page = app.get(f"/dataset/clinics/resource/{site.broken['id']}")
    body = page.get_data(as_text=True)
    assert "Check link now" in body
    res = app.post("/dataset/clinics/archiver/check",
                   data={"_csrf_token": _csrf_token(body),
                         "resource_id": site.broken["id"]},
                   follow_redirects=False)
    assert res.status_code == 302
    assert res.headers["Location"].endswith(
        f"/dataset/clinics/resource/{site.broken['id']}")
    assert fake_update == [{"id": site.broken["id"], "queue": "priority", "force": True}]
    body = app.get(res.headers["Location"]).get_data(as_text=True)
    assert "Queued for checking" in body

    res = app.post("/dataset/clinics/archiver/check",
                   data={"_csrf_token": _csrf_token(body)})
    assert res.status_code == 200  # followed to the dataset page
    assert fake_update[-1] == {"id": site.public["id"], "queue": "priority", "force": True}


def test_check_now_needs_csrf_and_edit_rights(app, site, fake_update):
    login(app, site.editor)
    res = app.post("/dataset/clinics/archiver/check", data={})
    assert res.status_code == 400  # no CSRF token
    login(app, site.member)
    body = app.get("/dataset/clinics").get_data(as_text=True)
    assert "Check all links now" not in body
    res = app.post("/dataset/clinics/archiver/check",
                   data={"_csrf_token": _csrf_token(body)})
    assert res.status_code == 403
    login(app, site.editor)
    body = app.get("/dataset/clinics").get_data(as_text=True)
    res = app.post("/dataset/clinics/archiver/check",
                   data={"_csrf_token": _csrf_token(body),
                         "resource_id": site.other_res["id"]})
    assert res.status_code == 404  # a resource of another dataset
    assert fake_update == []


def test_check_now_with_the_real_action(app, site):
    try:
        logic.get_action("archiver_update")
    except KeyError:
        pytest.skip("the archiver_update action is not written yet")
    dispatch.release([site.broken["id"]])  # queued when it was created
    login(app, site.editor)
    body = app.get("/dataset/clinics").get_data(as_text=True)
    try:
        for expected in ("Queued for checking",
                         "Already waiting in the queue for checking"):
            res = app.post("/dataset/clinics/archiver/check",
                           data={"_csrf_token": _csrf_token(body),
                                 "resource_id": site.broken["id"]})
            assert res.status_code == 200
            body = res.get_data(as_text=True)
            assert expected in body
        model.Session.expire_all()
        assert Archival.get_for_resource(site.broken["id"]).queued_at
    finally:
        dispatch.purge()


def test_trend_starts_at_first_check_and_says_what_it_counts(app, site):
    first = utcnow() - datetime.timedelta(days=10)
    model.Session.add(ArchivalHistory(
        resource_id=site.broken["id"], package_id=site.public["id"],
        checked_at=first, status_id=st.DOWNLOAD_ERROR, is_broken=True))
    model.Session.commit()
    body = app.get(REPORT).get_data(as_text=True)
    assert body.count('class="archiver-trend-point"') == 11  # 10 days ago to today
    caption = re.search(r"<figcaption[^>]*>(.*?)</figcaption>", body, re.S).group(1)
    assert first.date().isoformat() + " (the first check)" in caption
    assert "7 days" in caption
