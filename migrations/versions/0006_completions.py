"""Completions.

Hosts that completed an update to a version in a group, kept when they move on: safe mode and
the failure gate ask whether anyone completed a version, which hosts' current state forgets once
a host that completed a floor is granted the next version. Backfilled from the hosts that are
complete now (the only completions the old schema remembers).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "completions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("group_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("instance_id", sa.String(length=64), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["groups.id"],
            name=op.f("fk_completions_group_id_groups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            name=op.f("fk_completions_instance_id_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_completions")),
        sa.UniqueConstraint(
            "group_id",
            "version",
            "instance_id",
            name=op.f("uq_completions_group_id_version_instance_id"),
        ),
    )
    op.execute(
        "INSERT INTO completions (group_id, version, instance_id, completed_at) "
        "SELECT group_id, granted_version, instance_id, "
        "COALESCE(completed_at, status_changed_at) FROM instance_apps "
        "WHERE status = 'complete' AND group_id IS NOT NULL AND granted_version IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_table("completions")
