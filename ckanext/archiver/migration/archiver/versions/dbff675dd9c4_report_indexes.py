"""Indexes of the broken-links report.

* ``ix_archival_history_broken``: the broken checks only, by date, carrying
  the resource id, for the trend chart (an index-only scan of a small
  fraction of ``archival_history``);
* ``ix_archiver_resource_active``: active resources by id, carrying their
  dataset id, so that the report joins ``archival -> resource`` with an
  index-only scan instead of reading the (wide) resource table;
* ``ix_archiver_package_owner_org``: datasets by organization (CKAN core has
  no such index; it searches with Solr) for the organization pages.

The last two are on CKAN core tables, named ``ix_archiver_*`` so that it is
clear whose they are; ``downgrade`` removes them. Creating them locks writes
to those tables for the time the index takes to build (seconds for a million
resources).

Measured with bench/bench_report.py (100k resources, 1.4M history rows):
the trend query went from ~1 s to ~0.13 s, the index summary from ~0.2 s to
~0.12 s.

Revision ID: dbff675dd9c4
Revises: 7b2e1d3c8e21
Create Date: 2026-11-23 17:05:00
"""

import sqlalchemy as sa
from alembic import op

revision = "dbff675dd9c4"
down_revision = "7b2e1d3c8e21"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index(
        "ix_archival_history_broken", "archival_history", ["checked_at"],
        postgresql_include=["resource_id"],
        postgresql_where=sa.text("is_broken"), if_not_exists=True)
    op.create_index(
        "ix_archiver_resource_active", "resource", ["id"],
        postgresql_include=["package_id"],
        postgresql_where=sa.text("state = 'active'"), if_not_exists=True)
    op.create_index(
        "ix_archiver_package_owner_org", "package", ["owner_org"],
        if_not_exists=True)


def downgrade():
    op.drop_index("ix_archiver_package_owner_org", "package", if_exists=True)
    op.drop_index("ix_archiver_resource_active", "resource", if_exists=True)
    op.drop_index("ix_archival_history_broken", "archival_history",
                  if_exists=True)
