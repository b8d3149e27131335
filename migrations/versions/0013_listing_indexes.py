"""Indexes for the admin API's cursor pagination and search (issue 9).

Every list of the admin API pages by keyset: `WHERE (sort key, tie-breakers) > (cursor)
ORDER BY ... LIMIT n`, which an index on exactly those columns answers by reading n entries
from the cursor on, however deep the page (OFFSET would read and drop every row before it).

- instances (last_seen_at, id): hosts by last seen, ties broken by machine id. It replaces the
  index on last_seen_at alone, which retirement's `last_seen_at <= cutoff` uses as well.
- instance_apps (version, instance_id, app_id): hosts by version.
- instances alias and ip: the search finds a host by its alias or its address.
- events (created_at, id) and activity (created_at, id): the fleet-wide logs, newest first
  (event retention's `created_at < cutoff` uses the first too).
- grants, completions and failures by instance_id: one host's history (and deleting a host,
  whose rows there go by cascade) without a scan of every grant.

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_instances_last_seen_id", "instances", ["last_seen_at", "id"])
    op.drop_index("ix_instances_last_seen_at", table_name="instances")
    op.create_index("ix_instances_alias", "instances", ["alias"])
    op.create_index("ix_instances_ip", "instances", ["ip"])
    op.create_index(
        "ix_instance_apps_version_key", "instance_apps", ["version", "instance_id", "app_id"]
    )
    op.create_index("ix_events_time_id", "events", ["created_at", "id"])
    op.create_index("ix_activity_time_id", "activity", ["created_at", "id"])
    op.create_index("ix_grants_instance_time", "grants", ["instance_id", "granted_at"])
    op.create_index("ix_completions_instance", "completions", ["instance_id"])
    op.create_index("ix_failures_instance", "failures", ["instance_id"])


def downgrade() -> None:
    op.drop_index("ix_failures_instance", table_name="failures")
    op.drop_index("ix_completions_instance", table_name="completions")
    op.drop_index("ix_grants_instance_time", table_name="grants")
    op.drop_index("ix_activity_time_id", table_name="activity")
    op.drop_index("ix_events_time_id", table_name="events")
    op.drop_index("ix_instance_apps_version_key", table_name="instance_apps")
    op.drop_index("ix_instances_ip", table_name="instances")
    op.drop_index("ix_instances_alias", table_name="instances")
    op.create_index("ix_instances_last_seen_at", "instances", ["last_seen_at"])
    op.drop_index("ix_instances_last_seen_id", table_name="instances")
