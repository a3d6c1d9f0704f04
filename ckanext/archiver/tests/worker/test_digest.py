"""Link digests (through CKAN's mailer and its mail_server fixture), the
opt-out, and the signed, retried webhook against a real local server."""

from __future__ import annotations

import datetime
import email
import hashlib
import hmac
import json

import ckan.plugins.toolkit as tk
import pytest
import sqlalchemy as sa
from ckan import model
from ckan.cli.cli import ckan
from ckan.tests import factories
from ckan.tests.helpers import call_action
from werkzeug import Response

from ckanext.archiver import status as st
from ckanext.archiver.model import ArchivalHistory, org_notify, utcnow
from ckanext.archiver.tests.factories import make_archival
from ckanext.archiver.worker import digest, dispatch, webhook

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db", "archiver_env",
                                     "archiver_clean_proxy_env")

DEAD = "http://127.0.0.1:9/"
NOW = utcnow()
HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)


@pytest.fixture(autouse=True)
def no_auto_queue(monkeypatch):
    monkeypatch.setattr(dispatch, "needing_check", lambda package_id: [])


def checks(resource, *results):
    """History rows: (when, is_broken) pairs (None: not sure)."""
    for when, broken in results:
        status_id = {True: st.DOWNLOAD_ERROR, False: st.ARCHIVED, None: st.DOWNLOAD_FAILURE}[broken]
        model.Session.add(ArchivalHistory(
            resource_id=resource["id"], package_id=resource["package_id"],
            checked_at=when, status_id=status_id, is_broken=broken))
    model.Session.commit()
    last = max(results, key=lambda r: r[0])[1]
    make_archival(resource, {True: st.DOWNLOAD_ERROR, False: st.ARCHIVED,
                             None: st.DOWNLOAD_FAILURE}[last],
                  reason="Server returned 404 Not Found" if last else None)


def as_user(name):
    return {"user": name, "ignore_auth": False}


class Site:
    """``rivers`` (admin, editor) with a public and a private dataset whose
    links changed in every way since the last digest (two days ago), and
    ``roads`` whose one link broke."""

    def __init__(self):
        self.admin = factories.User(email="admin@example.org")
        self.editor = factories.User(email="editor@example.org")
        self.org = factories.Organization(name="rivers", title="Rivers Agency", users=[
            {"name": self.admin["name"], "capacity": "admin"},
            {"name": self.editor["name"], "capacity": "editor"}])
        self.public = factories.Dataset(
            owner_org=self.org["id"], name="flows", title="Flows",
            maintainer_email="keeper@example.org", resources=[
                {"name": n, "url": DEAD + n + ".csv"} for n in
                ("broke", "fixed", "still", "new", "flap", "unsure")])
        broke, fixed, still, new, flap, unsure = self.public["resources"]
        self.private = factories.Dataset(
            owner_org=self.org["id"], name="secret-wells", title="Secret wells",
            private=True, resources=[{"name": "wells", "url": DEAD + "w.csv"}])
        self.other_org = factories.Organization(name="roads")
        self.other = factories.Dataset(owner_org=self.other_org["id"], resources=[
            {"name": "lanes", "url": DEAD + "l.csv"}])
        before, since = NOW - 3 * DAY, NOW - 2 * DAY
        checks(broke, (before, False), (NOW - HOUR, True))
        checks(fixed, (before, True), (NOW - 2 * HOUR, False))
        checks(still, (before, True), (NOW - HOUR, True))
        checks(new, (NOW - 3 * HOUR, True))
        checks(flap, (before, False), (NOW - 5 * HOUR, True), (NOW - HOUR, False))
        checks(unsure, (before, False), (NOW - HOUR, None))
        checks(self.private["resources"][0], (before, False), (NOW - HOUR, True))
        checks(self.other["resources"][0], (before, False), (NOW - HOUR, True))
        for org in (self.org, self.other_org):
            model.Session.add(org_notify.OrgNotify(organization_id=org["id"],
                                               last_digest_at=since, last_webhook_at=since))
        model.Session.commit()


@pytest.fixture
def site():
    return Site()


def mails(mail_server):
    out = []
    for _none, _sender, to, message in mail_server.get_smtp_messages():
        msg = email.message_from_string(message)
        body = "\n".join(p.get_payload(decode=True).decode("utf-8") for p in msg.walk()
                         if p.get_content_type() == "text/plain")
        out.append((to, str(email.header.make_header(email.header.decode_header(
            msg["Subject"]))), body))
    return out


def test_changes_since_last_digest(site):
    found = org_notify.changes(site.org["id"], NOW - 2 * DAY, NOW)
    assert [(c.resource_name, c.broken) for c in found] == [
        ("broke", True), ("fixed", False), ("new", True), ("wells", True)]
    assert found[-1].private and found[0].reason == "Server returned 404 Not Found"


