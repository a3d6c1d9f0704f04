"""Auth functions. Reading archival data follows the dataset's read
permission: whoever may see a dataset (or resource) may see how its links
are doing, and nobody else."""

from __future__ import annotations

import ckan.plugins.toolkit as tk
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
