"""Dataset packages: the zip and its manifest, rebuilds, the download view
and its permissions, requests by email through a real Celery worker, the
``package-archived`` reaction and ``ckan archiver package``."""

from __future__ import annotations

import contextlib
import email
import hashlib
import io
import json
import os
import re
import tempfile
import zipfile

import ckan.plugins.toolkit as tk
import pytest
from ckan import model
from ckan.cli.cli import ckan
from ckan.tests import factories
from ckan.tests.helpers import call_action

from ckanext.archiver import config, interfaces, keys
from ckanext.archiver import status as st
from ckanext.archiver.engine import zipper
from ckanext.archiver.model import Archival
from ckanext.archiver.tests.factories import make_archival
from ckanext.archiver.tests.helpers import login, wait_for
from ckanext.archiver.worker import batch, dispatch, services, tasks, zips

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db", "archiver_env")

DEAD = "http://127.0.0.1:9/"  # never fetched (nothing is queued), and refused if it were


@pytest.fixture(autouse=True)
def no_auto_queue(monkeypatch):
    """Creating resources queues nothing: these tests write the archival
    rows themselves."""
    monkeypatch.setattr(dispatch, "needing_check", lambda package_id: [])


def archive_file(resource, content: bytes, filename="data.csv", status_id=st.ARCHIVED,
                 **fields):
    """Keep ``content`` as the archived file of ``resource`` (as a worker
    would) and write its row."""
    store = services.storage()
    fd, tmp = tempfile.mkstemp(dir=store.tmp_dir())
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    path = store.store(resource["id"], tmp, filename)
    values = dict(cache_filepath=path, size=len(content), mimetype="text/csv",
                  sha256=hashlib.sha256(content).hexdigest())
    values.update(fields)
    return make_archival(resource, status_id, **values)


@pytest.fixture
def dataset():
    org = factories.Organization()
    pkg = factories.Dataset(owner_org=org["id"], name="rivers", title="Rivers", resources=[
        {"name": "Flows", "url": DEAD + "flows.csv", "format": "CSV"},
        {"name": "Gauges", "url": DEAD + "gauges.csv", "format": "CSV"},
        {"name": "Gone", "url": DEAD + "gone.csv", "format": "CSV"},
    ])
    flows, gauges, gone = pkg["resources"]
    archive_file(flows, b"day,flow\n1,20\n", "flows.csv")
    archive_file(gauges, b"id,name\n7,Weir\n", "data.csv")
    make_archival(gone, st.DOWNLOAD_ERROR, reason="Server returned 404 Not Found")
    pkg["org"] = org
    return pkg


def _zip(path_or_bytes):
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else open(path_or_bytes, "rb").read()
    return zipfile.ZipFile(io.BytesIO(data))


def test_zip_holds_files_and_manifest(dataset, archive_dir):
    result = zips.build(dataset["id"])
    assert result.built
    path = result.package.path
    assert path == str(archive_dir / "packages" / dataset["id"] / "rivers.zip")
    zf = _zip(path)
    assert zf.testzip() is None
    assert sorted(zf.namelist()) == ["data/data.csv", "data/flows.csv", "datapackage.json"]
    assert zf.read("data/flows.csv") == b"day,flow\n1,20\n"
    manifest = json.loads(zf.read("datapackage.json"))
    assert (manifest["name"], manifest["id"], manifest["title"]) == (
        "rivers", dataset["id"], "Rivers")
    flows, gauges, gone = manifest["resources"]
    assert flows["path"] == "data/flows.csv" and flows["url"] == DEAD + "flows.csv"
    assert flows["bytes"] == 14
    assert flows["hash"] == "sha256:" + hashlib.sha256(b"day,flow\n1,20\n").hexdigest()
    assert flows["archiver"]["status"] == "Archived successfully"
    assert flows["archiver"]["included"] and flows["archiver"]["archived_at"]
    assert gauges["path"] == "data/data.csv" and gauges["title"] == "Gauges"
    assert gone["archiver"]["included"] is False and gone["path"] == DEAD + "gone.csv"
    assert gone["archiver"]["is_broken"] is True and "404" in gone["archiver"]["reason"]
    assert "hash" not in gone
    # beside the zip: what it was built from
    meta = json.loads((archive_dir / "packages" / dataset["id"] / "package.json").read_text())
    assert meta["fingerprint"] == result.package.fingerprint and meta["members"] == 2
    assert not list((archive_dir / ".tmp").glob("package-*"))  # temp file moved into place


