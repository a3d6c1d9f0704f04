"""What a dataset's zip holds, from the database: :class:`Plan` (members,
manifest entries, fingerprint) and :func:`plan`. No file is read here (a
stat per local member); ``worker.zips`` builds and keeps the zip, and
serves the same :func:`plan` to the download view (re-exported there).

The zip holds ``data/<file name>`` for every active resource with an
archived file (or an uploaded one) and ``datapackage.json`` (a Frictionless
Data Package: each resource's URL, sha256, size, status and archive time).
Its fingerprint is the members' zip paths, sizes and sha256, and the
resources' ids, names, URLs and broken / not broken state (a routine
re-check that finds the same files rebuilds nothing).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import urllib.parse
from typing import Any, Callable, Optional

from ckan import model
from ckan.lib import uploader

from ckanext.archiver import config, urls
from ckanext.archiver import status as st
from ckanext.archiver.engine.files import inside
from ckanext.archiver.engine.storage import Storage, sanitise_filename
from ckanext.archiver.engine.store_s3 import S3Store
from ckanext.archiver.engine.zipper import MANIFEST_NAME, Member, mtime_iso
from ckanext.archiver.model import Archival, iso
from ckanext.archiver.worker.services import local_storage, store_key
from ckanext.archiver.worker.services import storage as archive_store

__all__ = ["Plan", "plan", "FORMAT_VERSION"]

FORMAT_VERSION = 1


@dataclasses.dataclass
class Plan:
    """What the package of a dataset holds now (from the database)."""

    package_id: str
    package_name: str
    members: list[Member]
    resources: list[dict[str, Any]]  # manifest entries, member hashes filled in later
    manifest_head: dict[str, Any]
    fingerprint: str

    @property
    def total_bytes(self) -> int:
        return sum(m.size for m in self.members)

    def manifest(self, hashes: dict[str, str]) -> bytes:
        """``datapackage.json`` with the sha256 actually read while zipping."""
        resources = []
        for entry in self.resources:
            entry = json.loads(json.dumps(entry))
            digest = hashes.get(entry["archiver"]["resource_id"])
            if digest:
                entry["hash"] = "sha256:" + digest
                entry["archiver"]["sha256"] = digest
            resources.append(entry)
        doc = dict(self.manifest_head, resources=resources)
        return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _source_path(resource: model.Resource, archival: Optional[Archival],
                 store: Storage) -> Optional[str]:
    """The real path of the resource's kept file, when it is a regular file
    where the archiver puts it (its own folder in archive_dir, or CKAN's
    storage for an upload); None otherwise."""
    if archival is None or not archival.cache_filepath:
        return None
    recorded = os.path.realpath(archival.cache_filepath)
    if resource.url_type == "upload":
        expected = uploader.get_resource_uploader(
            {"id": resource.id, "url_type": "upload", "url": resource.url}
        ).get_path(resource.id)
        path = os.path.realpath(str(expected))
        if path != recorded:
            return None
    else:
        try:
            path = store.path_for(resource.id, os.path.basename(recorded))
        except ValueError:
            return None
        if path != recorded or not inside(path, store.archive_dir):
            return None
    return path if os.path.isfile(path) else None


_NOT_A_WEB_URL = "The link is not an http(s) URL: it is left out of this manifest"


def _web_url(url: str) -> bool:
    """An absolute http(s) URL with a host (what a manifest path may be,
    besides a member of the zip)."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError:
        return False
    return (parts.scheme.lower() in ("http", "https") and bool(parts.netloc)
            and url == url.strip() and url.isprintable())


def _arcname(filename: str, resource_id: str, taken: set[str]) -> str:
    name = sanitise_filename(filename, default=resource_id)
    for candidate in (name, f"{resource_id[:8]}-{name}", f"{resource_id}-{name}"):
        if candidate.lower() not in taken:
            taken.add(candidate.lower())
            return "data/" + candidate
    raise ValueError(f"No free name in the zip for {resource_id}")


