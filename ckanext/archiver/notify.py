"""Publisher notifications: a digest email per organization and a webhook.

``ckan archiver notify`` (for cron) looks, for each active organization, at
the checks recorded in ``archival_history`` since the last digest: a link
*became broken* when its last check in the window found it broken and its
last check before the window did not (or there was none); it *recovered*
when its last check in the window found it working and the one before the
window found it broken. A link that broke and was fixed again within the
window is not reported; "not sure" results (time-outs, system errors)
change nothing.

* Email: to the organization's admins (and, with ``notify_maintainers``, to
  each dataset's maintainer email, with the rows of their datasets only),
  through CKAN's mailer. An organization's admins can switch it off
  (``archiver_notify_optout``); its window still moves on, so that switching
  it back on does not send months of changes at once.
* Webhook (``webhook_url``): the same changes as JSON, POSTed once per
  organization with changes, signed with ``webhook_secret``
  (``X-Archiver-Signature: sha256=<hex HMAC-SHA256 of the body>``), retried
  with backoff; the address passes the same SSRF guard as archived links.
  The site's webhook is not affected by an organization's opt-out.

Each channel remembers the end of the window it reported per organization
(``archiver_org_notify``): a failed webhook is reported again, with what
happened since, on the next run; a digest is not sent twice.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import json
import logging
import time
import uuid
from typing import Any, Iterable, Optional

import ckan.plugins.toolkit as tk
import requests
import sqlalchemy as sa
from ckan import model
from sqlalchemy import Column, types

from ckanext.archiver import netguard
from ckanext.archiver import status as st
from ckanext.archiver.model import utcnow

__all__ = [
    "OrgNotify", "Change", "changes", "run", "post_webhook", "sign",
    "set_opt_out", "render_email", "WEBHOOK_EVENT",
]

log = logging.getLogger(__name__)

WEBHOOK_EVENT = "archiver.links_changed"
SIGNATURE_HEADER = "X-Archiver-Signature"
_LOCK_KEY = 0x61726368  # pg advisory lock id of a notify run ("arch")
_MAX_RETRY_AFTER = 60.0
DIGEST_MAX_ROWS = 200  # per list in one email; the rest: see the report


class OrgNotify(tk.BaseModel):  # type: ignore[misc, valid-type]
    """Notification state of one organization (table made by the
    ``e38bdd52cb23`` migration)."""

    __tablename__ = "archiver_org_notify"

    organization_id = Column(types.UnicodeText, primary_key=True)
    opt_out = Column(types.Boolean, nullable=False, default=False)
    opt_out_by = Column(types.UnicodeText)
    opt_out_changed = Column(types.DateTime)
    last_digest_at = Column(types.DateTime)
    last_webhook_at = Column(types.DateTime)

    @classmethod
    def get(cls, organization_id: str) -> Optional[OrgNotify]:
        return model.Session.get(cls, organization_id)

    @classmethod
    def get_or_new(cls, organization_id: str) -> OrgNotify:
        row = cls.get(organization_id)
        if row is None:
            row = cls(organization_id=organization_id, opt_out=False)
            model.Session.add(row)
        return row

    def as_dict(self) -> dict[str, Any]:
        def iso(value: Optional[datetime.datetime]) -> Optional[str]:
            return value.isoformat() if value else None

        return {"organization_id": self.organization_id, "opt_out": bool(self.opt_out),
                "opt_out_changed": iso(self.opt_out_changed),
                "last_digest_at": iso(self.last_digest_at),
                "last_webhook_at": iso(self.last_webhook_at)}


# ---------------------------------------------------------------------------
# Emails


def render_email(template: str, extra_vars: dict[str, Any]) -> str:
    """Render a plain-text email template (no request needed: cron and
    Celery workers call this too). Not HTML-escaped."""
    from ckan.common import ugettext, ungettext
    from ckan.lib import jinja_extensions
    from jinja2 import Environment

    options = jinja_extensions.get_jinja_env_options()
    options.update(autoescape=False, trim_blocks=True, lstrip_blocks=True)
    env = Environment(**options)
    env.install_gettext_callables(ugettext, ungettext)  # type: ignore[attr-defined]
    env.globals["ungettext"] = ungettext  # as in CKAN's page templates
    env.globals["site_title"] = tk.config.get("ckan.site_title")
    env.globals["site_url"] = tk.config.get("ckan.site_url")
    return env.get_template(template).render(extra_vars)


# ---------------------------------------------------------------------------
# What changed


@dataclasses.dataclass
class Change:
    """A link that became broken (``broken`` True) or recovered."""

    broken: bool
    resource_id: str
    resource_name: Optional[str]
    url: Optional[str]
    format: Optional[str]
    package_id: str
    package_name: str
    package_title: Optional[str]
    package_type: Optional[str]
    private: bool
    maintainer_email: Optional[str]
    status_id: int
    reason: Optional[str]
    checked_at: datetime.datetime
    first_failure: Optional[datetime.datetime]

    @property
    def status(self) -> Optional[str]:
        return st.text(self.status_id)

    @property
    def dataset_url(self) -> str:
        return tk.url_for(f"{self.package_type or 'dataset'}.read", id=self.package_name,
                          qualified=True)

    @property
    def resource_url(self) -> str:
        return tk.url_for(f"{self.package_type or 'dataset'}_resource.read",
                          id=self.package_name, resource_id=self.resource_id,
                          qualified=True)

    def as_dict(self) -> dict[str, Any]:
        return {
            "change": "broken" if self.broken else "recovered",
            "dataset": self.package_name, "dataset_title": self.package_title,
            "dataset_url": self.dataset_url, "private": self.private,
            "resource_id": self.resource_id, "resource_name": self.resource_name,
            "resource_url": self.resource_url, "url": self.url, "format": self.format,
            "status_id": self.status_id, "status": self.status, "reason": self.reason,
            "checked_at": self.checked_at.isoformat(),
            "first_failure": self.first_failure.isoformat() if self.first_failure else None,
        }


_CHANGES_SQL = """
    WITH win AS (
        SELECT DISTINCT ON (h.resource_id)
               h.resource_id, h.is_broken, h.status_id, h.checked_at
        FROM package p
        JOIN resource r ON r.package_id = p.id AND r.state = 'active'
        JOIN archival_history h ON h.resource_id = r.id
        WHERE p.owner_org = :org_id AND p.state = 'active'
          AND h.checked_at > :since AND h.checked_at <= :until
        ORDER BY h.resource_id, h.checked_at DESC, h.id DESC
    )
    SELECT win.resource_id, win.is_broken, win.status_id, win.checked_at,
           r.name AS resource_name, coalesce(a.url, r.url) AS url, r.format,
           p.id AS package_id, p.name AS package_name, p.title AS package_title,
           p.type AS package_type, p.private, p.maintainer_email,
           a.reason, a.first_failure
    FROM win
    JOIN resource r ON r.id = win.resource_id
    JOIN package p ON p.id = r.package_id
    LEFT JOIN archival a ON a.resource_id = win.resource_id
    LEFT JOIN LATERAL (
        SELECT h2.is_broken FROM archival_history h2
        WHERE h2.resource_id = win.resource_id AND h2.checked_at <= :since
        ORDER BY h2.checked_at DESC, h2.id DESC LIMIT 1
    ) before ON TRUE
    WHERE (win.is_broken AND before.is_broken IS NOT TRUE)
       OR (win.is_broken IS FALSE AND before.is_broken)
    ORDER BY lower(coalesce(p.title, p.name)), p.name, r.position, r.id
