"""Status counts.

Hosts per group and status, maintained with every status change, filled here from the hosts
there are.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "status_counts",
        sa.Column("group_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["groups.id"],
            name=op.f("fk_status_counts_group_id_groups"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("group_id", "status", "shard", name=op.f("pk_status_counts")),
    )
    op.execute(
        "INSERT INTO status_counts (group_id, status, shard, count) "
        "SELECT group_id, status, 0, count(*) FROM instance_apps "
        "WHERE group_id IS NOT NULL GROUP BY group_id, status"
    )


def downgrade() -> None:
    op.drop_table("status_counts")
