"""Names of the older ckanext-archiver's ``model`` module, for the
extensions written against it (ckanext-qa above all): ``Status``,
``broken_enum`` and ``init_tables``. ``Archival.create`` is on the class
itself and ``aggregate_archivals_for_a_dataset`` beside ``dataset_summary``
(``model/__init__``). Everything here is built on ``status.py``: no second
list of statuses.

Re-exported by ``ckanext.archiver.model``; imports nothing of the model
(no import cycle).
"""

from __future__ import annotations

from typing import Any, Optional

from ckanext.archiver import status as st

__all__ = ["Status", "broken_enum", "init_tables"]

# is_broken -> text, as the older archiver's ``broken_enum``
broken_enum: dict[Optional[bool], str] = {
    value: st.is_broken_printable(value) for value in (True, None, False)}


class Status:
    """The older archiver's status enum, as class methods (it was a
    singleton: ``Status.instance()`` is kept too)."""

    _instance: Optional[Status] = None

    @classmethod
    def instance(cls) -> Status:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    @classmethod
    def by_text(cls, status_txt: str) -> int:
        """Id of a status text; KeyError for an unknown text (as before)."""
        return st.by_text(status_txt)

    @classmethod
    def by_id(cls, status_id: int) -> str:
        """Text of a status id; KeyError for an unknown id (as before)."""
        return st.STATUSES[status_id]

    @classmethod
    def is_status_broken(cls, status_id: int) -> Optional[bool]:
        """False below 10, True for 10..19, None (not sure) from 20."""
        return st.is_broken(status_id)

    @classmethod
    def is_ok(cls, status_id: int) -> bool:
        """Whether the link works (ids below 10; the older archiver had only
        0 and 1 there, this one adds 2, "Link works, file not downloaded")."""
        return st.is_broken(status_id) is False


def init_tables(engine: Any = None) -> None:
    """Make or upgrade the archiver's tables (the plugin's migrations, as
    ``ckan db upgrade -p archiver``; ``engine`` is ignored: CKAN's own is
    used). Older code called this to create the tables."""
    from ckan.cli.db import _run_migrations  # CKAN's CLI module: loaded only when asked

    _run_migrations("archiver")
