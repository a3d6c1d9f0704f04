"""A partial index of the queued rows of ``archival``.

``ix_archival_queued``: ``queued_at`` of the rows queued and not recorded
since (``queued_at > coalesce(updated, 'epoch')``, ``model.rounds.WAITING``),
the rows the live workers' lost-check sweep (``worker.lost`` ->
``model.rows.lost``) asks for every 10 to 60 s, and which ``purge-queues``
(``rows.unqueue_all``), ``requeue-lost`` and the end of a dataset's round
(``rounds.finished_datasets``) look at. Without it each sweep read the whole
table, although after a check almost every row is not queued. The index
holds only the waiting rows: a check that records its row takes it out.
Its key is ``queued_at`` (the sweep's ``queued_at < cutoff``), not
``started_at``, so that ``rows.mark_started`` touches no indexed column.

Measured with bench/bench_sweep.py (1,000,000 rows, 1,000 queued): see
bench/README.md.

Revision ID: c5d8f3a0b912
Revises: a4c9e2f71b36
Create Date: 2026-12-01 22:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "c5d8f3a0b912"
down_revision = "a4c9e2f71b36"
branch_labels = None
depends_on = None

# Written out rather than imported (as model.rounds.WAITING, without its
# alias), so that this revision keeps doing what it did.
WHERE = "queued_at IS NOT NULL AND queued_at > coalesce(updated, 'epoch'::timestamp)"


def upgrade():
    op.create_index("ix_archival_queued", "archival", ["queued_at"],
                    postgresql_where=sa.text(WHERE), if_not_exists=True)


def downgrade():
    op.drop_index("ix_archival_queued", "archival", if_exists=True)
