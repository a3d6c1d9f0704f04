"""The pooled, SSRF-guarded ``requests`` sessions of a process. No CKAN
imports."""

from __future__ import annotations

import os
import threading
from http.cookiejar import DefaultCookiePolicy
from typing import Any, Optional

import requests
import urllib3
from urllib3.exceptions import InsecureRequestWarning

from ckanext.archiver.engine import netguard
from ckanext.archiver.engine.outcome import FetchSettings

__all__ = ["get_session", "guarded_session"]

_sessions: dict = {}
_sessions_lock = threading.Lock()


def get_session(settings: FetchSettings) -> requests.Session:
    """The process's pooled session for ``settings`` (created once, with the
    SSRF guard installed; a forked worker gets its own)."""
    key = (os.getpid(), settings)
    with _sessions_lock:
        session = _sessions.get(key)
        if session is None:
            session = _sessions[key] = _new_session(settings)
        return session


def guarded_session(allow_private_networks: bool = False, allowed_networks: tuple = (),
                    proxy: Optional[str] = None, **adapter_kwargs: Any) -> requests.Session:
    """A new session behind the SSRF guard that honours the standard proxy
    variables and ``proxy``, and keeps no cookies (the archiver's downloads
    and the webhook both use this)."""
    session = requests.Session()
    session.trust_env = True  # HTTP(S)_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE
    # No cookies kept between resources (nor sent to other sites).
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    if proxy:
        session.proxies = {"http": proxy, "https": proxy}
    guard = netguard.Guard.build(allow_private_networks, allowed_networks)
    netguard.install_guard(session, guard, max_retries=0, **adapter_kwargs)
    return session


def _new_session(settings: FetchSettings) -> requests.Session:
    session = guarded_session(settings.allow_private_networks, settings.allowed_networks,
                              settings.proxy, pool_connections=100, pool_maxsize=64)
    session.headers.update(
        {
            "User-Agent": settings.user_agent,
            "Accept": "*/*",
            "Accept-Encoding": "identity",
        }
    )
    session.verify = settings.verify_https
    session.max_redirects = settings.max_redirects
    if not settings.verify_https:
        urllib3.disable_warnings(InsecureRequestWarning)
    return session