def test_digest_mailed_to_admins_once(site, mail_server):
    results = digest.run()
    assert [(r.organization, r.broken, r.recovered, r.mails_sent) for r in results] == [
        ("rivers", 3, 1, 1), ("roads", 1, 0, 0)]  # roads has no admin with an email
    ((to, subject, body),) = mails(mail_server)
    assert to == ["admin@example.org"]
    assert subject == "[Archiver tests] Links of Rivers Agency: 3 broken, 1 fixed"
    assert "3 links are now broken:" in body and "1 link works again:" in body
    broken_part, fixed_part = body.split("works again:")
    for name in ("Flows - broke", "Flows - new", "wells"):
        assert name in broken_part
    assert "Flows - fixed" in fixed_part and "still" not in body and "flap" not in body
    assert "Secret wells (private) - wells" in body
    assert DEAD + "broke.csv" in body and "Server returned 404 Not Found" in body
    assert f"http://test.ckan.net/dataset/flows/resource/{site.public['resources'][0]['id']}" \
        in body
    assert "http://test.ckan.net/report/broken-links/rivers" in body
    assert "archiver_notify_optout" in body
    model.Session.expire_all()
    state = org_notify.OrgNotify.get(site.org["id"])
    assert state.last_digest_at == NOW or state.last_digest_at > NOW
    # nothing new: nothing sent
    mail_server.clear_smtp_messages()
    assert digest.run() == []
    assert mails(mail_server) == []


def test_first_digest_covers_notify_first_days(mail_server, ckan_config, monkeypatch):
    monkeypatch.setitem(ckan_config, "ckanext.archiver.notify_first_days", 1)
    admin = factories.User(email="boss@example.org")
    org = factories.Organization(users=[{"name": admin["name"], "capacity": "admin"}])
    pkg = factories.Dataset(owner_org=org["id"], resources=[
        {"name": "old", "url": DEAD + "a"}, {"name": "recent", "url": DEAD + "b"}])
    old, recent = pkg["resources"]
    checks(old, (NOW - 3 * DAY, False), (NOW - 2 * DAY, True))
    checks(recent, (NOW - 3 * HOUR, True))
    (result,) = digest.run()
    assert (result.broken, result.recovered, result.mails_sent) == (1, 0, 1)
    ((_to, _subject, body),) = mails(mail_server)
    assert "recent" in body and " - old" not in body


def test_opt_out_by_org_admins(site, mail_server):
    with pytest.raises(tk.NotAuthorized):
        call_action("archiver_notify_optout", as_user(site.editor["name"]), id="rivers")
    state = call_action("archiver_notify_optout", as_user(site.admin["name"]), id="rivers")
    assert state["opt_out"] is True and state["organization_id"] == site.org["id"]
    assert [r.organization for r in digest.run()] == ["roads"]
    assert mails(mail_server) == []
    model.Session.expire_all()
    assert org_notify.OrgNotify.get(site.org["id"]).last_digest_at >= NOW  # window moved on

    state = call_action("archiver_notify_optout", as_user(site.admin["name"]),
                        id=site.org["id"], opt_out=False)
    assert state["opt_out"] is False
    checks(site.public["resources"][2], (utcnow(), False))  # "still" is fixed now
    digest.run()
    ((_to, subject, body),) = mails(mail_server)
    assert "0 broken, 1 fixed" in subject and "Flows - still" in body
    with pytest.raises(tk.ObjectNotFound):
        call_action("archiver_notify_optout", as_user(site.admin["name"]), id="nope")


def test_maintainers_get_their_datasets_rows(site, mail_server, ckan_config, monkeypatch):
    monkeypatch.setitem(ckan_config, "ckanext.archiver.notify_maintainers", True)
    monkeypatch.setattr(digest, "DIGEST_MAX_ROWS", 1)
    digest.run(["rivers"])
    by_address = {tuple(to): body for to, _subject, body in mails(mail_server)}
    assert set(by_address) == {("admin@example.org",), ("keeper@example.org",)}
    admin = by_address[("admin@example.org",)]
    assert "3 links are now broken:" in admin and "... and 2 more." in admin
    assert "Flows - new" not in admin  # beyond the limit
    keeper = by_address[("keeper@example.org",)]
    assert "Flows - broke" in keeper and "wells" not in keeper and "Flows - new" not in keeper
    assert "maintainer" in keeper and "archiver_notify_optout" not in keeper


# -- webhook -------------------------------------------------------------------

@pytest.fixture
def hook(httpserver, ckan_config, monkeypatch):
    """A webhook receiver on 127.0.0.1: answers the statuses queued in
    ``hook.statuses`` (then 200) and records each call."""
    class Hook:
        statuses: list[int] = []
        calls: list[tuple[bytes, dict]] = []
        url = httpserver.url_for("/hook")

    def handler(request):
        Hook.calls.append((request.get_data(), dict(request.headers)))
        status = Hook.statuses.pop(0) if Hook.statuses else 200
        return Response("ok" if status == 200 else "error", status=status)

    Hook.statuses, Hook.calls = [], []
    httpserver.expect_request("/hook", method="POST").respond_with_handler(handler)
    for key, value in {"webhook_url": Hook.url, "webhook_secret": "s3cret",
                       "webhook_retry_delay": 0.01, "webhook_retries": 2}.items():
        monkeypatch.setitem(ckan_config, "ckanext.archiver." + key, value)
    return Hook


