"""Actions of the archiver (``archiver_*``)."""

from __future__ import annotations

from typing import Any

import ckan.plugins.toolkit as tk
from ckan import model
from ckan.types import Context, DataDict

from ckanext.archiver.logic import link_state, schema
from ckanext.archiver.logic.visibility import show_cache_filepath
from ckanext.archiver.model import Archival, active_dataset, dataset_summary
from ckanext.archiver.model.org_notify import set_opt_out
from ckanext.archiver.worker import dispatch, figures, zips


def _validated(context: Context, data_dict: DataDict, schema_: dict[str, Any]
               ) -> dict[str, Any]:
    data, errors = tk.navl_validate(data_dict, schema_, context)
    if errors:
        raise tk.ValidationError(errors)
    return data


def _validated_id(context: Context, data_dict: DataDict) -> str:
    return _validated(context, data_dict, schema.id_schema())["id"]


def _active_dataset(id_or_name: str, message: str = "Dataset not found") -> model.Package:
    """The dataset, unless it is missing or deleted (ObjectNotFound)."""
    package = active_dataset(id_or_name)
    if package is None:
        raise tk.ObjectNotFound(tk._(message))
    return package


def _check_read(action: str, context: Context, data_dict: DataDict,
                not_found: str) -> None:
    """Who may not read it is told it does not exist (as the dataset page
    does): a 403 would confirm that a private id exists."""
    try:
        tk.check_access(action, context, data_dict)
    except tk.NotAuthorized:
        raise tk.ObjectNotFound(not_found) from None


@tk.side_effect_free
def archiver_resource_show(context: Context, data_dict: DataDict) -> dict[str, Any]:
    """Return the archival information of a resource: the result of its
    latest check, and its cached copy if one was kept.

    :param id: the id of the resource
    :type id: string

    :returns: the ``archiver`` dict also found on the resource in
        ``package_show`` (status_id, status, is_broken, reason, cache_url,
        size, mimetype, hashes, first_failure, last_success, ...), and
        ``pending``: ``"queued"`` or ``"checking"`` while a check waits or
        runs, ``"retry"`` while a failed attempt waits to be tried again
        (``queued_at`` is when it is due), else null (``package_show``
        gives ``pending`` too)
    :rtype: dictionary
    """
    _check_read("archiver_resource_show", context, data_dict, tk._("Resource not found"))
    resource_id = _validated_id(context, data_dict)
    archival = Archival.get_for_resource(resource_id)
    if archival is None:
        raise tk.ObjectNotFound(tk._("This resource has not been checked yet"))
    info = archival.as_dict(show_cache_filepath(context))
    return dict(info, resource_id=archival.resource_id, package_id=archival.package_id,
                pending=link_state.pending(info))


@tk.side_effect_free
def archiver_dataset_show(context: Context, data_dict: DataDict) -> dict[str, Any]:
    """Return the archival information of a dataset and its resources.

    :param id: the id or name of the dataset
    :type id: string

    :returns: the dataset summary (status_id, status, reason, is_broken of
        its worst resource) and ``resources``, one ``archiver`` dict (with
        ``resource_id`` and ``pending``) per checked resource
    :rtype: dictionary
    """
    _check_read("archiver_dataset_show", context, data_dict, tk._("Dataset not found"))
    package = _active_dataset(_validated_id(context, data_dict))
    active = {r.id for r in package.resources}
    rows = [a for a in Archival.get_for_package(package.id)
            if a.resource_id in active]
    summary = dataset_summary(rows)
    summary["package_id"] = package.id
    show_path = show_cache_filepath(context)
    summary["resources"] = []
    for a in rows:
        info = a.as_dict(show_path)
        summary["resources"].append(dict(info, resource_id=a.resource_id,
                                         pending=link_state.pending(info)))
    return summary