"""


def changes(org_id: str, since: datetime.datetime,
            until: datetime.datetime) -> list[Change]:
    """Links of the organization's active datasets that became broken or
    recovered between ``since`` (excluded) and ``until`` (naive UTC)."""
    rows = model.Session.execute(sa.text(_CHANGES_SQL),
                                 {"org_id": org_id, "since": since, "until": until})
    return [Change(
        broken=bool(row.is_broken), resource_id=row.resource_id,
        resource_name=row.resource_name, url=row.url, format=row.format,
        package_id=row.package_id, package_name=row.package_name,
        package_title=row.package_title, package_type=row.package_type,
        private=bool(row.private), maintainer_email=row.maintainer_email,
        status_id=row.status_id, reason=row.reason, checked_at=row.checked_at,
        first_failure=row.first_failure) for row in rows]


def _admins(org_id: str) -> list[model.User]:
    u, m = model.User, model.Member
    return model.Session.query(u).join(m, m.table_id == u.id).filter(
        m.group_id == org_id, m.table_name == "user", m.state == "active",
        m.capacity == "admin", u.state == "active", u.email.isnot(None),
        u.email != "").order_by(u.name).all()


def mail_failure(e: BaseException) -> str:
    """Why a mail could not be sent, in one line. CKAN's mailer raises more
    than MailerException: with ``smtp.mail_from`` unset, an AttributeError
    from deep inside it."""
    if not tk.config.get("smtp.mail_from"):
        return "smtp.mail_from is not set"
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _send_digest(org: model.Group, found: list[Change], since: datetime.datetime,
                 until: datetime.datetime) -> tuple[int, int, Optional[str]]:
    """Mail the digest; returns (mails sent, mails failed, why the last
    failed)."""
    from ckan.lib.mailer import mail_recipient

    recipients: list[tuple[str, str, list[Change], bool]] = [
        (user.display_name, user.email, found, True) for user in _admins(org.id)]
    if tk.config.get("ckanext.archiver.notify_maintainers"):
        admin_emails = {email.strip().lower() for _n, email, _c, _a in recipients}
        by_maintainer: dict[str, list[Change]] = {}
        for change in found:
            email = (change.maintainer_email or "").strip()
            if "@" in email and email.lower() not in admin_emails:
                by_maintainer.setdefault(email, []).append(change)
        recipients += [(email, email, rows, False) for email, rows in by_maintainer.items()]
    sent = failed = 0
    error: Optional[str] = None
    report_url = tk.url_for("archiver.report_org", org=org.name, qualified=True)
    for name, email, rows, is_admin in recipients:
        extra = {
            "organization": org, "recipient_name": name, "is_admin": is_admin,
            "broken": [c for c in rows if c.broken],
            "recovered": [c for c in rows if not c.broken],
            "since": since, "until": until, "report_url": report_url,
            "limit": DIGEST_MAX_ROWS,
        }
        subject = render_email("archiver/extra/digest_subject.txt", extra).strip()
        body = render_email("archiver/extra/digest_email.txt", extra)
        try:
            mail_recipient(name, email, subject, body)
            sent += 1
        except Exception as e:  # noqa: BLE001 - any mail failure: counted, one line
            error = mail_failure(e)
            log.error("Could not send the link digest of %s to %s: %s", org.name, email, error)
            failed += 1
    return sent, failed, error


# ---------------------------------------------------------------------------
# Webhook


def sign(body: bytes, secret: str) -> str:
    """The ``X-Archiver-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def _webhook_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = True  # HTTP(S)_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE
    proxy = tk.config.get("ckanext.archiver.proxy")
    if proxy:
        session.proxies = {"http": proxy, "https": proxy}
    guard = netguard.Guard.build(tk.config.get("ckanext.archiver.allow_private_networks"),
                                 tuple(tk.config.get("ckanext.archiver.allowed_networks")))
    netguard.install_guard(session, guard, max_retries=0)
    return session


