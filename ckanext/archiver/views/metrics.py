"""``archiver_extra.metrics`` (``/archiver/metrics``): the service figures as
Prometheus text.

It answers 404 unless ``metrics_enabled``, and 403 without
``X-Archiver-Metrics-Token: <metrics_token>`` (or ``Authorization: Bearer
<metrics_token>``, which CKAN also tries, and fails, as an API token: it logs
an error on every scrape).
"""

from __future__ import annotations

import hmac

import ckan.plugins.toolkit as tk
from flask import Response, request

from ckanext.archiver import config
from ckanext.archiver.worker import figures

__all__ = ["metrics", "METRICS_TOKEN_HEADER"]


METRICS_TOKEN_HEADER = "X-Archiver-Metrics-Token"


def _token_ok(expected: str) -> bool:
    given = request.headers.get(METRICS_TOKEN_HEADER)
    if given is None:
        scheme, _, given = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
    return bool(expected) and hmac.compare_digest(given.strip().encode("utf-8"),
                                                  expected.encode("utf-8"))


def metrics():
    """Prometheus text: 404 unless enabled, 403 without the right token."""
    options = config.current()
    if not options.metrics_enabled:
        tk.abort(404)
    request.environ["__no_cache__"] = True
    if not _token_ok(options.metrics_token):
        return Response("Forbidden\n", status=403, mimetype="text/plain")
    response = Response(figures.prometheus_text(), status=200)
    response.headers["Content-Type"] = figures.PROMETHEUS_CONTENT_TYPE
    response.headers["Cache-Control"] = "no-store"
    return response
