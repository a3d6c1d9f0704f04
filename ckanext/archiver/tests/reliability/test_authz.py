"""Authorisation: every ``archiver_*`` action and every view of the
archiver's blueprints (``archiver``, ``archiver_extra``), tried by an
anonymous visitor, an editor of another organization, a member, an editor,
an organization admin and a sysadmin, on a private dataset.

Private data is never visible to anonymous visitors or outsiders (403/404,
and the private dataset's name, title, resource name and URL are absent
from report pages and exports, whatever the filters); a member can read;
only editors and up can ask for a check; only the organization's admins
switch its emails off; only sysadmins see the service's status and only the
bearer token opens the metrics; POST views need a CSRF token; no error page
or API error shows a stack trace or an internal path. A test fails when an
``archiver_*`` action or an archiver view appears that these tables do not
cover.
"""

from __future__ import annotations

import csv
import io
import json
import re
from urllib.parse import urlparse

import pytest
from ckan import logic, model
from ckan.common import config
from ckan.tests import factories

from ckanext.archiver import status as st
from ckanext.archiver.model import Archival
from ckanext.archiver.tests import factories as archiver_factories
from ckanext.archiver.tests.helpers import login
from ckanext.archiver.worker import dispatch

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("with_plugins", "own_broker")]

ROLES = ("anonymous", "outsider", "member", "editor", "admin", "sysadmin")
READERS = {"member", "editor", "admin", "sysadmin"}
EDITORS = {"editor", "admin", "sysadmin"}
ADMINS = {"admin", "sysadmin"}
SYSADMINS = {"sysadmin"}
REPORT = "/report/broken-links"
SECRET_URL = "http://secret.example.org/hidden-beds-list.xls"


class Site:
    """``health`` owns a public dataset (one broken resource) and a
    private one (one broken resource with a cached copy); the outsider is an
    editor of ``transport``."""

    def __init__(self, archive_dir):
        self.org_name = "health"
        self.users = {
            "outsider": factories.UserWithToken(),
            "member": factories.UserWithToken(),
            "editor": factories.UserWithToken(),
            "admin": factories.UserWithToken(),
            "sysadmin": factories.SysadminWithToken(),
            "anonymous": None,
        }
        self.org = factories.Organization(name=self.org_name, users=[
            {"name": self.users["member"]["name"], "capacity": "member"},
            {"name": self.users["editor"]["name"], "capacity": "editor"},
            {"name": self.users["admin"]["name"], "capacity": "admin"}])
        factories.Organization(name="transport", users=[
            {"name": self.users["outsider"]["name"], "capacity": "editor"}])
        self.public = factories.Dataset(owner_org=self.org["id"], name="clinics")
        self.public_res = factories.Resource(package_id=self.public["id"], name="Clinic list",
                                             format="CSV", url="http://example.com/c.csv")
        self.private = factories.Dataset(owner_org=self.org["id"], name="zz-secret-beds",
                                         title="Zz Secret Beds Title", private=True)
        self.private_res = factories.Resource(package_id=self.private["id"],
                                              name="Zz hidden resource", format="XLS",
                                              url=SECRET_URL)
        self.secrets = ("zz-secret-beds", "Zz Secret Beds Title", "Zz hidden resource",
                        SECRET_URL, "hidden-beds-list", self.private["id"],
                        self.private_res["id"])
        _archival(self.public_res, st.DOWNLOAD_ERROR, reason="Server returned 404 Not Found")
        folder = archive_dir / self.private_res["id"][:2] / self.private_res["id"]
        folder.mkdir(parents=True)
        (folder / "beds.xls").write_bytes(b"secret,beds\n")
        _archival(self.private_res, st.DOWNLOAD_ERROR, reason="Server returned 410 Gone",
                  cache_filepath=str(folder / "beds.xls"), mimetype="application/vnd.ms-excel",
                  sha256="f" * 64)
        self.archive_dir = archive_dir

    def headers(self, role):
        user = self.users[role]
        return {"Authorization": user["token"]} if user else {}

    def copy_url(self, dataset=None, resource=None, filename="beds.xls"):
        dataset = dataset or self.private
        resource = resource or self.private_res
        return f"/dataset/{dataset['name']}/resource/{resource['id']}/archive/{filename}"


