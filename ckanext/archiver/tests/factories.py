"""Test data: archival rows beside CKAN's own factories."""

from __future__ import annotations

import datetime
from typing import Any

from ckan import model

from ckanext.archiver import status as st
from ckanext.archiver.model import Archival, utcnow


def make_archival(resource: dict[str, Any], status_id: int = st.ARCHIVED,
                  **fields: Any) -> Archival:
    """Write an archival row for a resource dict (from a factory)."""
    now = utcnow()
    values: dict[str, Any] = dict(
        package_id=resource["package_id"],
        resource_id=resource["id"],
        status_id=status_id,
        is_broken=st.is_broken(status_id),
        reason=st.text(status_id),
        url=resource.get("url"),
        created=now,
        updated=now,
        failure_count=0,
    )
    if values["is_broken"]:
        values.update(first_failure=now - datetime.timedelta(days=3),
                      failure_count=3)
    else:
        values.update(last_success=now)
    values.update(fields)
    # creating the resource queued it, which made a placeholder row
    archival = model.Session.query(Archival).filter(
        Archival.resource_id == resource["id"]).one_or_none()
    if archival is None:
        archival = Archival(**values)
        model.Session.add(archival)
    else:
        for key, value in values.items():
            setattr(archival, key, value)
    model.Session.commit()
    return archival
