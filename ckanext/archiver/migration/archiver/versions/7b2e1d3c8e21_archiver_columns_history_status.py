"""Columns, indexes and tables of this archiver.

Adds the columns the new fetcher needs to ``archival`` (in place: the rows of
an older archiver's table are kept), one row per resource enforced by a
unique index, the ``archival_history`` table (one row per check) and the
``archiver_status`` table (ids and texts of the statuses).

Revision ID: 7b2e1d3c8e21
Revises: 6a1f0c2b7d10
Create Date: 2026-11-23 16:55:00
"""

import sqlalchemy as sa
from alembic import op

revision = "7b2e1d3c8e21"
down_revision = "6a1f0c2b7d10"
branch_labels = None
depends_on = None

# Written out rather than imported, so that this revision keeps doing
# what it did when later code changes.
STATUSES = [
    (0, "Archived successfully", False),
    (1, "Content has not changed", False),
    (2, "Link works, file not downloaded", False),
    (10, "URL invalid", True),
    (11, "URL request failed", True),
    (12, "Download error", True),
    (21, "Chose not to download", None),
    (22, "Download failure", None),
    (23, "System error during archival", None),
]

NEW_COLUMNS = [
    ("url", sa.UnicodeText),
    ("http_status", sa.Integer),
    ("cache_control", sa.UnicodeText),
    ("fresh_until", sa.DateTime),
    ("sha256", sa.UnicodeText),
    ("is_web_page", sa.Boolean),
    ("queued_at", sa.DateTime),
    ("started_at", sa.DateTime),
    ("next_check_at", sa.DateTime),
]


def upgrade():
    existing = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(
        "archival")}
    for name, type_ in NEW_COLUMNS:
        if name not in existing:
            op.add_column("archival", sa.Column(name, type_))

    # The older archiver could leave two rows for one resource: keep the
    # most recently updated one, so that one row per resource can be
    # enforced.
    op.execute("""
        DELETE FROM archival a USING archival b
        WHERE a.resource_id = b.resource_id
          AND (coalesce(a.updated, a.created, 'epoch'), a.id)
            < (coalesce(b.updated, b.created, 'epoch'), b.id)
    """)
    op.execute("UPDATE archival SET failure_count = 0 "
               "WHERE failure_count IS NULL")
    op.drop_index("ix_archival_resource_id", "archival", if_exists=True)
    op.create_index("ix_archival_resource_id", "archival", ["resource_id"],
                    unique=True)
    op.create_index("ix_archival_broken_package", "archival",
                    ["package_id"], postgresql_where=sa.text("is_broken"))
    op.create_index("ix_archival_next_check_at", "archival",
                    ["next_check_at"])

    op.create_table(
        "archival_history",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("resource_id", sa.UnicodeText, nullable=False),
        sa.Column("package_id", sa.UnicodeText, nullable=False),
        sa.Column("checked_at", sa.DateTime, nullable=False),
        sa.Column("status_id", sa.Integer, nullable=False),
        sa.Column("is_broken", sa.Boolean),
        sa.Column("http_status", sa.Integer),
        sa.Column("duration", sa.Float),
        sa.Column("bytes_received", sa.BigInteger),
    )
    op.create_index("ix_archival_history_resource_checked",
                    "archival_history", ["resource_id", "checked_at"])
    op.create_index("ix_archival_history_checked_at", "archival_history",
                    ["checked_at"])

    status_table = op.create_table(
        "archiver_status",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("text", sa.UnicodeText, nullable=False),
        sa.Column("is_broken", sa.Boolean),
    )
    op.bulk_insert(status_table, [
        {"id": i, "text": t, "is_broken": b} for i, t, b in STATUSES])


def downgrade():
    op.drop_table("archiver_status")
    op.drop_table("archival_history")
    op.drop_index("ix_archival_next_check_at", "archival")
    op.drop_index("ix_archival_broken_package", "archival")
    op.drop_index("ix_archival_resource_id", "archival")
    op.create_index("ix_archival_resource_id", "archival", ["resource_id"])
    for name, _type in reversed(NEW_COLUMNS):
        op.drop_column("archival", name)
