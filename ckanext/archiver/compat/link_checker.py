"""The older archiver's ``link_checker`` (served as
``ckanext.archiver.tasks.link_checker(context_json, data_json)``, which
passes the configured ``FetchSettings``) and the exception classes of its
``tasks`` module. Imports nothing from CKAN (only ``engine``).

ckanext-qa's "check link" page calls ``link_checker`` with a URL typed by
any visitor: the HEAD request goes through the engine's session (the SSRF
guard checks every address it connects to), with the engine's timeouts
(``url_timeout`` can only shorten them) and its wall-clock deadline; no
body is read and redirects are not followed (as before: the ``location``
header is returned). The error texts qa's tests look for are the older
archiver's.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import requests
import urllib3

from ckanext.archiver.engine import netguard, urlnorm
from ckanext.archiver.engine.deadline import Deadline
from ckanext.archiver.engine.headers import status_line
from ckanext.archiver.engine.outcome import FetchSettings
from ckanext.archiver.engine.session import get_session

log = logging.getLogger(__name__)

__all__ = [
    "ArchiverError", "ArchiverErrorBeforeDownloadStarted", "DownloadException",
    "ArchiverErrorAfterDownloadStarted", "DownloadError", "ArchiveError",
    "ChooseNotToDownload", "NotChanged", "LinkCheckerError", "LinkInvalidError",
    "LinkHeadRequestError", "LinkHeadMethodNotSupported", "CkanError",
    "check", "tidy_url",
]

ALLOWED_SCHEMES = urlnorm.ALLOWED_SCHEMES


class ArchiverError(Exception):
    pass


class ArchiverErrorBeforeDownloadStarted(ArchiverError):
    pass


class DownloadException(ArchiverError):
    pass


class ArchiverErrorAfterDownloadStarted(ArchiverError):
    def __init__(self, msg: str, url_redirected_to: Any = None):
        super().__init__(msg)
        self.url_redirected_to = url_redirected_to


class DownloadError(ArchiverErrorAfterDownloadStarted):
    pass


class ArchiveError(ArchiverErrorAfterDownloadStarted):
    pass


class ChooseNotToDownload(ArchiverErrorAfterDownloadStarted):
    pass


class NotChanged(ArchiverErrorAfterDownloadStarted):
    pass


class LinkCheckerError(ArchiverError):
    pass


class LinkInvalidError(LinkCheckerError):
    pass


class LinkHeadRequestError(LinkCheckerError):
    pass


class LinkHeadMethodNotSupported(LinkCheckerError):
    pass


class CkanError(ArchiverError):
    pass


def tidy_url(url: str) -> str:
    """``url`` normalised as the engine fetches it.

    :raises LinkInvalidError: (texts of the older archiver where it had one)
    """
    url = (url or "").strip()
    try:
        parsed = urllib3.util.parse_url(url)
    except urllib3.exceptions.LocationParseError as e:
        raise LinkInvalidError(f"URL parsing failure: {e}") from None
    if not parsed.scheme or parsed.scheme.lower() not in ALLOWED_SCHEMES:
        raise LinkInvalidError("Invalid url scheme. Please use one of: {}".format(
            " ".join(ALLOWED_SCHEMES)))
    if not parsed.host:
        raise LinkInvalidError("URL parsing failure - did not find a host name")
    try:
        return urlnorm.normalise_url(url)
    except urlnorm.InvalidURL as e:
        raise LinkInvalidError(e.reason) from None


def check(context: str, data: str, settings: FetchSettings) -> str:
    """HEAD ``data["url"]`` (JSON ``{"url": ..., "url_timeout": ...}``);
    return the response headers as a JSON object with lower-case names.

    :raises LinkInvalidError: the URL cannot be checked (or is refused by
        the SSRF guard)
    :raises LinkHeadMethodNotSupported: the server answered 405
    :raises LinkHeadRequestError: no answer, or an HTTP error status
    """
    data_dict = json.loads(data)
    url = tidy_url(data_dict.get("url") or "")
    try:
        wanted = float(data_dict.get("url_timeout") or 30)
    except (TypeError, ValueError):
        wanted = 30.0
    wanted = max(wanted, 0.1)
    connect = min(settings.connect_timeout, wanted)
    read = min(settings.read_timeout, wanted)
    session = get_session(settings)
    deadline = Deadline(min(settings.total_timeout, wanted + connect))
    try:
        with netguard.observe_sockets(deadline.observe):
            response = session.request(
                "HEAD", url, stream=True, allow_redirects=False, timeout=(connect, read),
                verify=settings.verify_https)
        response.close()
    except netguard.BlockedAddress as e:
        raise LinkInvalidError(e.reason) from None
    except requests.Timeout:
        raise LinkHeadRequestError(f"Connection timed out after {wanted:g}s") from None
    except requests.TooManyRedirects:
        raise LinkHeadRequestError("Too many redirects") from None
    except requests.ConnectionError as e:
        if deadline.expired:
            raise LinkHeadRequestError(f"Connection timed out after {wanted:g}s") from None
        raise LinkHeadRequestError(f"Connection error: {type(e).__name__}") from None
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError) as e:
        raise LinkHeadRequestError(f"Error during request: {type(e).__name__}") from None
    finally:
        deadline.stop()
    if response.status_code == 405:
        raise LinkHeadMethodNotSupported()
    if response.status_code >= 400:
        raise LinkHeadRequestError(
            f"Server returned HTTP error status: {status_line(response)}")
    headers = {name.lower(): value for name, value in response.headers.items()
               if "\x00" not in value}
    return json.dumps(headers)