def _archival(resource, status_id, **fields):
    model.Session.query(Archival).filter_by(resource_id=resource["id"]).delete()
    model.Session.commit()
    return archiver_factories.make_archival(resource, status_id, **fields)


@pytest.fixture(scope="module")
def site(reset_db, migrate_db_for, reset_storages, tmp_path_factory):
    """One clean database and one :class:`Site` for the module (cheaper than
    ``clean_db`` and a new site for every test); made with the plugins
    unloaded, so that creating it queues nothing."""
    import ckan.plugins

    ckan.plugins.load_all()
    try:
        reset_db()
        migrate_db_for("archiver")
    finally:
        ckan.plugins.unload_all()
    reset_storages()
    archive_dir = tmp_path_factory.mktemp("authz") / "archive"
    archive_dir.mkdir()
    made = Site(archive_dir)
    yield made
    model.Session.remove()


@pytest.fixture(autouse=True)
def site_archive_dir(request, ckan_config, monkeypatch):
    """The site's archive_dir for the test (own_broker's archiver_env sets
    a fresh one: put the site's back)."""
    if "site" in request.fixturenames:
        request.getfixturevalue("own_broker")
        site = request.getfixturevalue("site")
        monkeypatch.setitem(ckan_config, "ckanext.archiver.archive_dir", str(site.archive_dir))


LEAKS = ("Traceback", 'File "', "/work/", "sqlalchemy", "psycopg2", "site-packages")


def _no_leak(res, site):
    """No stack trace or internal path in an error page or API error. (A
    successful archiver_*_show carries ``cache_filepath`` for sysadmins
    only, or for all readers with ``show_cache_filepath``: see
    test_visibility.py.)"""
    body = res.get_data().decode("utf-8", "replace")
    if res.status_code >= 400 or '"success": false' in body:
        for text in (*LEAKS, str(site.archive_dir)):
            assert text not in body, (res.request.path, res.status_code, text)
    return body




@pytest.fixture(autouse=True)
def fresh_csrf_state():
    """CKAN exempts a view from CSRF checks for the rest of the process
    once an anonymous or API-token request reaches it (see
    test_check_now_csrf_survives_an_anonymous_request): start each test as
    a fresh process would, and put the state back afterwards."""
    from ckan.config.middleware.flask_app import csrf

    saved = set(csrf._exempt_views)
    csrf._exempt_views.difference_update(
        {v for v in saved if v.startswith("ckanext.archiver.")} | {"ckan.views.api.action"})
    yield
    csrf._exempt_views.clear()
    csrf._exempt_views.update(saved)


def _login(app, user):
    login(app, user)


def _logout(app):
    for domain in (urlparse(config["ckan.site_url"]).hostname, "localhost"):
        app.client.delete_cookie("ckan", domain=domain)


def _csrf(app, path="/dataset"):
    body = app.get(path).get_data(as_text=True)
    return re.search(r'<meta name="_csrf_token" content="([^"]+)"', body).group(1)


# -- inventory: nothing escapes this file's tables ---------------------------------

ACTIONS = {"archiver_resource_show": READERS, "archiver_dataset_show": READERS,
           "archiver_update": EDITORS, "archiver_package_request": READERS,
           "archiver_notify_optout": ADMINS, "archiver_status": SYSADMINS}
VIEWS = {"archiver.report_index", "archiver.report_org", "archiver.cached_copy",
         "archiver.check_now", "archiver_extra.package_zip", "archiver_extra.package_request",
         "archiver_extra.metrics"}