def _retry_after(response: requests.Response) -> Optional[float]:
    value = response.headers.get("Retry-After", "")
    try:
        return min(max(float(value), 0.0), _MAX_RETRY_AFTER)
    except ValueError:
        return None


def post_webhook(payload: dict[str, Any], url: Optional[str] = None,
                 secret: Optional[str] = None) -> bool:
    """POST ``payload`` as JSON to the webhook; retried on connection
    errors, time-outs, 429 and 5xx. Returns whether it was delivered (a
    2xx answer). Never raises."""
    from ckanext.archiver import tasks

    url = url if url is not None else tk.config.get("ckanext.archiver.webhook_url")
    secret = secret if secret is not None else tk.config.get("ckanext.archiver.webhook_secret")
    if not url:
        return False
    try:
        url = netguard.normalise_url(url)
    except netguard.InvalidURL as e:
        log.error("webhook_url is not usable: %s", e.reason)
        return False
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
    headers = {"Content-Type": "application/json", "User-Agent": tasks.user_agent(),
               "X-Archiver-Event": str(payload.get("event") or ""),
               "X-Archiver-Delivery": str(uuid.uuid4())}
    if secret:
        headers[SIGNATURE_HEADER] = sign(body, secret)
    retries = max(int(tk.config.get("ckanext.archiver.webhook_retries")), 0)
    delay = max(float(tk.config.get("ckanext.archiver.webhook_retry_delay")), 0.0)
    timeout = float(tk.config.get("ckanext.archiver.webhook_timeout"))
    session = _webhook_session()
    try:
        for attempt in range(retries + 1):
            wait = delay * (2 ** attempt)
            try:
                response = session.post(url, data=body, headers=headers, timeout=timeout,
                                        allow_redirects=False)
                code = response.status_code
                response.close()
                if 200 <= code < 300:
                    return True
                if code != 429 and code < 500:
                    log.error("Webhook %s refused the call: HTTP %d", url, code)
                    return False
                wait = max(wait, _retry_after(response) or 0.0)
                problem = f"HTTP {code}"
            except netguard.BlockedAddress as e:
                log.error("Webhook %s not called: %s", url, e.reason)
                return False
            except requests.RequestException as e:
                problem = type(e).__name__
            if attempt < retries:
                log.warning("Webhook %s failed (%s), retry %d of %d in %.1f s",
                            url, problem, attempt + 1, retries, wait)
                time.sleep(wait)
            else:
                log.error("Webhook %s failed (%s); giving up after %d attempts",
                          url, problem, attempt + 1)
        return False
    finally:
        session.close()


