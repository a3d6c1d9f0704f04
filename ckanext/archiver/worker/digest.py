"""Publisher notifications: a digest email per organization and a webhook
call (``ckan archiver notify``, for cron).

For each active organization it looks at the checks recorded in
``archival_history`` since the last digest: a link *became broken* when its
last check in the window found it broken and its last check before the
window did not (or there was none); it *recovered* when its last check in
the window found it working and the one before the window found it broken.
A link that broke and was fixed again within the window is not reported;
"not sure" results (time-outs, system errors) change nothing.

* Email: to the organization's admins (and, with ``notify_maintainers``, to
  each dataset's maintainer email, with the rows of their datasets only),
  through CKAN's mailer. An organization's admins can switch it off
  (``archiver_notify_optout``); its window still moves on, so that switching
  it back on does not send months of changes at once.
* Webhook (``webhook_url``, ``worker.webhook``): the same changes as JSON,
  POSTed once per organization with changes. The site's webhook is not
  affected by an organization's opt-out.

Each channel remembers the end of the window it reported per organization
(``model.org_notify``): a failed webhook is reported again, with what
happened since, on the next run; a digest is not sent twice.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from typing import Any, Iterable, Optional

from ckan import model

from ckanext.archiver import config, mail, urls
from ckanext.archiver.model import utcnow
from ckanext.archiver.model.org_notify import (
    AlreadyRunning,
    Change,
    OrgNotify,
    active_organizations,
    admins,
    changes,
    remember_windows,
    run_lock,
)
from ckanext.archiver.worker.webhook import WEBHOOK_EVENT, post_webhook

__all__ = ["run", "OrgResult", "AlreadyRunning", "DIGEST_MAX_ROWS"]

log = logging.getLogger(__name__)

DIGEST_MAX_ROWS = 200  # per list in one email; the rest: see the report


@dataclasses.dataclass
class OrgResult:
    organization: str
    broken: int = 0
    recovered: int = 0
    mails_sent: int = 0
    mails_failed: int = 0
    mail_error: Optional[str] = None  # why the last mail failed
    opted_out: bool = False
    webhook: Optional[bool] = None  # None: not called


def _recipients(org: model.Group, found: list[Change],
                options: config.Options) -> list[tuple[str, str, list[Change], bool]]:
    """(name, email, rows, is_admin): the admins get every row, maintainers
    (with ``notify_maintainers``) the rows of their datasets."""
    recipients: list[tuple[str, str, list[Change], bool]] = [
        (user.display_name, user.email, found, True) for user in admins(org.id)]
    if options.notify_maintainers:
        admin_emails = {email.strip().lower() for _n, email, _c, _a in recipients}
        by_maintainer: dict[str, list[Change]] = {}
        for change in found:
            email = (change.maintainer_email or "").strip()
            if "@" in email and email.lower() not in admin_emails:
                by_maintainer.setdefault(email, []).append(change)
        recipients += [(email, email, rows, False) for email, rows in by_maintainer.items()]
    return recipients


def _send_digest(org: model.Group, found: list[Change], since: datetime.datetime,
                 until: datetime.datetime, options: config.Options
                 ) -> tuple[int, int, Optional[str]]:
    """Mail the digest; returns (mails sent, mails failed, why the last
    failed)."""
    sent = failed = 0
    error: Optional[str] = None
    report_url = urls.report_org_url(org.name, qualified=True)
    for name, email, rows, is_admin in _recipients(org, found, options):
        extra = {
            "organization": org, "recipient_name": name, "is_admin": is_admin,
            "broken": [c for c in rows if c.broken],
            "recovered": [c for c in rows if not c.broken],
            "since": since, "until": until, "report_url": report_url,
            "limit": DIGEST_MAX_ROWS,
        }
        problem = mail.send(name, email, "digest", extra)
        if problem is None:
            sent += 1
        else:
            error = problem
            log.error("Could not send the link digest of %s to %s: %s", org.name, email, error)
            failed += 1
    return sent, failed, error


def _payload(org: model.Group, found: list[Change], since: datetime.datetime,
             until: datetime.datetime, options: config.Options) -> dict[str, Any]:
    return {
        "event": WEBHOOK_EVENT,
        "site_url": options.site_url,
        "site_id": options.site_id,
        "sent_at": utcnow().isoformat(),
        "organization": {"id": org.id, "name": org.name, "title": org.title},
        "since": since.isoformat(), "until": until.isoformat(),
        "broken": [c.as_dict() for c in found if c.broken],
        "recovered": [c.as_dict() for c in found if not c.broken],
    }


def run(organizations: Iterable[str] = (), now: Optional[datetime.datetime] = None,
        dry_run: bool = False) -> list[OrgResult]:
    """Send the digests (and webhook calls) due; returns what was done per
    organization with changes or an action taken. ``dry_run`` computes
    without sending or remembering anything.

    :raises AlreadyRunning: another ``notify`` run holds the lock.
    """
    options = config.current()
    until = now or utcnow()
    first = until - datetime.timedelta(days=options.notify_first_days)
    with run_lock():
        results = []
        for org in active_organizations(organizations):
            result = _run_org(org, until, first, options, dry_run)
            if result is not None:
                results.append(result)
        return results


def _run_org(org: model.Group, until: datetime.datetime, first: datetime.datetime,
             options: config.Options, dry_run: bool) -> Optional[OrgResult]:
    state = OrgNotify.get(org.id)
    cache: dict[datetime.datetime, list[Change]] = {}

    def found_since(since: datetime.datetime) -> list[Change]:
        if since not in cache:
            cache[since] = changes(org.id, since, until)
        return cache[since]

    result = OrgResult(org.name, opted_out=bool(state and state.opt_out))
    digest_since = (state.last_digest_at if state else None) or first
    digest_done = True
    if not result.opted_out:
        found = found_since(digest_since)
        result.broken = sum(1 for c in found if c.broken)
        result.recovered = len(found) - result.broken
        if found and not dry_run:
            result.mails_sent, result.mails_failed, result.mail_error = _send_digest(
                org, found, digest_since, until, options)
            digest_done = result.mails_sent > 0 or result.mails_failed == 0
    webhook_done = False
    if options.webhook_url:
        hook_since = (state.last_webhook_at if state else None) or first
        found = found_since(hook_since)
        if found:
            if len(found) > result.broken + result.recovered:  # a longer window
                result.broken = sum(1 for c in found if c.broken)
                result.recovered = len(found) - result.broken
            if not dry_run:
                result.webhook = post_webhook(_payload(org, found, hook_since, until, options))
                webhook_done = result.webhook
        else:
            webhook_done = True
    if dry_run:
        return result if (result.broken or result.recovered) else None
    if digest_done or webhook_done:
        remember_windows(org.id, state, until, digest_done, webhook_done)
    if result.broken or result.recovered or result.webhook is not None:
        return result
    return None
