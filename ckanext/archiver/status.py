"""Archival status ids, their texts and the ok / broken / not-sure rule.

This is the one place that knows them. It imports nothing from CKAN so that
``fetch.py`` can use it too. The ids and texts are a compatibility contract
with the older ckanext-archiver (and ckanext-qa, which reads the texts):
never renumber or reword them; new ids go in free slots.
"""

from __future__ import annotations

from typing import Optional

ARCHIVED = 0
UNCHANGED = 1
CHECKED = 2
URL_INVALID = 10
REQUEST_FAILED = 11
DOWNLOAD_ERROR = 12
CHOSE_NOT_TO_DOWNLOAD = 21
DOWNLOAD_FAILURE = 22
SYSTEM_ERROR = 23


def N_(message: str) -> str:
    """Mark a message for translation without translating it (babel
    extracts ``N_``; pages translate the text when they show it)."""
    return message


STATUSES: dict[int, str] = {
    ARCHIVED: N_("Archived successfully"),
    UNCHANGED: N_("Content has not changed"),
    CHECKED: N_("Link works, file not downloaded"),
    URL_INVALID: N_("URL invalid"),
    REQUEST_FAILED: N_("URL request failed"),
    DOWNLOAD_ERROR: N_("Download error"),
    CHOSE_NOT_TO_DOWNLOAD: N_("Chose not to download"),
    DOWNLOAD_FAILURE: N_("Download failure"),
    SYSTEM_ERROR: N_("System error during archival"),
}


def text(status_id: Optional[int]) -> Optional[str]:
    """The display text of a status id (None for None, a fallback for an
    id this version does not know)."""
    if status_id is None:
        return None
    return STATUSES.get(status_id, f"Unknown status {status_id}")


def is_broken(status_id: Optional[int]) -> Optional[bool]:
    """The contract rule: id < 10 ok, 10..19 broken, 20+ not sure (None)."""
    if status_id is None or status_id >= 20:
        return None
    return status_id >= 10


def is_broken_printable(broken: Optional[bool]) -> str:
    """Text shown for ``is_broken`` (same words as the older archiver)."""
    if broken is None:
        return N_("Not sure if broken")
    return N_("Broken") if broken else N_("Downloaded OK")


def by_text(status_text: str) -> int:
    """The id of a status text (the older archiver stored texts in places)."""
    for status_id, status_text_ in STATUSES.items():
        if status_text_ == status_text:
            return status_id
    raise KeyError(status_text)
