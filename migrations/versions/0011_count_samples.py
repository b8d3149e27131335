"""Count samples: the rollup behind rollout history.

Every few minutes the leader copies each group's status counts (status x version, summed over
their shards) into `count_samples` at one time stamp, so that "versions and statuses over the
last hour, day, 7 and 30 days" is a read of a few hundred rows, never a scan of hosts or
events. Samples older than a day are thinned to the hourly ones (`hourly`), and all are
pruned after history_retention.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "count_samples",
        sa.Column("group_id", sa.String(length=36), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("hosts", sa.Integer(), nullable=False),
        sa.Column("hourly", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["groups.id"],
            name=op.f("fk_count_samples_group_id_groups"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "group_id", "at", "status", "version", name=op.f("pk_count_samples")
        ),
    )


def downgrade() -> None:
    op.drop_table("count_samples")
