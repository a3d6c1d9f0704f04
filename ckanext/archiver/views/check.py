"""``archiver.check_now`` (``POST /dataset/<id>/archiver/check``): queue a
dataset, or one of its resources, on the priority queue."""

from __future__ import annotations

import logging
from typing import Optional

import ckan.plugins.toolkit as tk
from ckan import model
from flask import request

from ckanext.archiver import urls
from ckanext.archiver.model import active_dataset
from ckanext.archiver.views.common import request_context, require_access, require_csrf_token

__all__ = ["check_now"]

log = logging.getLogger(__name__)


def _report_came_from(value: Optional[str]) -> Optional[str]:
    """A "Check now" from a report row goes back to that report page: only
    a path of the report itself is accepted (never an open redirect)."""
    if not value:
        return None
    base = tk.h.url_for("archiver.report_index")
    if not value.startswith(base) or "//" in value or "\\" in value \
            or any(ord(c) < 32 for c in value):
        return None
    rest = value[len(base):]
    return value if rest == "" or rest[0] in "/?" else None


def check_now(id: str):
    """Queue the dataset (or the form's ``resource_id``) for checking on the
    priority queue, then go back to its page."""
    require_csrf_token()
    context = request_context()
    require_access("package_update", context, id, tk._("Dataset not found"),
                   tk._("Not authorized to check this dataset"))
    package = active_dataset(id)
    if package is None:
        tk.abort(404, tk._("Dataset not found"))
    resource_id = (request.form.get("resource_id") or "").strip() or None
    if resource_id:
        resource = model.Resource.get(resource_id)
        if (resource is None or resource.package_id != package.id
                or resource.state != "active"):
            tk.abort(404, tk._("Resource not found"))
    try:
        action = tk.get_action("archiver_update")
    except KeyError:
        tk.h.flash_error(tk._("Checking links is not available on this site"))
    else:
        try:
            # an explicit check always contacts the server (no freshness skip)
            result = action(context, {"id": resource_id or package.id,
                                      "queue": "priority", "force": True})
        except tk.NotAuthorized:
            tk.abort(403, tk._("Not authorized to check this dataset"))
        except (tk.ValidationError, tk.ObjectNotFound) as e:
            tk.h.flash_error(tk._("Could not queue the check: {error}").format(
                error=getattr(e, "message", None) or str(e)))
        except Exception:  # the broker is down: say so, do not crash
            log.exception("archiver_update failed for %s",
                          resource_id or package.id)
            tk.h.flash_error(tk._("Could not queue the check, please try "
                                  "again later"))
        else:
            if isinstance(result, dict) and result.get("queued") == 0:
                tk.h.flash_notice(tk._("Already waiting in the queue for "
                                       "checking"))
            else:
                tk.h.flash_success(tk._("Queued for checking"))
    back = _report_came_from(request.form.get("came_from"))
    if back:
        return tk.redirect_to(back)
    return tk.redirect_to(urls.dataset_url(package.type, package.name, resource_id))