def _payload(org: model.Group, found: list[Change], since: datetime.datetime,
             until: datetime.datetime) -> dict[str, Any]:
    return {
        "event": WEBHOOK_EVENT,
        "site_url": tk.config.get("ckan.site_url"),
        "site_id": tk.config.get("ckan.site_id"),
        "sent_at": utcnow().isoformat(),
        "organization": {"id": org.id, "name": org.name, "title": org.title},
        "since": since.isoformat(), "until": until.isoformat(),
        "broken": [c.as_dict() for c in found if c.broken],
        "recovered": [c.as_dict() for c in found if not c.broken],
    }


# ---------------------------------------------------------------------------
# A run (ckan archiver notify)


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


class AlreadyRunning(RuntimeError):
    pass


def _organizations(ids: Iterable[str] = ()) -> list[model.Group]:
    query = model.Session.query(model.Group).filter(
        model.Group.is_organization.is_(True), model.Group.state == "active")
    ids = list(ids)
    if ids:
        query = query.filter(sa.or_(model.Group.id.in_(ids), model.Group.name.in_(ids)))
    return query.order_by(model.Group.name).all()


def run(organizations: Iterable[str] = (), now: Optional[datetime.datetime] = None,
        dry_run: bool = False) -> list[OrgResult]:
    """Send the digests (and webhook calls) due; returns what was done per
    organization with changes or an action taken. ``dry_run`` computes
    without sending or remembering anything.

    :raises AlreadyRunning: another ``notify`` run holds the lock.
    """
    until = now or utcnow()
    first = until - datetime.timedelta(days=int(tk.config.get(
        "ckanext.archiver.notify_first_days")))
    webhook_url = tk.config.get("ckanext.archiver.webhook_url")
    # begin(): a transaction that works alike on SQLAlchemy 1.4 and 2.0
    with model.meta.engine.begin() as lock:
        if not lock.execute(sa.text("SELECT pg_try_advisory_lock(:k)"),
                            {"k": _LOCK_KEY}).scalar():
            raise AlreadyRunning("Another `ckan archiver notify` is running")
        try:
            results = []
            for org in _organizations(organizations):
                result = _run_org(org, until, first, webhook_url, dry_run)
                if result is not None:
                    results.append(result)
            return results
        finally:
            lock.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})


def _run_org(org: model.Group, until: datetime.datetime, first: datetime.datetime,
             webhook_url: Optional[str], dry_run: bool) -> Optional[OrgResult]:
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
                org, found, digest_since, until)
            digest_done = result.mails_sent > 0 or result.mails_failed == 0
    webhook_done = False
    if webhook_url:
        hook_since = (state.last_webhook_at if state else None) or first
        found = found_since(hook_since)
        if found:
            if len(found) > result.broken + result.recovered:  # a longer window
                result.broken = sum(1 for c in found if c.broken)
                result.recovered = len(found) - result.broken
            if not dry_run:
                result.webhook = post_webhook(_payload(org, found, hook_since, until))
                webhook_done = result.webhook
        else:
            webhook_done = True
    if dry_run:
        return result if (result.broken or result.recovered) else None
    if digest_done or webhook_done:
        state = state or OrgNotify.get_or_new(org.id)
        if digest_done:
            state.last_digest_at = until
        if webhook_done:
            state.last_webhook_at = until
        model.Session.commit()
    if result.broken or result.recovered or result.webhook is not None:
        return result
    return None


def set_opt_out(organization_id: str, opt_out: bool, user_id: Optional[str]) -> OrgNotify:
    """Switch an organization's digest emails off (or on again)."""
    state = OrgNotify.get_or_new(organization_id)
    if bool(state.opt_out) != bool(opt_out) or state.opt_out_changed is None:
        state.opt_out = bool(opt_out)
        state.opt_out_by = user_id
        state.opt_out_changed = utcnow()
        if not opt_out:
            # back on: start from now, not from before the opt-out
            state.last_digest_at = utcnow()
    model.Session.commit()
    return state