def test_rebuilt_only_when_a_file_changes(dataset):
    first = zips.build(dataset["id"]).package
    stat = os.stat(first.path)
    # a routine re-check: same file, new status and times
    flows = dataset["resources"][0]
    make_archival(flows, st.UNCHANGED,
                  cache_filepath=Archival.get_for_resource(flows["id"]).cache_filepath,
                  size=14, sha256=hashlib.sha256(b"day,flow\n1,20\n").hexdigest())
    again = zips.build(dataset["id"])
    assert not again.built
    assert os.stat(first.path).st_mtime_ns == stat.st_mtime_ns
    assert os.stat(first.path).st_ino == stat.st_ino
    # the file changes: rebuilt
    archive_file(flows, b"day,flow\n1,21\n", "flows.csv")
    changed = zips.build(dataset["id"])
    assert changed.built and changed.package.fingerprint != first.fingerprint
    assert _zip(changed.package.path).read("data/flows.csv") == b"day,flow\n1,21\n"
    # a link breaking changes the manifest: rebuilt too
    make_archival(dataset["resources"][1], st.URL_INVALID,
                  cache_filepath=Archival.get_for_resource(
                      dataset["resources"][1]["id"]).cache_filepath)
    assert zips.build(dataset["id"]).built


def test_files_outside_their_place_are_left_out(dataset, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    flows, gauges, _gone = dataset["resources"]
    make_archival(flows, st.ARCHIVED, cache_filepath=str(outside), size=9)
    other_folder = Archival.get_for_resource(gauges["id"]).cache_filepath
    extra = factories.Resource(package_id=dataset["id"], url=DEAD + "x.csv")
    make_archival(extra, st.ARCHIVED, cache_filepath=other_folder, size=15)  # not its folder
    names = _zip(zips.build(dataset["id"]).package.path).namelist()
    assert sorted(names) == ["data/data.csv", "datapackage.json"]
    with pytest.raises(ValueError):
        zipper.package_dir(services.storage(), "../../etc")


def test_nothing_to_package(archive_dir):
    pkg = factories.Dataset(resources=[{"url": DEAD + "a.csv"}])
    with pytest.raises(zips.NothingToPackage):
        zips.build(pkg["id"])
    assert not list(archive_dir.glob("packages/*/*.zip"))


def test_uploaded_files_are_included(ckan_config, tmp_path, monkeypatch):
    monkeypatch.setitem(ckan_config, "ckan.storage_path", str(tmp_path / "storage"))
    pkg = factories.Dataset(resources=[{"url": "table.csv", "url_type": "upload"}])
    (res,) = pkg["resources"]
    from ckan.lib import uploader

    path = uploader.get_resource_uploader(res).get_path(res["id"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"a,b\n")
    batch.archive_batch([res["id"]])  # reads the upload where CKAN keeps it
    zf = _zip(zips.build(pkg["id"]).package.path)
    assert zf.read("data/table.csv") == b"a,b\n"
    (entry,) = json.loads(zf.read("datapackage.json"))["resources"]
    assert entry["url"] == (f"http://test.ckan.net/dataset/{pkg['id']}/resource/{res['id']}"
                            "/download/table.csv")


def test_build_failure_is_mailed(mail_server):
    user = factories.User(email="reader@example.org")
    pkg = factories.Dataset(title="Empty", resources=[{"url": DEAD + "a.csv"}])
    assert tasks.build_package(pkg["id"], user_id=user["id"]) is None  # run here
    ((_, _sender, to, message),) = mail_server.get_smtp_messages()
    assert to == ["reader@example.org"]
    assert "could not be prepared" in email.message_from_string(message)["Subject"]
    assert "no archived files" in _mail_text(message)


# -- the download view ---------------------------------------------------------

def test_download_with_etag_and_range(app, dataset):
    res = app.get("/dataset/rivers/archive.zip")
    assert res.status_code == 200
    assert res.headers["Content-Type"] == "application/zip"
    assert 'filename="rivers.zip"' in res.headers["Content-Disposition"]
    assert sorted(_zip(res.data).namelist())[0] == "data/data.csv"
    etag = res.headers["ETag"]
    assert zips.built_zip(dataset["id"]).fingerprint in etag
    assert app.get("/dataset/rivers/archive.zip",
                   headers={"If-None-Match": etag}).status_code == 304
    part = app.get("/dataset/rivers/archive.zip", headers={"Range": "bytes=0-3"})
    assert part.status_code == 206 and part.data == b"PK\x03\x04"
    empty = factories.Dataset(resources=[{"url": DEAD + "a.csv"}])
    assert app.get(f"/dataset/{empty['name']}/archive.zip").status_code == 404
    assert app.get("/dataset/no-such-dataset/archive.zip").status_code == 404


def test_private_dataset_needs_read_permission(app, dataset):
    member, outsider = factories.User(), factories.User()
    org = factories.Organization(users=[{"name": member["name"], "capacity": "member"}])
    private = factories.Dataset(owner_org=org["id"], private=True, resources=[
        {"url": DEAD + "secret.csv"}])
    archive_file(private["resources"][0], b"secret\n")
    url = f"/dataset/{private['name']}/archive.zip"
    assert app.get(url).status_code in (403, 404)
    login(app, outsider)
    assert app.get(url).status_code in (403, 404)
    assert zips.built_zip(private["id"]) is None  # nothing built for them
    login(app, member)
    res = app.get(url)
    assert res.status_code == 200 and "no-cache" in res.headers.get("Cache-Control", "")
    assert _zip(res.data).read("data/data.csv") == b"secret\n"


def test_serve_with_x_accel_redirect(app, dataset, ckan_config, monkeypatch):
    monkeypatch.setitem(ckan_config, "ckanext.archiver.serve_with", "x-accel-redirect")
    res = app.get("/dataset/rivers/archive.zip")
    assert res.status_code == 200 and res.data == b""
    assert res.headers["X-Accel-Redirect"] == (
        f"/_archiver_files/packages/{dataset['id']}/rivers.zip")


# -- large datasets: request by email, background builds -------------------------

def as_user(name):
    """A context whose auth is checked (call_action ignores auth by default)."""
    return {"user": name, "ignore_auth": False}


def _mail_text(message: str) -> str:
    msg = email.message_from_string(message)
    parts = msg.walk() if msg.is_multipart() else [msg]
    return "\n".join(p.get_payload(decode=True).decode("utf-8") for p in parts
                     if p.get_content_type() == "text/plain")


@contextlib.contextmanager
def package_archived_listener():
    """Connect the listener the plugin registers (ISignal), for this test."""
    signal = interfaces.signal("package-archived")
    connected = id(zips.on_package_archived) in signal.receivers
    if not connected:
        signal.connect(zips.on_package_archived)
    try:
        yield
    finally:
        if not connected:
            signal.disconnect(zips.on_package_archived)


def test_large_dataset_mailed_when_built(app, dataset, ckan_config, monkeypatch,
                                         mail_server, celery_worker):
    monkeypatch.setitem(ckan_config, "ckanext.archiver.package_sync_max_bytes", 10)
    res = app.get("/dataset/rivers/archive.zip")
    assert res.status_code == 404 and "Log in" in res.get_data(as_text=True)
    assert zips.built_zip(dataset["id"]) is None  # nothing built while waiting

    user = factories.User(email="reader@example.org")
    login(app, user)
    page = app.get("/dataset/rivers/archive.zip").get_data(as_text=True)
    assert "Email me a link" in page
    nobody = factories.User()
    model.User.get(nobody["id"]).email = ""  # older accounts may have none
    model.Session.commit()
    for name in (nobody["name"], ""):
        with pytest.raises(tk.NotAuthorized):
            call_action("archiver_package_request", as_user(name), id="rivers")

    token = re.search(r'name="_csrf_token" value="([^"]+)"', page).group(1)
    res = app.post("/dataset/rivers/archive.zip/request", data={"_csrf_token": token})
    assert res.status_code == 200  # back on the dataset page
    assert "we will email you a link" in res.get_data(as_text=True)
    again = call_action("archiver_package_request", as_user(user["name"]), id="rivers")
    assert again["queued"] is False  # asked a moment ago

    messages = wait_for(mail_server.get_smtp_messages, timeout=20)
    (_, _sender, to, message) = messages[0]
    assert to == ["reader@example.org"]
    text = _mail_text(message)
    assert "http://test.ckan.net/dataset/rivers/archive.zip" in text
    assert "2 files" in text
    built = zips.built_zip(dataset["id"])
    assert built is not None and built.members == 2
    # large but built: the zip is served
    assert app.get("/dataset/rivers/archive.zip").status_code == 200


def test_package_archived_builds_in_background(dataset, ckan_config, monkeypatch,
                                               celery_worker):
    with package_archived_listener():
        interfaces.notify("package-archived", "bulk", package_id=dataset["id"])  # option off
        monkeypatch.setitem(ckan_config, "ckanext.archiver.package_on_archived", True)
        options = config.current()
        assert keys.client(options).get(keys.package_pending(options, dataset["id"])) is None
        interfaces.notify("package-archived", "bulk", package_id=dataset["id"])
        built = wait_for(lambda: zips.built_zip(dataset["id"]), timeout=20)
    assert built.members == 2
    zip_stat = os.stat(built.path)
    # the pending mark is dropped when the build starts
    options = config.current()
    wait_for(lambda: keys.client(options).get(keys.package_pending(options, dataset["id"])) is None)
    assert os.stat(built.path).st_mtime_ns == zip_stat.st_mtime_ns


def test_cli_package(cli, make_ini, dataset, archive_dir):
    ini = make_ini()
    first = cli.invoke(ckan, ["-c", ini, "archiver", "package", "rivers"])
    assert first.exit_code == 0, first.output
    assert "rivers: built" in first.output and "(2 files," in first.output
    second = cli.invoke(ckan, ["-c", ini, "archiver", "package", "rivers"])
    assert "rivers: up to date" in second.output
    missing = cli.invoke(ckan, ["-c", ini, "archiver", "package", "nope"])
    assert missing.exit_code == 1
    call_action("package_delete", {"ignore_auth": True, "user": ""}, id="rivers")
    clean = cli.invoke(ckan, ["-c", ini, "archiver", "package", "--clean"])
    assert "Removed 1 packages" in clean.output
    assert not (archive_dir / "packages" / dataset["id"]).exists()


def test_write_zip_streams_members(tmp_path):
    """The standard-library core (used by the benchmark): ZIP64 headers,
    hashes of what was read, stored or deflated by format."""
    src = tmp_path / "big.csv"
    src.write_bytes(b"a,b\n" * 300_000)
    png = tmp_path / "x.png"
    png.write_bytes(os.urandom(1000))
    members = [zipper.Member("r1", str(src), "data/big.csv", src.stat().st_size),
               zipper.Member("r2", str(png), "data/x.png", 1000)]
    dest = tmp_path / "out.zip"
    hashes = zipper.write_zip(members, lambda h: json.dumps(h).encode(), str(tmp_path),
                                str(dest), compresslevel=1)
    zf = zipfile.ZipFile(dest)
    assert json.loads(zf.read("datapackage.json")) == hashes
    assert hashes["r1"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert zf.getinfo("data/big.csv").compress_type == zipfile.ZIP_DEFLATED
    assert zf.getinfo("data/x.png").compress_type == zipfile.ZIP_STORED
    assert zf.read("data/big.csv") == src.read_bytes()


# -- findings of issue 12 ------------------------------------------------------

def test_manifest_path_is_a_member_or_a_web_url(archive_dir):
    pkg = factories.Dataset(resources=[
        {"name": "kept", "url": "/etc/kept.csv"},
        {"name": "traversal", "url": "../../../../home/victim/.ssh/authorized_keys"},
        {"name": "absolute", "url": "/etc/passwd"},
        {"name": "file", "url": "file:///etc/shadow"},
        {"name": "web", "url": DEAD + "web.csv"},
    ])
    kept, *others = pkg["resources"]
    archive_file(kept, b"a\n", "kept.csv")
    for res in others:
        make_archival(res, st.DOWNLOAD_ERROR)
    manifest = json.loads(_zip(zips.build(pkg["id"]).package.path).read("datapackage.json"))
    entries = {e["title"]: e for e in manifest["resources"]}
    assert entries["kept"]["path"] == "data/kept.csv" and "url" not in entries["kept"]
    assert entries["web"]["path"] == entries["web"]["url"] == DEAD + "web.csv"
    for name in ("traversal", "absolute", "file"):
        assert "path" not in entries[name] and "url" not in entries[name]
        assert entries[name]["archiver"]["note"] == (
            "The link is not an http(s) URL: it is left out of this manifest")
    for entry in manifest["resources"]:
        path = entry.get("path", "data/")
        assert path.startswith(("data/", "http://", "https://")) and ".." not in path


def test_mail_failure_leaves_the_zip_built(dataset, ckan_config, monkeypatch, caplog):
    """smtp.mail_from unset: CKAN's mailer raises AttributeError, not
    MailerException."""
    monkeypatch.setitem(ckan_config, "smtp.mail_from", None)
    user = factories.User(email="reader@example.org")
    size = tasks.build_package(dataset["id"], user_id=user["id"])
    assert size and size == os.path.getsize(zips.build(dataset["id"]).package.path)
    lines = [r.getMessage() for r in caplog.records if "Could not mail" in r.getMessage()]
    assert lines == [f"Could not mail {user['name']} about the package of rivers: "
                     "smtp.mail_from is not set"]