def test_every_action_and_view_is_covered(app):
    logic.get_action("package_show")  # fills the registry
    actions = {name for name in logic._actions if name.startswith("archiver_")}
    assert actions <= set(ACTIONS), "an archiver action has no authorisation test"
    endpoints = {rule.endpoint for rule in app.flask_app.url_map.iter_rules()
                 if rule.endpoint.split(".")[0] in ("archiver", "archiver_extra")}
    assert endpoints <= VIEWS, "an archiver view has no authorisation test"


def _needs(app, endpoint):
    if endpoint not in {r.endpoint for r in app.flask_app.url_map.iter_rules()}:
        pytest.skip(f"{endpoint} is not registered")


# -- actions --------------------------------------------------------------------

def _read_actions_follow_the_private_dataset(app, site):
    calls = {"archiver_resource_show": site.private_res["id"],
             "archiver_dataset_show": site.private["name"]}
    for action, ident in calls.items():
        for role in ROLES:
            res = app.get(f"/api/3/action/{action}", query_string={"id": ident},
                          headers=site.headers(role))
            body = _no_leak(res, site)
            if role in ACTIONS[action]:
                assert res.status_code == 200, (action, role)
                result = json.loads(body)["result"]
                assert result["status_id"] == st.DOWNLOAD_ERROR
            else:
                assert res.status_code in (403, 404), (action, role, res.status_code)
                for secret in site.secrets[1:5]:
                    assert secret not in body, (action, role, secret)
                assert "410 Gone" not in body


def _update_action_needs_edit_rights_and_post(app, site):
    for role in ROLES:
        res = app.post("/api/3/action/archiver_update", json={"id": site.private["id"]},
                       headers=site.headers(role))
        _no_leak(res, site)
        if role in EDITORS:
            assert res.status_code == 200, role
        else:
            assert res.status_code == 403, (role, res.status_code)
    assert dispatch.lengths()["priority"] == 1  # the editor's; the sysadmin's was a duplicate
    dispatch.purge()
    res = app.get("/api/3/action/archiver_update", query_string={"id": site.private["id"]},
                  headers=site.headers("editor"))
    assert res.status_code in (400, 405), res.status_code
    _no_leak(res, site)
    assert dispatch.lengths()["priority"] == 0


def _api_post_with_a_session_needs_csrf(app, site):
    """A logged-in browser (session cookie, no API token) cannot be made to
    call archiver_update by another site: without the CSRF token the POST is
    refused."""
    _login(app, site.users["editor"])
    res = app.post("/api/3/action/archiver_update", json={"id": site.private["id"]})
    assert res.status_code in (400, 403), res.status_code
    _no_leak(res, site)
    assert dispatch.lengths()["priority"] == 0
    _logout(app)


def _package_request_action(app, site):
    for role in ROLES:
        res = app.post("/api/3/action/archiver_package_request",
                       json={"id": site.private["id"]}, headers=site.headers(role))
        body = _no_leak(res, site)
        if role in READERS:
            assert res.status_code == 200, (role, res.status_code, body[:300])
        else:
            assert res.status_code in (403, 404), (role, res.status_code)
            for secret in site.secrets[1:5]:
                assert secret not in body, (role, secret)


def _notify_optout_action(app, site):
    for role in ROLES:
        res = app.post("/api/3/action/archiver_notify_optout", json={"id": site.org_name},
                       headers=site.headers(role))
        _no_leak(res, site)
        if role in ADMINS:
            assert res.status_code == 200, (role, res.status_code)
            assert json.loads(res.get_data(as_text=True))["result"]["opt_out"] is True
        else:
            assert res.status_code == 403, (role, res.status_code)


def _status_action(app, site):
    for role in ROLES:
        res = app.get("/api/3/action/archiver_status", query_string={"with_workers": "false"},
                      headers=site.headers(role))
        body = _no_leak(res, site)
        if role in SYSADMINS:
            assert res.status_code == 200, (role, res.status_code)
        else:
            assert res.status_code == 403, (role, res.status_code)
            assert "by_status" not in body