def plan(package: model.Package, store: Optional[Storage] = None) -> Plan:
    """The members, manifest and fingerprint of ``package``'s zip, as the
    database says now (no file is read, a stat per member)."""
    store = store or local_storage()
    resources = model.Session.query(model.Resource).filter(
        model.Resource.package_id == package.id,
        model.Resource.state == "active").order_by(model.Resource.position).all()
    archivals = {a.resource_id: a for a in Archival.get_for_package(package.id)}
    members: list[Member] = []
    entries: list[dict[str, Any]] = []
    fingerprint: list[Any] = []
    taken: set[str] = {MANIFEST_NAME}
    for res in resources:
        a = archivals.get(res.id)
        key = store_key(a.cache_filepath) if a is not None else None
        source = key or _source_path(res, a, store)
        url = res.url or ""
        if res.url_type == "upload" and url and "/" not in url:
            url = urls.dataset_url(package.type, package.id, res.id, qualified=True,
                                   action="download", filename=url)
        status_id = a.status_id if a else None
        link = url if _web_url(url) else None
        entry: dict[str, Any] = {
            "name": res.id,
            "title": res.name or None,
            "path": link,
            "url": link,
            "format": res.format or None,
            "archiver": {
                "resource_id": res.id,
                "included": source is not None,
                "status_id": status_id,
                "status": st.text(status_id),
                "is_broken": a.is_broken if a else None,
                "reason": a.reason if a else None,
                "checked_at": iso(a.updated) if a else None,
                "last_success": iso(a.last_success) if a else None,
            },
        }
        if link is None:  # never a local path or "..": the manifest's path is
            # a member of the zip or an http(s) URL (Data Package spec)
            del entry["path"], entry["url"]
            entry["archiver"]["note"] = _NOT_A_WEB_URL
        member_key: Any = None
        if key is not None:  # in the object store: streamed from it while zipping
            member = Member(res.id, key, _arcname(key.rsplit("/", 1)[-1], res.id, taken),
                            int(a.size or 0), a.sha256, opener=_object_opener(key),
                            mtime=a.updated.replace(tzinfo=datetime.timezone.utc).timestamp()
                            if a.updated else None)
            members.append(member)
            entry.update(path=member.arcname, bytes=member.size, mediatype=a.mimetype or None)
            if a.sha256:
                entry["hash"] = "sha256:" + a.sha256
            entry["archiver"].update(archived_at=iso(a.updated), sha256=a.sha256)
            member_key = [member.arcname, member.size, a.sha256 or [a.hash, key]]
        elif source is not None:
            size = os.path.getsize(source)
            # an upload is kept under its id by CKAN: name it as uploaded
            name = (urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
                    if res.url_type == "upload" else "") or os.path.basename(source)
            member = Member(res.id, source, _arcname(urllib.parse.unquote(name), res.id, taken),
                            size, a.sha256)
            members.append(member)
            entry.update(path=member.arcname, bytes=size, mediatype=a.mimetype or None)
            if a.sha256:
                entry["hash"] = "sha256:" + a.sha256
            entry["archiver"].update(archived_at=mtime_iso(source), sha256=a.sha256)
            # no sha256 recorded (older archiver's rows): the file's identity
            member_key = [member.arcname, size, a.sha256 or
                          [a.hash, os.stat(source).st_mtime_ns]]
        entries.append(entry)
        fingerprint.append([res.id, res.name or "", url, a.is_broken if a else None,
                            member_key])
    head = {
        "profile": "data-package",
        "name": package.name,
        "id": package.id,
        "title": package.title or package.name,
        "homepage": urls.dataset_url(package.type, package.name, qualified=True),
    }
    digest = hashlib.sha256(json.dumps(
        [FORMAT_VERSION, config.current().package_compresslevel, head, fingerprint],
        sort_keys=True, default=str).encode()).hexdigest()
    return Plan(package.id, package.name, members, entries, head, digest)


def _object_opener(key: str) -> Callable[[], Any]:
    def opener() -> Any:
        store = archive_store()
        if not isinstance(store, S3Store):
            raise FileNotFoundError(f"{key} is in the object store, which is not configured")
        return store.open(key)

    return opener
