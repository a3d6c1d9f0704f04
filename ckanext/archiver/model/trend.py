"""Where the broken-links trend starts: the portal's first recorded check."""

from __future__ import annotations

import datetime
from typing import Optional

import sqlalchemy as sa
from ckan import model


def first_check_date() -> Optional[datetime.date]:
    """The day of the oldest ``archival_history`` row (index on
    ``checked_at``), or None before the first check."""
    first = model.Session.execute(
        sa.text("SELECT min(checked_at) FROM archival_history")).scalar()
    return first.date() if first else None


def since_first_check(trend: list[tuple[datetime.date, int]]
                      ) -> list[tuple[datetime.date, int]]:
    """``trend`` without the days before the first check (they are not
    zero broken links, they are no data)."""
    first = first_check_date()
    if first is None:
        return []
    return [(day, count) for day, count in trend if day >= first]