def archiver_update(context: Context, data_dict: DataDict) -> dict[str, Any]:
    """Queue a resource, or every resource of a dataset, for checking.

    :param id: the id of a resource, or the id or name of a dataset
    :type id: string
    :param queue: ``priority`` (default) or ``bulk``
    :type queue: string
    :param force: contact the server even when its last response is still
        fresh (the "Check link now" buttons always do)
    :type force: bool

    :returns: ``{"queued": <number of resources queued>}`` (resources
        already waiting in a queue are not queued twice)
    :rtype: dictionary
    """
    data = _validated(context, data_dict, schema.update_schema())
    resource = model.Resource.get(data["id"])
    package = _active_dataset(resource.package_id if resource else data["id"],
                              "Dataset or resource not found")
    tk.check_access("archiver_update", context, {"id": package.id})
    if resource is not None:
        items = [(resource.id, package.id)]
    else:
        items = [(r.id, package.id) for r in package.resources]
    count = dispatch.enqueue(items, data.get("queue") or "priority",
                          force=bool(data.get("force")))
    return {"queued": count}


# -- zips, notifications, service figures ------------------------------------

def archiver_package_request(context: Context, data_dict: DataDict) -> dict[str, Any]:
    """Ask for a zip of a dataset's archived files (and its
    ``datapackage.json``) to be built in the background; the user is emailed
    a link to ``/dataset/<id>/archive.zip`` when it is ready. For datasets
    too large to be zipped while the reader waits.

    Needs read access to the dataset and a logged-in user with an email
    address. Asking again for the same dataset within ten minutes queues
    nothing more.

    :param id: the id or name of the dataset
    :type id: string

    :returns: ``{"queued": <whether a build was queued>, "email": <address
        the link will be sent to>}``
    :rtype: dictionary
    """
    tk.check_access("archiver_package_request", context, data_dict)
    package = _active_dataset(_validated_id(context, data_dict))
    user = model.User.get(context.get("user") or "")
    if user is None or not user.email:
        raise tk.ValidationError({"email": [tk._("Your profile has no email address")]})
    queued = zips.request_build(package.id, user.id)
    return {"queued": queued, "email": user.email}


def archiver_notify_optout(context: Context, data_dict: DataDict) -> dict[str, Any]:
    """Switch an organization's link digest emails (``ckan archiver
    notify``) off, or on again. For the organization's admins.

    :param id: the id or name of the organization
    :type id: string
    :param opt_out: true (default) to stop the emails, false to get them again
    :type opt_out: bool

    :returns: the organization's notification state: ``organization_id``,
        ``opt_out``, ``opt_out_changed``, ``last_digest_at``,
        ``last_webhook_at``
    :rtype: dictionary
    """
    data = _validated(context, data_dict, schema.notify_optout_schema())
    group = model.Group.get(data["id"])
    if group is None or not group.is_organization or group.state != "active":
        raise tk.ObjectNotFound(tk._("Organization not found"))
    tk.check_access("archiver_notify_optout", context, {"id": group.id})
    user = model.User.get(context.get("user") or "")
    state = set_opt_out(group.id, data["opt_out"], user.id if user else None)
    return state.as_dict()


@tk.side_effect_free
def archiver_status(context: Context, data_dict: DataDict) -> dict[str, Any]:
    """Figures of the archiver service, for sysadmins: queue lengths,
    workers and tasks in flight, resources by status, checks done and
    failed and bytes downloaded per hour (from ``archival_history``), the
    oldest check and the oldest resource never checked.

    :param with_workers: ask the Celery workers (default true; waits up to
        a second for their answers)
    :type with_workers: bool
    :param hours: hours of per-hour figures (default ``stats_hours``)
    :type hours: int

    :returns: the figures (see ``ckan archiver status --json``)
    :rtype: dictionary
    """
    tk.check_access("archiver_status", context, data_dict)
    data = _validated(context, data_dict, schema.status_schema())
    hours = min(int(data["hours"]), 24 * 31) if data.get("hours") else None
    return figures.numbers(with_workers=data["with_workers"], hours=hours)
