"""Notification state per organization.

``archiver_org_notify``: one row per organization that has had a digest,
a webhook call or an opt-out. ``last_digest_at`` / ``last_webhook_at`` are
the ends of the windows already reported (the next ``ckan archiver notify``
reports the link changes after them); ``opt_out`` stops the digest emails of
the organization (set by its admins with ``archiver_notify_optout``).

Revision ID: e38bdd52cb23
Revises: dbff675dd9c4
Create Date: 2026-11-23 18:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "e38bdd52cb23"
down_revision = "dbff675dd9c4"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "archiver_org_notify",
        sa.Column("organization_id", sa.UnicodeText, primary_key=True),
        sa.Column("opt_out", sa.Boolean, nullable=False,
                  server_default=sa.false()),
        sa.Column("opt_out_by", sa.UnicodeText),
        sa.Column("opt_out_changed", sa.DateTime),
        sa.Column("last_digest_at", sa.DateTime),
        sa.Column("last_webhook_at", sa.DateTime),
    )


def downgrade():
    op.drop_table("archiver_org_notify")
