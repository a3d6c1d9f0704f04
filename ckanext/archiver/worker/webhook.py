"""The webhook of publisher notifications: the changes of an organization as
JSON, POSTed to ``webhook_url``, signed with ``webhook_secret``
(``X-Archiver-Signature: sha256=<hex HMAC-SHA256 of the body>``), retried with
backoff (at least the server's Retry-After); the address passes the same SSRF
guard as archived links."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from typing import Any, Optional

import requests

from ckanext.archiver import config
from ckanext.archiver.engine import netguard
from ckanext.archiver.engine.headers import parse_retry_after
from ckanext.archiver.engine.session import guarded_session

__all__ = ["post_webhook", "sign", "retry_after", "WEBHOOK_EVENT", "SIGNATURE_HEADER"]

log = logging.getLogger(__name__)

WEBHOOK_EVENT = "archiver.links_changed"
SIGNATURE_HEADER = "X-Archiver-Signature"
MAX_RETRY_AFTER = 60.0


def sign(body: bytes, secret: str) -> str:
    """The ``X-Archiver-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def _session(options: config.Options) -> requests.Session:
    return guarded_session(options.allow_private_networks, options.allowed_networks,
                           options.proxy)


def retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds to wait from a Retry-After value (delta-seconds or an HTTP
    date: the download engine's rule), at most MAX_RETRY_AFTER."""
    seconds = parse_retry_after(value)
    return None if seconds is None else min(seconds, MAX_RETRY_AFTER)


def post_webhook(payload: dict[str, Any], url: Optional[str] = None,
                 secret: Optional[str] = None) -> bool:
    """POST ``payload`` as JSON to the webhook; retried on connection
    errors, time-outs, 429 and 5xx. Returns whether it was delivered (a
    2xx answer). Never raises."""
    options = config.current()
    url = url if url is not None else options.webhook_url
    secret = secret if secret is not None else options.webhook_secret
    if not url:
        return False
    try:
        url = netguard.normalise_url(url)
    except netguard.InvalidURL as e:
        log.error("webhook_url is not usable: %s", e.reason)
        return False
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
    headers = {"Content-Type": "application/json", "User-Agent": options.user_agent,
               "X-Archiver-Event": str(payload.get("event") or ""),
               "X-Archiver-Delivery": str(uuid.uuid4())}
    if secret:
        headers[SIGNATURE_HEADER] = sign(body, secret)
    retries, delay = options.webhook_retries, options.webhook_retry_delay
    timeout = options.webhook_timeout
    session = _session(options)
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
                wait = max(wait, retry_after(response.headers.get("Retry-After")) or 0.0)
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
