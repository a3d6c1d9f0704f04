"""The CKAN side of the demo, run by ``scripts/demo.py`` with the
virtualenv's Python in a process of its own (it loads CKAN)::

    .venv/bin/python scripts/demo/site.py CONFIG.ini SAMPLE_BASE_URL

1. removes what an earlier demo run made, and only that: the datasets it
   created (their ids are in ``made.json`` beside the config; datasets of
   runs before that file existed are known by name *and* the demo's own
   description), their ``archival`` and history rows, cached files and
   queue marks. Its organizations are kept and used again, with their
   members and any dataset somebody else added to them. Nothing else in
   the database is touched (other tools, such as the report benchmark, may
   share ``ckan_archiver_dev``);
2. makes (or resets) the sysadmin ``admin`` with a new random password and
   an API token named ``archiver-demo``;
3. creates (or re-uses) two organizations and creates their datasets, one
   of them private, whose resources point at the sample server. Each
   ``package_create`` commits, and the archiver's hooks put the new
   resources on the priority queue.

Prints one JSON document on stdout: the admin's password and token, and
the organizations, datasets and resources made.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from typing import Any, Optional

ADMIN = "admin"
TOKEN_NAME = "archiver-demo"
NOTES = "Sample dataset of the ckanext-archiver demo."
MANIFEST = "made.json"


class NameTaken(Exception):
    """A dataset name of the demo belongs to a dataset the demo did not make."""

ORGANIZATIONS = [
    {"name": "riverside-council", "title": "Riverside City Council",
     "description": "A (fictional) city council publishing its spending, "
                    "budget and planning data."},
    {"name": "northern-transport", "title": "Northern Transport Agency",
     "description": "A (fictional) transport agency publishing traffic and bus data."},
]

# (organization, dataset name, title, private, [(resource name, path, format)])
DATASETS: list[tuple[str, str, str, bool, list[tuple[str, str, str]]]] = [
    ("riverside-council", "riverside-spending", "Council spending and budget", False, [
        ("Spending over 500 GBP, 2024", "/data/spending-2024.csv", "CSV"),
        ("Budget 2025", "/data/budget-2025.csv", "CSV"),
    ]),
    ("riverside-council", "riverside-planning", "Planning applications", False, [
        ("Planning applications (old address)", "/old/planning-applications.csv", "CSV"),
        ("Planning applications 2019", "/data/planning-2019.csv", "CSV"),
    ]),
    ("riverside-council", "riverside-permits", "Building permits (internal)", True, [
        ("Building permits API", "/api/permits.json", "JSON"),
        ("Air quality, live", "/data/live/air-quality.csv", "CSV"),
    ]),
    ("northern-transport", "transport-traffic-counts", "Traffic counts", False, [
        ("Traffic counts 2024 (20 MB)", "/data/traffic-counts-2024.csv", "CSV"),
        ("Road sensors (slow server)", "/api/road-sensors.csv", "CSV"),
    ]),
    ("northern-transport", "transport-bus-network", "Bus network", False, [
        ("Bus stops", "/api/bus-stops.json", "GeoJSON"),
        ("Bus timetables", "/timetables", "CSV"),
    ]),
]


def _load_ckan(ini: str) -> Any:
    from ckan.cli import load_config
    from ckan.config.middleware import make_app

    return make_app(load_config(ini))._wsgi_app


def read_manifest(path: Optional[str]) -> dict[str, list[str]]:
    if not path or not os.path.exists(path):
        return {"datasets": [], "organizations": []}
    with open(path) as f:
        data = json.load(f)
    return {"datasets": list(data.get("datasets") or []),
            "organizations": list(data.get("organizations") or [])}


def write_manifest(path: Optional[str], made: dict[str, Any]) -> None:
    if not path:
        return
    with open(path, "w") as f:
        json.dump({"datasets": [d["id"] for d in made["datasets"]],
                   "organizations": [o["id"] for o in made["organizations"]]}, f, indent=2)


def _remove_earlier_run(manifest: Optional[str] = None) -> dict[str, int]:
    import sqlalchemy as sa
    from ckan import model
    from ckan.plugins import toolkit as tk

    from ckanext.archiver import queue, tasks
    from ckanext.archiver.model import Archival, ArchivalHistory

    known = read_manifest(manifest)
    by_id = model.Session.query(model.Package).filter(
        model.Package.id.in_(known["datasets"] or [""])).all()
    # runs from before made.json: the demo's names with the demo's own notes
    legacy = model.Session.query(model.Package).filter(
        model.Package.name.in_([d[1] for d in DATASETS]),
        model.Package.notes == NOTES).all()
    packages = {p.id: p for p in by_id + legacy}
    package_ids = sorted(packages)
    resource_ids = [rid for (rid,) in model.Session.query(model.Resource.id).filter(
        model.Resource.package_id.in_(package_ids or [""]))]
    archived = model.Session.query(Archival.resource_id).filter(
        Archival.package_id.in_(package_ids or [""])).all()
    resource_ids = sorted(set(resource_ids) | {rid for (rid,) in archived})

    store = tasks.storage()
    for rid in resource_ids:
        store.remove(rid)
    try:
        queue.release(resource_ids)
    except Exception:  # noqa: BLE001 - Redis down: the workers will say so
        pass
    if resource_ids or package_ids:
        for table in (Archival.__table__, ArchivalHistory.__table__):
            model.Session.execute(sa.delete(table).where(sa.or_(
                table.c.resource_id.in_(resource_ids or [""]),
                table.c.package_id.in_(package_ids or [""]))))
        model.Session.commit()

    context = _context()
    for pkg_id in package_ids:
        tk.get_action("dataset_purge")(context(), {"id": pkg_id})
    return {"datasets": len(package_ids), "resources": len(resource_ids),
            "organizations": 0}


def _context():
    from ckan.plugins import toolkit as tk

    site_user = tk.get_action("get_site_user")({"ignore_auth": True}, {})
    return lambda user=site_user["name"]: {"ignore_auth": True, "user": user}


def _admin() -> dict[str, str]:
    from ckan import model
    from ckan.plugins import toolkit as tk

    password = "demo-" + secrets.token_urlsafe(9)
    user = model.User.get(ADMIN)
    if user is None:
        tk.get_action("user_create")(_context()(), {
            "name": ADMIN, "email": "admin@example.org", "password": password,
            "fullname": "Demo administrator"})
        user = model.User.get(ADMIN)
    else:
        user.password = password  # hashed by the model
        user.state = "active"
    user.sysadmin = True
    model.repo.commit_and_remove()

    user = model.User.get(ADMIN)
    old = model.Session.query(model.ApiToken).filter(
        model.ApiToken.user_id == user.id, model.ApiToken.name == TOKEN_NAME).all()
    for token in old:
        model.Session.delete(token)
    model.Session.commit()
    token = tk.get_action("api_token_create")(
        _context()(ADMIN), {"user": ADMIN, "name": TOKEN_NAME})["token"]
    return {"name": ADMIN, "password": password, "token": token}


def _create(base_url: str, demo_orgs: tuple[str, ...] = ()) -> dict[str, Any]:
    from ckan import model
    from ckan.plugins import toolkit as tk

    context = _context()
    orgs = []
    for org in ORGANIZATIONS:
        existing = model.Group.get(org["name"])
        if existing is not None and existing.state == "active":
            made = {"id": existing.id, "name": existing.name, "title": existing.title}
        else:
            if existing is not None:  # a deleted organization holds the name
                if existing.id not in demo_orgs:
                    raise NameTaken(f"The organization name {org['name']} is taken by a "
                                    "deleted organization the demo did not make: purge "
                                    "it (ckan-admin trash), then run the demo again")
                tk.get_action("organization_purge")(context(), {"id": existing.id})
            made = tk.get_action("organization_create")(context(ADMIN), dict(org))
        orgs.append({"id": made["id"], "name": made["name"], "title": made["title"]})
    for _org, name, _title, _private, _resources in DATASETS:
        if model.Package.get(name) is not None:
            raise NameTaken(f"The dataset name {name} is taken by a dataset the demo did "
                            "not make: rename or delete it, then run the demo again")
    datasets = []
    for org, name, title, private, resources in DATASETS:
        pkg = tk.get_action("package_create")(context(ADMIN), {
            "name": name, "title": title, "owner_org": org, "private": private,
            "notes": NOTES,
            "license_id": "cc-by",
            "resources": [{"name": r_name, "url": base_url.rstrip("/") + path,
                           "format": fmt} for r_name, path, fmt in resources],
        })
        datasets.append({
            "id": pkg["id"], "name": pkg["name"], "title": pkg["title"],
            "organization": org, "private": pkg["private"],
            "resources": [{"id": r["id"], "name": r["name"], "url": r["url"]}
                          for r in pkg["resources"]],
        })
    return {"organizations": orgs, "datasets": datasets}


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    ini, base_url = argv[1], argv[2]
    flask_app = _load_ckan(ini)
    manifest = os.path.join(os.path.dirname(os.path.abspath(ini)), MANIFEST)
    with flask_app.test_request_context():
        removed = _remove_earlier_run(manifest)
        admin = _admin()
        try:
            made = _create(base_url, tuple(read_manifest(manifest)["organizations"]))
        except NameTaken as e:
            print(str(e), file=sys.stderr)
            return 1
        write_manifest(manifest, made)
    json.dump({"removed": removed, "admin": admin, **made}, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