def _action_errors_do_not_leak(app, site):
    for action in set(ACTIONS) - {"archiver_status"}:  # (takes no id)
        for data in ({}, {"id": "no-such-thing"}, {"id": "x" * 5000}, {"id": ["a", "b"]},
                     {"id": "' OR 1=1 --"}, {"id": "../../../etc/passwd"}):
            res = app.post(f"/api/3/action/{action}", json=data,
                           headers=site.headers("sysadmin"))
            assert res.status_code in (400, 403, 404, 409), (action, data, res.status_code)
            body = _no_leak(res, site)
            assert json.loads(body)["success"] is False


# -- report pages and exports -------------------------------------------------

REPORT_VARIANTS = [  # "{org}": the site's organization
    ("index-html", REPORT, {}),
    ("index-csv", REPORT, {"format": "csv"}),
    ("index-json", REPORT, {"format": "json"}),
    ("org-html", REPORT + "/{org}", {}),
    ("org-csv", REPORT + "/{org}", {"format": "csv"}),
    ("org-json", REPORT + "/{org}", {"format": "json"}),
    ("org-by-status", REPORT + "/{org}", {"format": "json", "status": "12"}),
    ("org-by-format", REPORT + "/{org}", {"format": "csv", "res_format": "XLS"}),
    ("org-unsure", REPORT + "/{org}", {"status": "unsure"}),
    ("org-sorted", REPORT + "/{org}", {"sort": "-failure_count", "page": "1"}),
]


def _report_pages_hide_private_datasets(app, site):
    for name, path, args in REPORT_VARIANTS:
        path = path.format(org=site.org_name)
        for role in ROLES:
            res = app.get(path, query_string=args, headers=site.headers(role))
            assert res.status_code == 200, (name, role, res.status_code)
            body = _no_leak(res, site)
            if name.startswith("org") and role in READERS and name != "org-unsure":
                assert "zz-secret-beds" in body or "Zz hidden resource" in body, (name, role)
            elif role not in READERS:
                for secret in site.secrets:
                    assert secret not in body, (name, role, secret)
            if name == "index-json":
                health = next(r for r in json.loads(body)["rows"]
                              if r["organization"] == site.org_name)
                assert health["datasets"] == (2 if role in READERS else 1), role
            if name == "org-csv" and role not in READERS:
                rows = list(csv.DictReader(io.StringIO(body)))
                assert [r["dataset"] for r in rows] == [site.public["name"]], role


def _report_errors_do_not_leak(app, site):
    org = f"{REPORT}/{site.org_name}"
    for path, args in [(f"{REPORT}/no-such-org", {}), (f"{REPORT}/no-such-org",
                                                        {"format": "csv"}),
                       (REPORT, {"format": "xml"}), (org, {"page": "x" * 3000}),
                       (org, {"status": "-99999999999999999999"}),
                       (org, {"sort": "1;DROP TABLE archival"}),
                       (f"{REPORT}/{site.private['id']}", {})]:
        res = app.get(path, query_string=args)
        assert res.status_code in (200, 400, 404), (path, args, res.status_code)
        _no_leak(res, site)
    assert model.Session.query(Archival).filter(Archival.resource_id.in_(
        [site.public_res["id"], site.private_res["id"]])).count() == 2


# -- cached copies ----------------------------------------------------------------

def _cached_copy_of_private_dataset(app, site):
    for role in ROLES:
        res = app.get(site.copy_url(), headers=site.headers(role))
        if role in READERS:
            assert res.status_code == 200, role
            assert res.get_data() == b"secret,beds\n"
            assert "public" not in res.headers.get("Cache-Control", "")
        else:
            assert res.status_code in (403, 404), (role, res.status_code)
            body = _no_leak(res, site)
            assert "secret,beds" not in body


