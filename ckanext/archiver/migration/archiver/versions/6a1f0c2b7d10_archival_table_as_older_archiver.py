"""The ``archival`` table as the older ckanext-archiver made it.

Portals upgrading from the older archiver already have this table (made by
its ``ckan archiver init``, without alembic): it is then left as it is, with
its rows, and the next revision adds what this archiver needs.

Revision ID: 6a1f0c2b7d10
Revises:
Create Date: 2026-11-23 16:50:00
"""

import sqlalchemy as sa
from alembic import op

revision = "6a1f0c2b7d10"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    if sa.inspect(op.get_bind()).has_table("archival"):
        return
    op.create_table(
        "archival",
        sa.Column("id", sa.UnicodeText, primary_key=True),
        sa.Column("package_id", sa.UnicodeText, nullable=False),
        sa.Column("resource_id", sa.UnicodeText, nullable=False),
        sa.Column("resource_timestamp", sa.DateTime),
        sa.Column("status_id", sa.Integer),
        sa.Column("is_broken", sa.Boolean),
        sa.Column("reason", sa.UnicodeText),
        sa.Column("url_redirected_to", sa.UnicodeText),
        sa.Column("cache_filepath", sa.UnicodeText),
        sa.Column("cache_url", sa.UnicodeText),
        sa.Column("size", sa.BigInteger),
        sa.Column("mimetype", sa.UnicodeText),
        sa.Column("hash", sa.UnicodeText),
        sa.Column("etag", sa.UnicodeText),
        sa.Column("last_modified", sa.UnicodeText),
        sa.Column("first_failure", sa.DateTime),
        sa.Column("last_success", sa.DateTime),
        sa.Column("failure_count", sa.Integer),
        sa.Column("created", sa.DateTime),
        sa.Column("updated", sa.DateTime),
    )
    op.create_index("ix_archival_package_id", "archival", ["package_id"])
    op.create_index("ix_archival_resource_id", "archival", ["resource_id"])


def downgrade():
    op.drop_table("archival")
