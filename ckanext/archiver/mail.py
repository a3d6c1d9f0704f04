"""Plain-text emails: rendered from templates without a request (cron and
Celery workers send them too) and sent through CKAN's mailer.

Templates come in pairs, ``<name>_subject.txt`` and ``<name>_email.txt``
(``templates/archiver/extra/``: the link digest and "your zip is ready").
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from ckan.common import ugettext, ungettext
from ckan.lib import jinja_extensions
from ckan.lib.mailer import mail_recipient
from jinja2 import Environment

from ckanext.archiver import config

__all__ = ["render_email", "send", "mail_failure"]

log = logging.getLogger(__name__)

TEMPLATES = "archiver/extra/"


def render_email(template: str, extra_vars: dict[str, Any]) -> str:
    """Render a plain-text email template (not HTML-escaped)."""
    options = jinja_extensions.get_jinja_env_options()
    options.update(autoescape=False, trim_blocks=True, lstrip_blocks=True)
    env = Environment(**options)
    env.install_gettext_callables(ugettext, ungettext)  # type: ignore[attr-defined]
    env.globals["ungettext"] = ungettext  # as in CKAN's page templates
    options = config.current()
    env.globals["site_title"] = options.site_title
    env.globals["site_url"] = options.site_url
    return env.get_template(template).render(extra_vars)


def send(name: str, email: str, template: str, extra_vars: dict[str, Any]) -> Optional[str]:
    """Render ``<template>_subject.txt`` and ``<template>_email.txt`` and mail
    them; returns None when the mailer took the message, else why not in one
    line (never raises: the caller logs it)."""
    subject = render_email(f"{TEMPLATES}{template}_subject.txt", extra_vars).strip()
    body = render_email(f"{TEMPLATES}{template}_email.txt", extra_vars)
    try:
        mail_recipient(name, email, subject, body)
    except Exception as e:  # noqa: BLE001 - any mail failure: one line
        return mail_failure(e)
    return None


def mail_failure(e: BaseException) -> str:
    """Why a mail could not be sent, in one line. CKAN's mailer raises more
    than MailerException: with ``smtp.mail_from`` unset, an AttributeError
    from deep inside it."""
    if not config.current().smtp_mail_from:
        return "smtp.mail_from is not set"
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
