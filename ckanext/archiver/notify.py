"""Old import path of publisher notifications: ``worker.digest`` (a run),
``worker.webhook`` (the webhook), ``model.org_notify`` (state and changes),
``mail`` (rendering and sending)."""

from __future__ import annotations

from ckanext.archiver.mail import render_email
from ckanext.archiver.model.org_notify import (
    _LOCK_KEY,
    AlreadyRunning,
    Change,
    OrgNotify,
    changes,
    set_opt_out,
)
from ckanext.archiver.worker.digest import DIGEST_MAX_ROWS, OrgResult, run
from ckanext.archiver.worker.webhook import SIGNATURE_HEADER, WEBHOOK_EVENT, post_webhook, sign

__all__ = ["OrgNotify", "Change", "changes", "run", "post_webhook", "sign", "set_opt_out",
           "render_email", "WEBHOOK_EVENT", "SIGNATURE_HEADER", "AlreadyRunning", "OrgResult",
           "DIGEST_MAX_ROWS", "_LOCK_KEY"]
