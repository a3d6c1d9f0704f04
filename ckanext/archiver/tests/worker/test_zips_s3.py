"""Dataset zips in S3 mode, against the session's real SeaweedFS: built
into the bucket (streamed, nothing on the disk), served by a 302 to a
presigned GET after the read-permission check, replaced on a rebuild, left
behind by no failed build, swept by ``clean-cached`` and copied by
``migrate-storage``."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import urllib.parse
import urllib.request
import zipfile

import pytest
from ckan import model
from ckan.tests import factories

from ckanext.archiver.engine import zipper_s3
from ckanext.archiver.engine.s3_upload import S3Upload
from ckanext.archiver.engine.sink import StoreError
from ckanext.archiver.model import Archival
from ckanext.archiver.tests.helpers import login
from ckanext.archiver.tests.http_fixtures import serve_bytes
from ckanext.archiver.worker import zips
from ckanext.archiver.worker.batch import archive_batch

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db", "s3_env")

MiB = 1024 * 1024


def _row(resource_id):
    model.Session.expire_all()
    return Archival.get_for_resource(resource_id)


def _zip_objects(store):
    return sorted(k for k, _, _ in store.objects("packages/"))


def _local_files(archive_dir):
    return [p for p in archive_dir.rglob("*") if p.is_file()]


@pytest.fixture
def archived(raw_server):
    """A dataset whose two resources are archived into the bucket."""

    def make(bodies, on_disk=False, **dataset):
        pkg = factories.Dataset(resources=[
            {"url": raw_server.route(f"/{name}", serve_bytes(body))}
            for name, body in bodies.items()], **dataset)
        archive_batch([r["id"] for r in pkg["resources"]])
        assert all(_row(r["id"]).cache_filepath.startswith("/") == on_disk
                   for r in pkg["resources"])
        return pkg

    return make


BODIES = {"one.csv": b"a,b\n" * 50000, "two.json": b'{"x": 1}'}


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None  # every member's CRC checks out
        return {n: zf.read(n) for n in zf.namelist()}


def test_zip_is_built_into_the_bucket(archived, s3_env, archive_dir):
    pkg = archived(BODIES, name="rivers")

    result = zips.build(pkg["id"])

    built = result.package
    assert result.built and built.key is not None and built.consistent
    assert built.key.startswith(f"packages/{pkg['id']}/") and built.key.endswith("/rivers.zip")
    assert _zip_objects(s3_env) == sorted([built.key, f"packages/{pkg['id']}/package.json"])
    assert not _local_files(archive_dir)  # no local packages file (nor a lock)
    assert list(s3_env.unfinished_uploads()) == []
    members = _members(s3_env.open(built.key).read())
    assert {n: b for n, b in members.items() if n.startswith("data/")} == {
        f"data/{name}": body for name, body in BODIES.items()}
    manifest = json.loads(members["datapackage.json"])
    assert [r["hash"] for r in manifest["resources"]] == [
        "sha256:" + hashlib.sha256(b).hexdigest() for b in BODIES.values()]
    assert built.size == s3_env.head(built.key)["size"]
    again = zips.build(pkg["id"])  # same members: nothing written
    assert again.built is False and again.package.key == built.key


def test_route_redirects_readers_to_a_presigned_zip(app, archived):
    member, outsider = factories.User(), factories.User()
    org = factories.Organization(users=[{"name": member["name"], "capacity": "member"}])
    pkg = archived(BODIES, name="secret-rivers", owner_org=org["id"], private=True)
    url = f"/dataset/{pkg['name']}/archive.zip"

    for who in (None, outsider):
        login(app, who)
        res = app.get(url, follow_redirects=False)
        assert res.status_code in (403, 404) and "Location" not in res.headers
    assert zips.built_zip(pkg["id"]) is None  # nothing built for them

    login(app, member)
    res = app.get(url, follow_redirects=False)
    assert res.status_code == 302 and "no-store" in res.headers["Cache-Control"]
    location = res.headers["Location"]
    assert "X-Amz-Signature=" in location and "X-Amz-Expires=300" in location
    with urllib.request.urlopen(location, timeout=10) as r:  # no credentials
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/zip"
        assert 'filename="secret-rivers.zip"' in r.headers["Content-Disposition"]
        members = _members(r.read())
    assert {n: b for n, b in members.items() if n.startswith("data/")} == {
        f"data/{name}": body for name, body in BODIES.items()}
    # the second request serves the zip built by the first
    key = zips.built_zip(pkg["id"]).key
    again = app.get(url, follow_redirects=False)
    assert again.status_code == 302 and key in urllib.parse.unquote(again.headers["Location"])


def test_rebuild_replaces_the_object_and_removes_the_old_one(archived, raw_server, s3_env):
    pkg = archived(BODIES)
    first = zips.build(pkg["id"]).package
    res = pkg["resources"][1]
    model.Session.query(Archival).filter_by(resource_id=res["id"]).update(
        {"sha256": "0" * 64})  # as if a new copy was archived: a new fingerprint
    model.Session.commit()

    second = zips.build(pkg["id"])

    assert second.built and second.package.key != first.key
    assert s3_env.head(first.key) is None
    assert _zip_objects(s3_env) == sorted([second.package.key,
                                          f"packages/{pkg['id']}/package.json"])
    assert zips.built_zip(pkg["id"]).key == second.package.key


def test_a_failed_build_leaves_nothing_and_keeps_the_old_zip(archived, s3_env, ckan_config,
                                                             monkeypatch):
    monkeypatch.setitem(ckan_config, "ckanext.archiver.max_content_length", 50 * MiB)
    monkeypatch.setitem(ckan_config, "ckanext.archiver.s3_part_size", 5 * MiB)
    big = random.Random(3).randbytes(6 * MiB)  # more than a part: a multipart upload
    pkg = archived({"big.bin": big, "small.csv": b"a\n"})
    before = zips.build(pkg["id"]).package
    small = _row(pkg["resources"][1]["id"])
    s3_env.delete(small.cache_filepath)  # the second member cannot be read
    model.Session.query(Archival).filter_by(resource_id=small.resource_id).update(
        {"sha256": "1" * 64})
    model.Session.commit()

    sent = []
    real = S3Upload._send_part
    monkeypatch.setattr(S3Upload, "_send_part",
                        lambda self, body: (sent.append(self.key), real(self, body))[1])
    with pytest.raises(StoreError):
        zips.build(pkg["id"])

    assert sent and sent[0].startswith(f"packages/{pkg['id']}/")  # a part went, then:
    assert _zip_objects(s3_env) == sorted([before.key, f"packages/{pkg['id']}/package.json"])
    assert list(s3_env.unfinished_uploads()) == []  # the part sent was aborted
    assert zips.built_zip(pkg["id"]).key == before.key


def test_clean_cached_sweeps_zips(archived, s3_env, s3_cli):
    kept = archived(BODIES)
    gone = archived({"g.csv": b"g\n"})
    kept_zip = zips.build(kept["id"]).package
    zips.build(gone["id"])
    stray, _ = zipper_s3.copy_in(s3_env, kept["id"], "old.zip", io.BytesIO(b"12345"))
    model.Session.query(model.Package).filter_by(id=gone["id"]).update({"state": "deleted"})
    model.Session.commit()

    dry = s3_cli("clean-cached", "--dry-run")
    # the deleted dataset's archived file, its zip and the zip's record
    assert "Would remove 3 files" in dry.output, dry.output
    assert len(_zip_objects(s3_env)) == 5
    assert "Removed 3 files" in s3_cli("clean-cached").output
    assert _zip_objects(s3_env) == sorted([kept_zip.key, stray,
                                          f"packages/{kept['id']}/package.json"])
    # the stray zip no record names: swept once older than a build's upload
    assert zipper_s3.clean(s3_env, zips.active_ids, min_age=0) == (1, 5)
    assert _zip_objects(s3_env) == sorted([kept_zip.key, f"packages/{kept['id']}/package.json"])


def test_migrate_storage_copies_local_zips(archived, s3_env, s3_cli, archive_dir, ckan_config,
                                          monkeypatch):
    monkeypatch.setitem(ckan_config, "ckanext.archiver.storage_backend", "local")
    pkg = archived(BODIES, name="lakes", on_disk=True)
    local = zips.build(pkg["id"]).package  # built on a host's disk before the move
    assert local.key is None and os.path.isfile(local.path)
    monkeypatch.setitem(ckan_config, "ckanext.archiver.storage_backend", "s3")
    with open(local.path, "rb") as f:
        local_bytes = f.read()

    assert "Would copy 1 dataset zip" in s3_cli("migrate-storage", "--dry-run").output
    assert _zip_objects(s3_env) == []
    out = s3_cli("migrate-storage", "--remove-local").output
    assert "Copied 1 dataset zip (0 already in the store)" in out, out

    moved = zips.built_zip(pkg["id"])
    assert moved.key is not None and moved.fingerprint == local.fingerprint and moved.consistent
    assert s3_env.open(moved.key).read() == local_bytes
    assert not os.path.exists(os.path.dirname(local.path))
    assert zips.build(pkg["id"]).built is False  # still up to date: not rebuilt
    assert "Copied 0 dataset zips" in s3_cli("migrate-storage").output


def test_one_build_at_a_time_across_hosts(archived, s3_env):
    """Two builders of the same dataset (as on two hosts: no shared disk to
    lock): the second waits for the first and finds its zip up to date."""
    import threading

    pkg = archived(BODIES)
    results, errors = [], []

    def builder():
        try:
            results.append(zips.build(pkg["id"]))
        except Exception as e:  # pragma: no cover - shown by the assert
            errors.append(e)
        finally:
            model.Session.remove()

    threads = [threading.Thread(target=builder) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and sorted(r.built for r in results) == [False, True]
    (built,) = [r.package for r in results if r.built]
    assert _zip_objects(s3_env) == sorted([built.key, f"packages/{pkg['id']}/package.json"])