def _cached_copy_tricks(app, site):
    """Right resource under the wrong dataset, wrong or traversing file
    names, ids of other things: all 404, for everybody, no content."""
    tricks = [
        site.copy_url(dataset=site.public),  # private resource under a public dataset
        site.copy_url(filename="other.xls"),
        site.copy_url(filename="..%2F..%2F..%2Fetc%2Fpasswd"),
        site.copy_url(filename="%2E%2E"),
        site.copy_url(resource=site.public_res),  # no cached copy there
        f"/dataset/{site.public['name']}/resource/{site.private['id']}/archive/beds.xls",
        f"/dataset/{site.public['name']}/resource/no-such-resource/archive/beds.xls",
    ]
    for url in tricks:
        for role in ("anonymous", "outsider", "sysadmin"):
            res = app.get(url, headers=site.headers(role))
            assert res.status_code in (403, 404), (url, role, res.status_code)
            body = _no_leak(res, site)
            assert "secret,beds" not in body


# -- check now --------------------------------------------------------------------

def _check_now_needs_edit_rights(app, site):
    url = f"/dataset/{site.private['name']}/archiver/check"
    for role in ROLES:
        _logout(app)
        if site.users[role]:
            _login(app, site.users[role])
        token = _csrf(app)
        res = app.post(url, data={"_csrf_token": token,
                                  "resource_id": site.private_res["id"]},
                       follow_redirects=False)
        body = _no_leak(res, site)
        if role in EDITORS:
            assert res.status_code == 302, (role, res.status_code)
        else:
            assert res.status_code in (403, 404), (role, res.status_code)
            for secret in site.secrets[1:5]:
                assert secret not in body, (role, secret)
        expected = 1 if role in EDITORS else 0
        assert dispatch.lengths()["priority"] == expected, role
        dispatch.purge()


def _check_now_needs_csrf(app, site):
    url = f"/dataset/{site.private['name']}/archiver/check"
    _login(app, site.users["editor"])
    for data in ({}, {"_csrf_token": "forged"}, {"_csrf_token": ""}):
        res = app.post(url, data=data, follow_redirects=False)
        assert res.status_code == 400, (data, res.status_code)
        _no_leak(res, site)
    res = app.get(url)  # not a form target for GET
    assert res.status_code in (404, 405)
    _no_leak(res, site)
    assert dispatch.lengths()["priority"] == 0
    token = _csrf(app)
    res = app.post(url, data={"_csrf_token": token}, follow_redirects=False)
    assert res.status_code == 302
    assert dispatch.lengths()["priority"] == 1


# -- archiver_extra: dataset zip and metrics ------------------------------------

def _package_zip_of_private_dataset(app, site):
    _needs(app, "archiver_extra.package_zip")
    for role in ROLES:
        res = app.get(f"/dataset/{site.private['name']}/archive.zip",
                      headers=site.headers(role))
        body = _no_leak(res, site)
        if role in READERS:
            assert res.status_code == 200, (role, res.status_code)
            assert res.get_data()[:2] == b"PK"
            assert "public" not in res.headers.get("Cache-Control", "")
        else:
            assert res.status_code in (403, 404), (role, res.status_code)
            for secret in ("secret,beds", *site.secrets[1:5]):
                assert secret not in body, (role, secret)


def _package_request_view(app, site):
    _needs(app, "archiver_extra.package_request")
    url = f"/dataset/{site.private['name']}/archive.zip/request"
    _login(app, site.users["member"])
    res = app.post(url, data={}, follow_redirects=False)
    assert res.status_code == 400  # no CSRF token
    _no_leak(res, site)
    for role in ROLES:
        _logout(app)
        if site.users[role]:
            _login(app, site.users[role])
        res = app.post(url, data={"_csrf_token": _csrf(app)}, follow_redirects=False)
        body = _no_leak(res, site)
        if role in READERS:
            assert res.status_code == 302, (role, res.status_code)
        else:
            assert res.status_code in (403, 404), (role, res.status_code)
            for secret in site.secrets[1:5]:
                assert secret not in body, (role, secret)


