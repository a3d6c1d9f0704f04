"""Auth functions. Reading archival data follows the dataset's read
permission: whoever may see a dataset (or resource) may see how its links
are doing, and nobody else."""

from __future__ import annotations

import ckan.plugins.toolkit as tk
from ckan import model
from ckan.types import AuthResult, Context, DataDict


def _allowed(action: str, context: Context, data_dict: DataDict) -> AuthResult:
    try:
        tk.check_access(action, context, {"id": data_dict.get("id")})
    except tk.NotAuthorized:
        return {"success": False}
    return {"success": True}


@tk.auth_allow_anonymous_access
def archiver_resource_show(context: Context, data_dict: DataDict) -> AuthResult:
    return _allowed("resource_show", context, data_dict)


@tk.auth_allow_anonymous_access
def archiver_dataset_show(context: Context, data_dict: DataDict) -> AuthResult:
    return _allowed("package_show", context, data_dict)


def archiver_update(context: Context, data_dict: DataDict) -> AuthResult:
    """Who may edit the dataset may ask for its links to be checked."""
    return _allowed("package_update", context, data_dict)


# -- packages, notifications, statistics -------------------------------------

def archiver_package_request(context: Context, data_dict: DataDict) -> AuthResult:
    """Who may read the dataset, logged in with an email address, may ask
    for its zip to be mailed."""
    user = model.User.get(context.get("user") or "")
    if user is None or not user.email:
        return {"success": False,
                "msg": tk._("Log in, with an email address in your profile, to ask for it")}
    return _allowed("package_show", context, data_dict)


def archiver_notify_optout(context: Context, data_dict: DataDict) -> AuthResult:
    """The organization's admins (who may edit it)."""
    return _allowed("organization_update", context, data_dict)


def archiver_status(context: Context, data_dict: DataDict) -> AuthResult:
    """Sysadmins only (they pass every auth function)."""
    return {"success": False, "msg": tk._("Only sysadmins may see the archiver's status")}
