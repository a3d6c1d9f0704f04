"""The pooled, SSRF-guarded ``requests`` sessions of a process. No CKAN
imports.

Whether ``requests`` should read the proxy variables and a ``.netrc``
file is decided when a session is made: a session made where no proxy
variable is set and no ``.netrc`` file exists does not look for them at
each request (``requests`` would go through the whole environment twice a
request, a third of its own CPU on a 2 KB download); it still honours
``REQUESTS_CA_BUNDLE`` and ``CURL_CA_BUNDLE``. ``get_session`` makes a new
session when one of those variables changes."""

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

# what requests takes from the environment for an http(s) request
_PROXIES = ("http_proxy", "https_proxy", "all_proxy")
_ENVIRONMENT = (*_PROXIES, "no_proxy", *(n.upper() for n in (*_PROXIES, "no_proxy")),
                "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NETRC", "HOME")


def _environment() -> tuple:
    return tuple(os.environ.get(name) for name in _ENVIRONMENT)


def _needs_environment() -> bool:
    """A proxy variable is set or a ``.netrc`` file exists (as requests
    looks for them): requests then reads the environment at each request."""
    if any(os.environ.get(n) or os.environ.get(n.upper()) for n in _PROXIES):
        return True
    netrc = os.environ.get("NETRC")
    places = [netrc] if netrc else ["~/.netrc", "~/_netrc"]
    return any(os.path.exists(os.path.expanduser(p)) for p in places)


class _Session(requests.Session):
    """A session that reads the environment at each request only when it
    has something to read there (see the module's docstring)."""

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # noqa: ANN001, ANN201
        if not self.trust_env and (verify is True or verify is None):
            verify = (os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
                      or verify)
        return super().merge_environment_settings(url, proxies, stream, verify, cert)


def get_session(settings: FetchSettings) -> requests.Session:
    """The process's pooled session for ``settings`` (created once, with the
    SSRF guard installed; a forked worker gets its own)."""
    key = (os.getpid(), settings, _environment())
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
    session = _Session()
    # HTTP(S)_PROXY, NO_PROXY, .netrc: read at each request where there are
    # any when the session is made; REQUESTS_CA_BUNDLE (or CURL_CA_BUNDLE)
    # at each request either way
    session.trust_env = _needs_environment()
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
