"""Checks, site faults, freshness skips and moved links.

New ``archival`` columns:

* ``last_checked``: the last real contact with the server (a freshness skip
  or a site fault does not move it; ``updated`` is when the worker last
  wrote the row);
* ``fresh_skip_at``: when a check last skipped the server because its
  previous response was still fresh (cleared by a real check);
* ``site_fault`` / ``site_fault_at``: the reason and time of the last fault
  of the site (archive folder, disk, quota, database, worker) since the last
  real check; the link's verdict is kept;
* ``moved_to``: where a permanent redirect (301 / 308) points;
* ``retries``: retries the last check needed.

``archival_history.attempt``: 0 for the first attempt of a check, n for its
n-th retry; ``archival_history.site_fault``: a fault of the site, not a
check of the link.

Existing rows: ``last_checked`` is ``updated``. ``failure_count`` counted
attempts (a check and its retries); it becomes the number of failed checks
since the last success, counted from the history by taking failed attempts
less than 20 minutes after the previous failed attempt as retries of the
same check (retries come within minutes; ``retry_delay`` doubles up to 15
minutes), and never more than the old count. A row whose status is 23
(system error) gets back the status of its last check that was not a
system error (from the history), and its reason becomes its site fault.

Revision ID: a4c9e2f71b36
Revises: e38bdd52cb23
Create Date: 2026-12-01 16:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "a4c9e2f71b36"
down_revision = "e38bdd52cb23"
branch_labels = None
depends_on = None

ARCHIVAL_COLUMNS = [
    ("last_checked", sa.DateTime),
    ("fresh_skip_at", sa.DateTime),
    ("site_fault", sa.UnicodeText),
    ("site_fault_at", sa.DateTime),
    ("moved_to", sa.UnicodeText),
    ("retries", sa.Integer),
]


def upgrade():
    for name, type_ in ARCHIVAL_COLUMNS:
        op.add_column("archival", sa.Column(name, type_))
    op.add_column("archival_history", sa.Column(
        "attempt", sa.Integer, nullable=False, server_default="0"))
    op.add_column("archival_history", sa.Column(
        "site_fault", sa.Boolean, nullable=False, server_default=sa.false()))
    op.execute("UPDATE archival_history SET site_fault = true WHERE status_id = 23")
    op.execute("UPDATE archival SET last_checked = updated, retries = 0 "
               "WHERE status_id IS NOT NULL")
    # status 23: the link's verdict of its last real check comes back
    op.execute("""
        UPDATE archival a
        SET site_fault = a.reason, site_fault_at = a.updated
        WHERE a.status_id = 23
    """)
    op.execute("""
        UPDATE archival a
        SET status_id = h.status_id, is_broken = h.is_broken, reason = NULL,
            last_checked = h.checked_at
        FROM (
            SELECT DISTINCT ON (resource_id) resource_id, status_id, is_broken, checked_at
            FROM archival_history WHERE status_id <> 23
            ORDER BY resource_id, checked_at DESC, id DESC
        ) h
        WHERE a.resource_id = h.resource_id AND a.status_id = 23
    """)
    op.execute("UPDATE archival SET failure_count = 0, first_failure = NULL "
               "WHERE site_fault_at IS NOT NULL AND is_broken IS FALSE")
    # failure_count: failed checks, not attempts
    op.execute("""
        WITH streak AS (
            SELECT h.resource_id, h.checked_at,
                   lag(h.checked_at) OVER (PARTITION BY h.resource_id
                                           ORDER BY h.checked_at, h.id) AS prev_at
            FROM archival_history h JOIN archival a ON a.resource_id = h.resource_id
            WHERE a.failure_count > 0 AND h.is_broken IS NOT FALSE AND h.status_id <> 23
              AND h.checked_at >= coalesce(a.first_failure, 'epoch')
              AND h.checked_at > coalesce(a.last_success, 'epoch')
        ), checks AS (
            SELECT resource_id,
                   count(*) FILTER (WHERE prev_at IS NULL
                                    OR checked_at - prev_at > interval '20 minutes') AS n
            FROM streak GROUP BY resource_id
        )
        UPDATE archival a SET failure_count = greatest(1, least(a.failure_count, c.n))
        FROM checks c WHERE a.resource_id = c.resource_id
    """)


def downgrade():
    op.execute("UPDATE archival SET status_id = 23, is_broken = NULL, reason = site_fault "
               "WHERE site_fault_at IS NOT NULL AND site_fault_at >= "
               "coalesce(last_checked, 'epoch')")
    op.drop_column("archival_history", "site_fault")
    op.drop_column("archival_history", "attempt")
    for name, _ in reversed(ARCHIVAL_COLUMNS):
        op.drop_column("archival", name)
