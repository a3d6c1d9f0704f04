"""Template helpers (``archiver_*``)."""

from __future__ import annotations

from typing import Any, Optional

from ckanext.archiver import status as st


def archiver_is_broken_printable(is_broken: Optional[bool]) -> str:
    return st.is_broken_printable(is_broken)


def get_helpers() -> dict[str, Any]:
    return {"archiver_is_broken_printable": archiver_is_broken_printable}
