"""Tests for storage.py (layout, atomic store, removal, cleanup, quota, and
that nothing can be written outside the archive)."""

from __future__ import annotations

import os
import stat
import time

import pytest

from ckanext.archiver import status
from ckanext.archiver.engine.storage import Storage, clean_filename, sanitise_filename
from ckanext.archiver.fetch import fetch
from ckanext.archiver.tests.http_fixtures import serve_bytes

RID = "0a1b2c3d-4e5f-4a5b-8c7d-9e0f1a2b3c4d"
RID2 = "ffeeddcc-0000-4000-8000-000000000001"


@pytest.fixture
def storage(tmp_path):
    return Storage(str(tmp_path / "archive"), cache_url_root="https://ckan.example/archive/")


def _tmp_file(storage: Storage, content: bytes) -> str:
    path = os.path.join(storage.tmp_dir(), f"fetch-{time.monotonic_ns()}.part")
    with open(path, "wb") as f:
        f.write(content)
    os.chmod(path, 0o600)
    return path


# --------------------------------------------------------------------------
# sanitise_filename


@pytest.mark.parametrize(
    "name, expected",
    [
        (None, "resource"),
        ("", "resource"),
        ("   ", "resource"),
        ("data.csv", "data.csv"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\win.ini", "win.ini"),
        ("..", "resource"),
        ("...", "resource"),
        (".hidden.csv", "hidden.csv"),
        ("./.env", "env"),
        ("name.", "name"),
        ("a\x00b.csv", "ab.csv"),
        ("line\r\nbreak.csv", "linebreak.csv"),
        ("tab\there.csv", "tabhere.csv"),
        ("zero\u200bwidth.csv", "zerowidth.csv"),
        ('a<b>:c"d|e?f*.csv', "a_b__c_d_e_f_.csv"),
        ("e\u0301te\u0301.csv", "\u00e9t\u00e9.csv"),  # NFC
        ("données 2024.xlsx", "données 2024.xlsx"),
    ],
)
def test_sanitise_filename(name, expected):
    assert sanitise_filename(name) == expected


def test_sanitise_filename_default_and_length():
    assert sanitise_filename("..", default="download") == "download"
    assert sanitise_filename("", default="../..") == "resource"
    assert clean_filename("..") == ""
    long = sanitise_filename("x" * 400 + ".csv")
    assert long.endswith(".csv") and len(long.encode()) == 180
    wide = sanitise_filename("é" * 300 + ".geojson", max_len=100)
    assert wide.endswith(".geojson") and len(wide.encode("utf-8")) <= 100
    assert wide.encode("utf-8").decode("utf-8") == wide
    odd_ext = sanitise_filename("a" * 300 + "." + "b" * 40)
    assert len(odd_ext.encode()) <= 180 and odd_ext


# --------------------------------------------------------------------------
# Paths


def test_layout(storage):
    assert storage.path_for(RID, "data.csv") == os.path.join(
        storage.archive_dir, RID[:2], RID, "data.csv"
    )
    tmp = storage.tmp_dir()
    assert tmp == os.path.join(storage.archive_dir, ".tmp") and os.path.isdir(tmp)
    assert os.stat(tmp).st_dev == os.stat(storage.archive_dir).st_dev


@pytest.mark.parametrize(
    "resource_id",
    [
        "",
        ".",
        "..",
        "../etc",
        "a/b",
        "a\\b",
        "..%2F..",
        ".tmp",
        "x\x00y",
        "/abs",
        None,
        123,
        "a" * 300,
        "id with space",
    ],
)
def test_path_for_refuses_weird_resource_ids(storage, resource_id):
    with pytest.raises(ValueError):
        storage.path_for(resource_id, "data.csv")
    with pytest.raises(ValueError):
        storage.remove(resource_id)


@pytest.mark.parametrize(
    "filename", ["", "..", "../x.csv", "a/b.csv", ".hidden", "x\x00.csv", "a\nb.csv"]
)
def test_path_for_refuses_unsafe_filenames(storage, filename):
    with pytest.raises(ValueError):
        storage.path_for(RID, filename)


def test_path_for_refuses_symlinks_out_of_the_archive(storage, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.makedirs(os.path.join(storage.archive_dir, RID[:2]))
    os.symlink(outside, os.path.join(storage.archive_dir, RID[:2], RID))
    with pytest.raises(ValueError):
        storage.path_for(RID, "data.csv")
    with pytest.raises(ValueError):
        storage.store(RID, _tmp_file(storage, b"x"), "data.csv")
    assert list(outside.iterdir()) == []
    # a symlinked prefix folder too
    os.symlink(outside, os.path.join(storage.archive_dir, RID2[:2]))
    with pytest.raises(ValueError):
        storage.path_for(RID2, "data.csv")


def test_path_for_refuses_a_symlinked_file(storage, tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("keep me")
    folder = os.path.join(storage.archive_dir, RID[:2], RID)
    os.makedirs(folder)
    os.symlink(target, os.path.join(folder, "data.csv"))
    with pytest.raises(ValueError):
        storage.path_for(RID, "data.csv")
    assert target.read_text() == "keep me"


def test_cache_url(storage, tmp_path):
    assert storage.cache_url(RID, "été données.csv") == (
        f"https://ckan.example/archive/{RID[:2]}/{RID}/%C3%A9t%C3%A9%20donn%C3%A9es.csv"
    )
    assert Storage(str(tmp_path / "a2"), "https://x.example/c").cache_url(RID, "a.csv") == (
        f"https://x.example/c/{RID[:2]}/{RID}/a.csv"
    )
    assert Storage(str(tmp_path / "a3")).cache_url(RID, "a.csv") is None
    with pytest.raises(ValueError):
        storage.cache_url("../x", "a.csv")


# --------------------------------------------------------------------------
# Store / remove


def test_store_moves_atomically_and_replaces(storage):
    first = _tmp_file(storage, b"version 1")
    path = storage.store(RID, first, "data.csv")
    assert path == storage.path_for(RID, "data.csv")
    assert open(path, "rb").read() == b"version 1"
    assert not os.path.exists(first)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    with open(path, "rb") as reader:  # a reader of the old file is not disturbed
        second = _tmp_file(storage, b"version 2")
        assert storage.store(RID, second, "data.csv") == path
        assert reader.read() == b"version 1"
    assert open(path, "rb").read() == b"version 2"
    assert os.listdir(storage.tmp_dir()) == []


def test_store_removes_the_old_filename(storage):
    storage.store(RID, _tmp_file(storage, b"old"), "old-name.csv")
    new = storage.store(RID, _tmp_file(storage, b"new"), "new-name.csv")
    assert os.listdir(os.path.dirname(new)) == ["new-name.csv"]


def test_store_refuses_escapes(storage):
    tmp = _tmp_file(storage, b"x")
    for rid, name in (("../../x", "a.csv"), (RID, "../../x.csv"), ("..", "a.csv")):
        with pytest.raises(ValueError):
            storage.store(rid, tmp, name)
    assert os.path.exists(tmp)
    assert sorted(os.listdir(storage.archive_dir)) == [".tmp"]


def test_remove(storage):
    storage.store(RID, _tmp_file(storage, b"12345"), "a.csv")
    assert storage.remove(RID) == 5
    assert not os.path.exists(os.path.join(storage.archive_dir, RID[:2]))
    assert storage.remove(RID) == 0


def test_resource_ids(storage):
    storage.store(RID, _tmp_file(storage, b"a"), "a.csv")
    storage.store(RID2, _tmp_file(storage, b"b"), "b.csv")
    os.makedirs(os.path.join(storage.archive_dir, "zz", "not-matching-prefix"))
    open(os.path.join(storage.archive_dir, "stray.txt"), "w").close()
    assert sorted(storage.resource_ids()) == sorted([RID, RID2])


# --------------------------------------------------------------------------
# Quota and cleanup


def test_quota(tmp_path):
    storage = Storage(str(tmp_path / "archive"), max_archive_bytes=1000)
    assert storage.used_bytes() == 0
    storage.store(RID, _tmp_file(storage, b"x" * 600), "a.csv")
    assert storage.used_bytes() == 600
    assert storage.has_room(300) and not storage.has_room(500)
    storage.remove(RID)
    assert storage.used_bytes() == 0 and storage.has_room(900)
    unlimited = Storage(str(tmp_path / "other"))
    assert unlimited.has_room(10_000_000)
    assert not unlimited.has_room(10**18)  # more than the disk


def test_clean(storage):
    storage.store(RID, _tmp_file(storage, b"keep"), "a.csv")
    storage.store(RID2, _tmp_file(storage, b"orphan!"), "b.csv")
    stale = _tmp_file(storage, b"stale")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    fresh = _tmp_file(storage, b"in progress")
    assert storage.clean({RID}, dry_run=True) == (2, 12)
    assert sorted(storage.resource_ids()) == sorted([RID, RID2]) and os.path.exists(stale)
    assert storage.clean(lambda rid: rid == RID) == (2, 12)
    assert list(storage.resource_ids()) == [RID]
    assert not os.path.exists(stale) and os.path.exists(fresh)
    assert storage.clean({RID}) == (0, 0)


def test_fetch_then_store(raw_server, fetch_settings, storage):
    """End to end: a real download into the archive's temp dir, then into place."""
    url = raw_server.route(
        "/files/My Data.csv".replace(" ", "%20"), serve_bytes(b"a,b\n1,2\n", "text/csv")
    )
    outcome = fetch(url, fetch_settings, tmp_dir=storage.tmp_dir())
    assert outcome.status_id == status.ARCHIVED
    path = storage.store(RID, outcome.tmp_path, outcome.filename)
    assert path.endswith(f"/{RID}/My Data.csv")
    assert open(path, "rb").read() == b"a,b\n1,2\n"
    assert os.listdir(storage.tmp_dir()) == []
    assert storage.cache_url(RID, outcome.filename).endswith("/My%20Data.csv")
