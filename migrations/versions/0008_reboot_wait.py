"""Hosts waiting for their reboot: when a host became `installed`, and the group's choices about
such hosts.

The update timeout used to run from the grant to completion, so a host that installed an update
and waited days for its reboot window (locksmithd, FLUO, kured) was timed out and counted as a
failure. Now the timeout ends at `installed`; `installed_at` says how long a host has waited
since (backfilled from the time of its last status change, which for an installed host is that
moment). Per group: an optional reboot timeout that only warns (none by default), and whether an
installed host still holds a concurrency slot (on by default: it has a reboot ahead).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


# Plain ALTER TABLE ADD/DROP COLUMN (SQLite has both), not batch mode: batch mode may rebuild a
# table on SQLite, and rebuilding `groups` deletes its rows for a moment, which the foreign keys
# cascade into status_counts and instance_apps.group_id.


def upgrade() -> None:
    op.add_column("instance_apps", sa.Column("installed_at", sa.DateTime(timezone=True)))
    op.add_column("groups", sa.Column("reboot_timeout_seconds", sa.Integer(), nullable=True))
    op.add_column(
        "groups",
        sa.Column(
            "installed_counts_as_updating", sa.Boolean(), server_default=sa.true(), nullable=False
        ),
    )
    op.execute(
        "UPDATE instance_apps SET installed_at = status_changed_at WHERE status = 'installed'"
    )


def downgrade() -> None:
    op.drop_column("groups", "installed_counts_as_updating")
    op.drop_column("groups", "reboot_timeout_seconds")
    op.drop_column("instance_apps", "installed_at")
