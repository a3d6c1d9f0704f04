"""Exceptions of requests, urllib3, ssl and the OS as a status and a reason a
publisher can read. No CKAN imports."""

from __future__ import annotations

import socket
import ssl
from http.client import RemoteDisconnected
from typing import Any, Iterator, Optional

import requests
import urllib3
from urllib3.exceptions import DecodeError, NameResolutionError

from ckanext.archiver import status
from ckanext.archiver.engine.headers import human, mb
from ckanext.archiver.engine.netguard import STALE
from ckanext.archiver.engine.outcome import Outcome
from ckanext.archiver.engine.urlnorm import host_of


class Done(Exception):
    """Ends an attempt early with its outcome."""

    def __init__(self, outcome: Outcome):
        self.outcome = outcome


READ_TIMEOUTS = (urllib3.exceptions.ReadTimeoutError, requests.ReadTimeout, socket.timeout)


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions linked to it: causes, contexts, ``args``
    and urllib3's ``reason``, nearest first."""
    seen, todo = set(), [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        linked.extend(getattr(current, "args", ()))
        todo.extend(item for item in linked if isinstance(item, BaseException))


def find(exc: BaseException, types: tuple) -> Optional[BaseException]:
    """The first exception of ``types`` in ``exc``'s chain."""
    return next((current for current in chain(exc) if isinstance(current, types)), None)


def stale_connection(exc: BaseException) -> bool:
    """True when ``exc`` is a pooled connection the server had closed, found
    out before any byte of a response (marked by ``engine.netguard``)."""
    return any(getattr(current, STALE, False) for current in chain(exc))


_UNTRUSTED_CODES = {2, 18, 19, 20, 21, 27}  # unknown issuer, self-signed, untrusted...


def tls_reason(e: BaseException, host: str) -> str:
    verify = find(e, (ssl.SSLCertVerificationError,))
    if verify is not None:
        code = getattr(verify, "verify_code", None)
        message = str(getattr(verify, "verify_message", "") or verify)
        if code in (62, 64) or "mismatch" in message.lower() or "doesn't match" in message:
            return f"TLS certificate not valid for host {host}"
        if code == 10 or "expired" in message.lower():
            return "TLS certificate has expired"
        if code in _UNTRUSTED_CODES or "self" in message.lower() or "issuer" in message.lower():
            return "TLS certificate is self-signed / not trusted"
        return f"TLS certificate could not be verified ({message})"
    ssl_error = find(e, (ssl.SSLError,))
    detail = getattr(ssl_error, "reason", None) if ssl_error is not None else None
    if detail == "WRONG_VERSION_NUMBER":
        return "TLS handshake failed (the server does not seem to speak HTTPS on this port)"
    return f"TLS handshake failed ({detail or type(e).__name__})"


def os_error(e: OSError) -> str:
    return e.strerror or type(e).__name__  # never the file path


# -- the mapping: each returns (status_id, reason, {"transient": ...}) ------

Failure = tuple  # (status_id, reason, fields for the Outcome)


def timeout(settings: Any) -> Failure:
    return (status.REQUEST_FAILED, f"Timed out after {settings.total_timeout:g} s",
            {"transient": True})


def too_large(cap: int, content_encoding: str, bytes_received: int) -> Failure:
    """The decoded body went over ``cap`` (its length was not announced)."""
    encoding = (content_encoding or "").strip().lower()
    reason = f"File too large: over the {mb(cap)} limit"
    if encoding and encoding != "identity":
        reason += (f" once decompressed (the server sent {human(bytes_received)} "
                   f"{encoding}-compressed)")
    else:
        reason += " (the server did not say how large it is)"
    return status.CHOSE_NOT_TO_DOWNLOAD, reason, {}


def incomplete(length: Optional[int], bytes_received: int) -> Failure:
    if length is not None:
        reason = f"Connection closed after {bytes_received} of {length} bytes"
    else:
        reason = f"Connection closed before the end of the file (after {bytes_received} bytes)"
    return status.DOWNLOAD_FAILURE, reason, {"transient": True}


def body_error(e: BaseException, settings: Any, expired: bool, length: Optional[int],
               bytes_received: int, content_encoding: str) -> Failure:
    """An error while reading the body."""
    if expired:
        return timeout(settings)
    if find(e, READ_TIMEOUTS):
        return (status.REQUEST_FAILED,
                f"Timed out after {settings.read_timeout:g} s waiting for data",
                {"transient": True})
    if find(e, (DecodeError,)):
        return (status.DOWNLOAD_FAILURE,
                f"Could not decompress the response (Content-Encoding: {content_encoding})", {})
    return incomplete(length, bytes_received)


def request_error(e: BaseException, url: str, settings: Any, expired: bool) -> Failure:
    """An error before a response (connect, TLS, name resolution...)."""
    host = host_of(url)
    if expired:
        return timeout(settings)
    if isinstance(e, requests.exceptions.InvalidURL):
        return status.URL_INVALID, "URL is not valid", {}
    if isinstance(e, requests.ConnectTimeout):
        return (status.REQUEST_FAILED,
                f"Timed out after {settings.connect_timeout:g} s connecting to {host}",
                {"transient": True})
    if isinstance(e, requests.ReadTimeout):
        return (status.REQUEST_FAILED,
                f"Timed out after {settings.read_timeout:g} s waiting for the server to respond",
                {"transient": True})
    if isinstance(e, requests.exceptions.SSLError) or find(e, (ssl.SSLError,)):
        return status.REQUEST_FAILED, tls_reason(e, host), {}
    if isinstance(e, requests.exceptions.ProxyError):
        return (status.REQUEST_FAILED, "Could not connect through the proxy server",
                {"transient": True})
    return _connection_error(e, host)


def _connection_error(e: BaseException, host: str) -> Failure:
    resolution = find(e, (NameResolutionError, socket.gaierror))
    if resolution is not None:
        gai = find(e, (socket.gaierror,))
        temporary = gai is not None and gai.errno == socket.EAI_AGAIN
        return (status.REQUEST_FAILED, f"Could not resolve host name {host}",
                {"transient": temporary})
    if find(e, (RemoteDisconnected,)):
        return (status.REQUEST_FAILED, "Server closed the connection without a response",
                {"transient": True})
    if find(e, (ConnectionRefusedError,)):
        return status.REQUEST_FAILED, "Connection refused", {"transient": True}
    if find(e, (ConnectionResetError,)):
        return status.REQUEST_FAILED, "Connection reset by the server", {"transient": True}
    os_error = find(e, (OSError,))
    if os_error is not None and getattr(os_error, "strerror", None):
        return (status.REQUEST_FAILED, f"Could not connect ({os_error.strerror})",
                {"transient": True})
    if find(e, (urllib3.exceptions.ProtocolError,)) or isinstance(e, requests.ConnectionError):
        return (status.REQUEST_FAILED, "Server sent an invalid HTTP response",
                {"transient": True})
    return status.REQUEST_FAILED, f"Request failed ({type(e).__name__})", {}