def test_webhook_signed_and_retried_after_a_500(site, hook, mail_server):
    org_notify.set_opt_out(site.org["id"], True, None)  # stops emails, not the site's webhook
    hook.statuses = [500]
    results = {r.organization: r for r in digest.run()}
    assert results["rivers"].webhook is True and results["roads"].webhook is True
    assert results["rivers"].opted_out and mails(mail_server) == []
    rivers_calls = [(body, headers) for body, headers in hook.calls
                    if json.loads(body)["organization"]["name"] == "rivers"]
    assert len(hook.calls) == 3 and len(rivers_calls) == 2  # rivers: 500, then 200
    for body, headers in hook.calls:
        expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        assert headers["X-Archiver-Signature"] == "sha256=" + expected
        assert headers["Content-Type"] == "application/json"
    payload = json.loads(rivers_calls[-1][0])
    assert payload["event"] == "archiver.links_changed"
    assert [c["resource_name"] for c in payload["broken"]] == ["broke", "new", "wells"]
    assert [c["resource_name"] for c in payload["recovered"]] == ["fixed"]
    assert payload["broken"][-1]["private"] is True
    model.Session.expire_all()
    assert org_notify.OrgNotify.get(site.org["id"]).last_webhook_at >= NOW
    assert webhook.sign(b"{}", "k") == "sha256=" + hmac.new(
        b"k", b"{}", hashlib.sha256).hexdigest()


def test_webhook_failure_is_reported_again(site, hook, mail_server, cli, make_ini):
    hook.statuses = [500, 502, 503]
    ini = make_ini(webhook_url=hook.url, webhook_secret="s3cret", webhook_retry_delay=0.01,
                   webhook_retries=2)
    result = cli.invoke(ckan, ["-c", ini, "archiver", "notify", "rivers"])
    assert result.exit_code == 1, result.output
    assert "rivers: 3 broken, 1 fixed, 1 emails sent, webhook FAILED" in result.output
    assert len(hook.calls) == 3
    model.Session.expire_all()
    state = org_notify.OrgNotify.get(site.org["id"])
    assert state.last_webhook_at < NOW and state.last_digest_at >= NOW
    again = cli.invoke(ckan, ["-c", ini, "archiver", "notify", "rivers"])
    assert again.exit_code == 0, again.output
    assert "rivers: 3 broken, 1 fixed, 0 emails sent, webhook delivered" in again.output
    assert len(mails(mail_server)) == 1  # the digest was not sent twice


def test_webhook_goes_through_the_ssrf_guard(hook, ckan_config, monkeypatch, caplog):
    monkeypatch.setitem(ckan_config, "ckanext.archiver.allowed_networks", [])
    assert webhook.post_webhook({"event": "test"}) is False
    assert hook.calls == []
    monkeypatch.setitem(ckan_config, "ckanext.archiver.allowed_networks", ["127.0.0.1"])
    assert webhook.post_webhook({"event": "test"}) is True
    assert webhook.post_webhook({"event": "test"}, url="file:///etc/passwd") is False


def test_one_run_at_a_time(site):
    with model.meta.engine.begin() as other:
        other.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": org_notify._LOCK_KEY})
        try:
            with pytest.raises(org_notify.AlreadyRunning):
                digest.run()
        finally:
            other.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": org_notify._LOCK_KEY})


def test_mail_failure_is_counted_and_logged_in_one_line(site, ckan_config, monkeypatch,
                                                        caplog, cli, make_ini):
    """smtp.mail_from unset: CKAN's mailer raises AttributeError, not
    MailerException; the run goes on and the digest is tried again."""
    monkeypatch.setitem(ckan_config, "smtp.mail_from", None)
    (rivers, _roads) = digest.run()
    assert (rivers.mails_sent, rivers.mails_failed, rivers.mail_error) == (
        0, 1, "smtp.mail_from is not set")
    lines = [r.getMessage() for r in caplog.records if "link digest" in r.getMessage()]
    assert lines == ["Could not send the link digest of rivers to admin@example.org: "
                     "smtp.mail_from is not set"]
    ini = make_ini()
    with open(ini) as f:
        text = f.read().replace("smtp.mail_from = archiver@test.ckan.net", "")
    with open(ini, "w") as f:
        f.write(text)
    result = cli.invoke(ckan, ["-c", ini, "archiver", "notify", "rivers"])
    assert result.exit_code == 1, result.output  # something failed: cron sees it
    # the command refuses before trying (one line); digest.run() above counts it
    assert result.output.count("\n") == 1
    assert "smtp.mail_from is not set" in result.output
    assert "Traceback" not in result.output
