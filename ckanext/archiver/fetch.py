"""Old import path of the download engine: see ``ckanext.archiver.engine``
(``engine.attempt.fetch`` and the modules it uses)."""

from ckanext.archiver.engine.attempt import REDIRECT_CODES, TRANSIENT_CODES, fetch
from ckanext.archiver.engine.outcome import FetchSettings, Outcome, Previous
from ckanext.archiver.engine.session import get_session
from ckanext.archiver.engine.sniff import (
    GENERIC_TYPES,
    HTML_TYPES,
    SNIFF_BYTES,
    ZIP_TYPES,
    sniff_mimetype,
)

__all__ = ["FetchSettings", "Outcome", "Previous", "fetch", "get_session", "sniff_mimetype",
           "REDIRECT_CODES", "TRANSIENT_CODES", "GENERIC_TYPES", "HTML_TYPES", "SNIFF_BYTES",
           "ZIP_TYPES"]
