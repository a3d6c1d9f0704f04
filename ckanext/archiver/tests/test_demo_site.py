"""The demo's site script removes only what it made (scripts/demo/site.py,
run here against the test database)."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
from ckan import model
from ckan.tests import factories
from ckan.tests.helpers import call_action

SITE = pathlib.Path(__file__).resolve().parents[3] / "scripts" / "demo" / "site.py"

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db", "archiver_env")


@pytest.fixture
def site_script():
    spec = importlib.util.spec_from_file_location("archiver_demo_site", SITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(site_script, manifest):
    removed = site_script._remove_earlier_run(str(manifest))
    site_script._admin()
    made = site_script._create("http://127.0.0.1:9/",
                               tuple(site_script.read_manifest(str(manifest))["organizations"]))
    site_script.write_manifest(str(manifest), made)
    return removed, made


def test_rerun_keeps_what_others_added(app, site_script, tmp_path):
    manifest = tmp_path / "made.json"
    with app.flask_app.test_request_context():
        removed, made = _run(site_script, manifest)
    assert removed["datasets"] == 0 and len(made["datasets"]) == 5
    org = made["organizations"][0]
    # somebody else's dataset in a demo organization, and an editor
    theirs = factories.Dataset(owner_org=org["id"], name="users-own-data")
    editor = factories.User()
    call_action("organization_member_create", id=org["id"], username=editor["name"],
                role="editor")
    outside = factories.Dataset(name="not-the-demos")

    with app.flask_app.test_request_context():
        removed, again = _run(site_script, manifest)
    assert removed["datasets"] == 5 and removed["organizations"] == 0
    assert {d["name"] for d in again["datasets"]} == {d["name"] for d in made["datasets"]}
    assert {d["id"] for d in again["datasets"]}.isdisjoint(d["id"] for d in made["datasets"])
    assert [o["id"] for o in again["organizations"]] == [o["id"] for o in made["organizations"]]
    for kept in (theirs, outside):
        pkg = model.Package.get(kept["id"])
        assert pkg is not None and pkg.state == "active", kept["name"]
    members = call_action("member_list", id=org["id"], object_type="user")
    assert (editor["id"], "user", "Editor") in [tuple(m) for m in members]


def test_a_name_taken_by_someone_else_stops_the_demo(app, site_script, tmp_path):
    factories.Dataset(name="riverside-spending", notes="A user's own dataset")
    with app.flask_app.test_request_context():
        site_script._remove_earlier_run(str(tmp_path / "made.json"))
        site_script._admin()
        with pytest.raises(site_script.NameTaken, match="riverside-spending is taken"):
            site_script._create("http://127.0.0.1:9/")
    assert model.Package.get("riverside-spending").notes == "A user's own dataset"
