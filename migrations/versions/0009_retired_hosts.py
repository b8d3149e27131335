"""Retired hosts: a host not seen for its group's `retire_after` (14 days by default) leaves every
count until it checks in again.

Autoscaled and replaced machines never check in again; counted for ever, they keep a rollout
from looking done and its progress from adding up. `instance_apps.retired_at` marks a host the
retirement job (nebula.jobs.retirement) took out of the maintained counts; its state and history
stay, and its next check-in brings it back. A partial index finds the retired hosts of a group
(`instance list --retired`), an index on `instances.last_seen_at` the hosts gone silent.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

RETIRE_AFTER_DEFAULT = 14 * 86400

# Plain ALTER TABLE (see 0008): a batch rebuild of `groups` on SQLite would cascade its
# momentary delete into status_counts.


def upgrade() -> None:
    op.add_column(
        "groups",
        sa.Column(
            "retire_after_seconds",
            sa.Integer(),
            server_default=sa.text(str(RETIRE_AFTER_DEFAULT)),
            nullable=True,
        ),
    )
    op.add_column("instance_apps", sa.Column("retired_at", sa.DateTime(timezone=True)))
    op.create_index(
        "ix_instance_apps_retired",
        "instance_apps",
        ["group_id"],
        unique=False,
        sqlite_where=sa.text("retired_at IS NOT NULL"),
        postgresql_where=sa.text("retired_at IS NOT NULL"),
    )
    op.create_index("ix_instances_last_seen_at", "instances", ["last_seen_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_instances_last_seen_at", table_name="instances")
    op.drop_index("ix_instance_apps_retired", table_name="instance_apps")
    op.drop_column("instance_apps", "retired_at")
    op.drop_column("groups", "retire_after_seconds")
