"""Which archival columns a reader of the API may see.

``cache_filepath`` is the archived file's absolute path on the server: only
sysadmins see it in ``package_show`` and the ``archiver_*`` actions, unless
``ckanext.archiver.show_cache_filepath`` restores the older archiver's
behaviour (every reader). Everyone else has ``cache_url``.
"""

from __future__ import annotations

from ckan import authz
from ckan.types import Context

from ckanext.archiver import config

__all__ = ["show_cache_filepath"]


def show_cache_filepath(context: Context) -> bool:
    """Whether the user of ``context`` may see ``cache_filepath``."""
    if config.current().show_cache_filepath:
        return True
    user = context.get("auth_user_obj")
    if user is not None and getattr(user, "sysadmin", False):
        return True
    name = context.get("user")
    return bool(name) and authz.is_sysadmin(name)
