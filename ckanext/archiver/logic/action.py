"""Actions of the archiver (``archiver_*``)."""

from __future__ import annotations

from typing import Any

import ckan.plugins.toolkit as tk
from ckan import model
from ckan.types import Context, DataDict

from ckanext.archiver import queue
from ckanext.archiver.logic import schema
from ckanext.archiver.model import Archival, dataset_summary


def _validated_id(context: Context, data_dict: DataDict) -> str:
    data, errors = tk.navl_validate(data_dict, schema.id_schema(), context)
    if errors:
        raise tk.ValidationError(errors)
    return data["id"]


@tk.side_effect_free
def archiver_resource_show(context: Context, data_dict: DataDict) -> dict[str, Any]:
    """Return the archival information of a resource: the result of its
    latest check, and its cached copy if one was kept.

    :param id: the id of the resource
    :type id: string

    :returns: the ``archiver`` dict also found on the resource in
        ``package_show`` (status_id, status, is_broken, reason, cache_url,
        size, mimetype, hashes, first_failure, last_success, ...)
    :rtype: dictionary
    """
    tk.check_access("archiver_resource_show", context, data_dict)
    resource_id = _validated_id(context, data_dict)
    archival = Archival.get_for_resource(resource_id)
    if archival is None:
        raise tk.ObjectNotFound(tk._("This resource has not been checked yet"))
    return dict(archival.as_dict(), resource_id=archival.resource_id,
                package_id=archival.package_id)


@tk.side_effect_free
def archiver_dataset_show(context: Context, data_dict: DataDict) -> dict[str, Any]:
    """Return the archival information of a dataset and its resources.

    :param id: the id or name of the dataset
    :type id: string

    :returns: the dataset summary (status_id, status, reason, is_broken of
        its worst resource) and ``resources``, one ``archiver`` dict (with
        ``resource_id``) per checked resource
    :rtype: dictionary
    """
    tk.check_access("archiver_dataset_show", context, data_dict)
    package = model.Package.get(_validated_id(context, data_dict))
    if package is None or package.state == "deleted":
        raise tk.ObjectNotFound(tk._("Dataset not found"))
    active = {r.id for r in package.resources}
    rows = [a for a in Archival.get_for_package(package.id)
            if a.resource_id in active]
    summary = dataset_summary(rows)
    summary["package_id"] = package.id
    summary["resources"] = [dict(a.as_dict(), resource_id=a.resource_id)
                            for a in rows]
    return summary


def archiver_update(context: Context, data_dict: DataDict) -> dict[str, Any]:
    """Queue a resource, or every resource of a dataset, for checking.

    :param id: the id of a resource, or the id or name of a dataset
    :type id: string
    :param queue: ``priority`` (default) or ``bulk``
    :type queue: string
    :param force: download even when the last response is still fresh
    :type force: bool

    :returns: ``{"queued": <number of resources queued>}`` (resources
        already waiting in a queue are not queued twice)
    :rtype: dictionary
    """
    data, errors = tk.navl_validate(data_dict, schema.update_schema(), context)
    if errors:
        raise tk.ValidationError(errors)
    resource = model.Resource.get(data["id"])
    package = model.Package.get(resource.package_id if resource else data["id"])
    if package is None or package.state == "deleted":
        raise tk.ObjectNotFound(tk._("Dataset or resource not found"))
    tk.check_access("archiver_update", context, {"id": package.id})
    if resource is not None:
        items = [(resource.id, package.id)]
    else:
        items = [(r.id, package.id) for r in package.resources]
    count = queue.enqueue(items, data.get("queue") or "priority",
                          force=bool(data.get("force")))
    return {"queued": count}