def _metrics_need_the_bearer_token(app, site, ckan_config, monkeypatch):
    _needs(app, "archiver_extra.metrics")
    for role in ROLES:
        assert app.get("/archiver/metrics", headers=site.headers(role)).status_code == 404
    monkeypatch.setitem(ckan_config, "ckanext.archiver.metrics_enabled", True)
    monkeypatch.setitem(ckan_config, "ckanext.archiver.metrics_token", "s3cret-metrics")
    for role in ROLES:  # a CKAN login or API token is not the metrics token
        res = app.get("/archiver/metrics", headers=site.headers(role))
        assert res.status_code == 403, role
        _no_leak(res, site)
    for wrong in ("Bearer wrong", "Bearer ", "s3cret-metrics", "Basic s3cret-metrics",
                  "Bearer s3cret-metrics-and-more"):
        res = app.get("/archiver/metrics", headers={"Authorization": wrong})
        assert res.status_code == 403, wrong
    res = app.get("/archiver/metrics", headers={"Authorization": "Bearer s3cret-metrics"})
    assert res.status_code == 200
    body = res.get_data(as_text=True)
    for secret in site.secrets:
        assert secret not in body


def test_check_now_csrf_survives_an_anonymous_request(app, site):
    url = f"/dataset/{site.private['name']}/archiver/check"
    anonymous = app.post(url, data={}, follow_redirects=False)
    assert anonymous.status_code in (400, 403)
    _login(app, site.users["editor"])
    res = app.post(url, data={}, follow_redirects=False)
    assert dispatch.lengths()["priority"] == 0
    assert res.status_code == 400


# -- the tests (grouped: one site each) -------------------------------------------

def test_actions(app, site):
    _api_post_with_a_session_needs_csrf(app, site)  # first: before any token request
    _read_actions_follow_the_private_dataset(app, site)
    _update_action_needs_edit_rights_and_post(app, site)
    _package_request_action(app, site)
    _notify_optout_action(app, site)
    _status_action(app, site)
    _action_errors_do_not_leak(app, site)


def test_report_pages_and_exports(app, site):
    _report_pages_hide_private_datasets(app, site)
    _report_errors_do_not_leak(app, site)


def test_cached_copies(app, site):
    _cached_copy_of_private_dataset(app, site)
    _cached_copy_tricks(app, site)


def test_check_now(app, site):
    _check_now_needs_csrf(app, site)  # first: before any anonymous request to it
    dispatch.purge()
    _check_now_needs_edit_rights(app, site)


def test_dataset_zip(app, site):
    _package_zip_of_private_dataset(app, site)
    _package_request_view(app, site)


def test_metrics(app, site, ckan_config, monkeypatch):
    _metrics_need_the_bearer_token(app, site, ckan_config, monkeypatch)


def test_metrics_scrape_logs_no_error(app, ckan_config, monkeypatch, caplog):
    """The token in a header of its own: CKAN does not try it as an API
    token, so a scrape logs nothing (a Bearer token in Authorization would
    log 'Cannot decode JWT token' every time)."""
    _needs(app, "archiver_extra.metrics")
    monkeypatch.setitem(ckan_config, "ckanext.archiver.metrics_enabled", True)
    monkeypatch.setitem(ckan_config, "ckanext.archiver.metrics_token", "s3cret-metrics")
    with caplog.at_level("ERROR"):
        res = app.get("/archiver/metrics",
                      headers={"X-Archiver-Metrics-Token": "s3cret-metrics"})
    assert res.status_code == 200
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
    with caplog.at_level("ERROR"):
        app.get("/archiver/metrics", headers={"Authorization": "Bearer s3cret-metrics"})
    assert any("JWT" in r.getMessage() for r in caplog.records), (
        "the Bearer form still works but CKAN logs it: why the README shows the header")
