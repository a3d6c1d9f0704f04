"""Plain-text emails: rendered from templates without a request (cron and
Celery workers send them too) and sent through CKAN's mailer.

Templates come in pairs, ``<name>_subject.txt`` and ``<name>_email.txt``
(``templates/archiver/extra/``: the link digest and "your zip is ready").
"""

from __future__ import annotations

import logging
from typing import Any

from ckan.common import ugettext, ungettext
from ckan.lib import jinja_extensions
from ckan.lib.mailer import MailerException, mail_recipient
from jinja2 import Environment

from ckanext.archiver import config

__all__ = ["render_email", "send"]

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


def send(name: str, email: str, template: str, extra_vars: dict[str, Any]) -> bool:
    """Render ``<template>_subject.txt`` and ``<template>_email.txt`` and mail
    them; returns whether the mailer took the message (a failure is logged,
    never raised)."""
    subject = render_email(f"{TEMPLATES}{template}_subject.txt", extra_vars).strip()
    body = render_email(f"{TEMPLATES}{template}_email.txt", extra_vars)
    try:
        mail_recipient(name, email, subject, body)
    except MailerException:
        log.exception("Could not send the %s email to %s", template, email)
        return False
    return True
