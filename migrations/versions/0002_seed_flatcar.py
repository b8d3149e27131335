"""Seed Flatcar.

The application, channels alpha/beta/stable/lts for amd64 and arm64, a group per
channel whose track is the channel's name (answering to the legacy CoreOS group UUIDs too), and
the cache stamp row.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

FLATCAR_APP_ID = "e96281a6-d1af-4bde-9a0a-97b76e56dc57"
CHANNELS = ("alpha", "beta", "stable", "lts")
ARCHES = ("amd64", "arm64")
# Group ids: the legacy CoreOS group UUIDs hosts may still send as their track (contract §7).
LEGACY_GROUP_IDS = {
    ("stable", "amd64"): "9a2deb70-37be-4026-853f-bfdd6b347bbe",
    ("beta", "amd64"): "3fe10490-dd73-4b49-b72a-28ac19acfcdc",
    ("alpha", "amd64"): "5b810680-e36a-4879-b98a-4f989e80b899",
    ("stable", "arm64"): "11a585f6-9418-4df0-8863-78b2fd3240f8",
    ("beta", "arm64"): "d112ec01-ba34-4a9e-9d4b-9814a685f266",
    ("alpha", "arm64"): "e641708d-fb48-4260-8bdf-ba2074a1147a",
}
_NAMESPACE = uuid.UUID(FLATCAR_APP_ID)


def _group_id(channel: str, arch: str) -> str:
    legacy = LEGACY_GROUP_IDS.get((channel, arch))
    return legacy or str(uuid.uuid5(_NAMESPACE, f"group/{channel}/{arch}"))


def upgrade() -> None:
    now = datetime.now(UTC)
    applications = sa.table(
        "applications",
        sa.column("id"),
        sa.column("name"),
        sa.column("description"),
        sa.column("created_at"),
    )
    channels = sa.table(
        "channels",
        sa.column("id"),
        sa.column("app_id"),
        sa.column("name"),
        sa.column("arch"),
        sa.column("updated_at"),
        sa.column("updated_by"),
    )
    groups = sa.table(
        "groups",
        sa.column("id"),
        sa.column("app_id"),
        sa.column("name"),
        sa.column("track"),
        sa.column("arch"),
        sa.column("channel_id"),
        sa.column("description"),
        sa.column("created_at"),
        sa.column("updates_enabled"),
        sa.column("safe_mode"),
        sa.column("windows", sa.JSON),
        sa.column("percentage"),
        sa.column("allow_downgrade"),
    )
    op.bulk_insert(
        applications,
        [
            {
                "id": FLATCAR_APP_ID,
                "name": "flatcar",
                "description": "Flatcar Container Linux",
                "created_at": now,
            }
        ],
    )
    channel_rows = []
    group_rows = []
    for n, (arch, channel) in enumerate(((a, c) for a in ARCHES for c in CHANNELS), start=1):
        channel_rows.append(
            {
                "id": n,
                "app_id": FLATCAR_APP_ID,
                "name": channel,
                "arch": arch,
                "updated_at": now,
                "updated_by": "seed",
            }
        )
        group_rows.append(
            {
                "id": _group_id(channel, arch),
                "app_id": FLATCAR_APP_ID,
                "name": channel,
                "track": channel,
                "arch": arch,
                "channel_id": n,
                "description": f"Flatcar {channel} ({arch})",
                "created_at": now,
                "updates_enabled": True,
                "safe_mode": False,
                "windows": [],
                "percentage": 100.0,
                "allow_downgrade": False,
            }
        )
    op.bulk_insert(channels, channel_rows)
    op.bulk_insert(groups, group_rows)
    if op.get_bind().dialect.name == "postgresql":
        # Explicit ids above: move the sequence past them.
        op.execute(
            "SELECT setval(pg_get_serial_sequence('channels', 'id'), (SELECT max(id) FROM channels))"
        )
    op.execute("INSERT INTO config_stamp (id, stamp) VALUES (1, 1)")


def downgrade() -> None:
    op.execute("DELETE FROM config_stamp")
    op.execute(f"DELETE FROM groups WHERE app_id = '{FLATCAR_APP_ID}'")
    op.execute(f"DELETE FROM channels WHERE app_id = '{FLATCAR_APP_ID}'")
    op.execute(f"DELETE FROM applications WHERE id = '{FLATCAR_APP_ID}'")
