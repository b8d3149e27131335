"""Initial schema.

Applications, packages and their files, channels, groups, instances, instance state, the event
log, API tokens and the cache stamp.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("role IN ('admin', 'viewer')", name=op.f("ck_api_tokens_role")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("name", name=op.f("uq_api_tokens_name")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_table(
        "applications",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_applications")),
        sa.UniqueConstraint("name", name=op.f("uq_applications_name")),
    )
    op.create_table(
        "config_stamp",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stamp", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_config_stamp_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_config_stamp")),
    )
    op.create_table(
        "instances",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("alias", sa.String(length=255), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("oem", sa.String(length=64), nullable=True),
        sa.Column("oem_version", sa.String(length=64), nullable=True),
        sa.Column("aleph_version", sa.String(length=64), nullable=True),
        sa.Column("board", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instances")),
    )
    op.create_table(
        "packages",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("arch", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("from_version", sa.String(length=64), nullable=True),
        sa.Column("base_url", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.CheckConstraint(
            "(kind = 'full' AND from_version IS NULL) OR (kind = 'delta' AND from_version IS NOT NULL)",
            name=op.f("ck_packages_delta_source"),
        ),
        sa.CheckConstraint("kind IN ('full', 'delta')", name=op.f("ck_packages_kind")),
        sa.ForeignKeyConstraint(
            ["app_id"],
            ["applications.id"],
            name=op.f("fk_packages_app_id_applications"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_packages")),
    )
    with op.batch_alter_table("packages", schema=None) as batch_op:
        batch_op.create_index(
            "uq_packages_delta",
            ["app_id", "arch", "version", "from_version"],
            unique=True,
            sqlite_where=sa.text("kind = 'delta'"),
            postgresql_where=sa.text("kind = 'delta'"),
        )
        batch_op.create_index(
            "uq_packages_full",
            ["app_id", "arch", "version"],
            unique=True,
            sqlite_where=sa.text("kind = 'full'"),
            postgresql_where=sa.text("kind = 'full'"),
        )

    op.create_table(
        "channels",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("arch", sa.String(length=16), nullable=False),
        sa.Column("package_id", sa.String(length=36), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"],
            ["applications.id"],
            name=op.f("fk_channels_app_id_applications"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["package_id"],
            ["packages.id"],
            name=op.f("fk_channels_package_id_packages"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channels")),
        sa.UniqueConstraint("app_id", "name", "arch", name=op.f("uq_channels_app_id_name_arch")),
    )
    op.create_table(
        "package_files",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("package_id", sa.String(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha1", sa.String(length=40), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("stored", sa.Boolean(), nullable=False),
        sa.Column("signer", sa.String(length=64), nullable=True),
        sa.CheckConstraint("length(sha1) = 40", name=op.f("ck_package_files_sha1_len")),
        sa.CheckConstraint("length(sha256) = 64", name=op.f("ck_package_files_sha256_len")),
        sa.CheckConstraint("position >= 0", name=op.f("ck_package_files_position")),
        sa.CheckConstraint("size > 0", name=op.f("ck_package_files_size_positive")),
        sa.ForeignKeyConstraint(
            ["package_id"],
            ["packages.id"],
            name=op.f("fk_package_files_package_id_packages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_package_files")),
        sa.UniqueConstraint("package_id", "name", name=op.f("uq_package_files_package_id_name")),
        sa.UniqueConstraint(
            "package_id", "position", name=op.f("uq_package_files_package_id_position")
        ),
    )
    with op.batch_alter_table("package_files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_package_files_sha256"), ["sha256"], unique=False)

    op.create_table(
        "groups",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("track", sa.String(length=100), nullable=False),
        sa.Column("arch", sa.String(length=16), nullable=False),
        sa.Column("channel_id", sa.Integer(), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updates_enabled", sa.Boolean(), nullable=False),
        sa.Column("paused_reason", sa.Text(), nullable=True),
        sa.Column("paused_by", sa.String(length=100), nullable=True),
        sa.Column("paused_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("max_updates_per_period", sa.Integer(), nullable=True),
        sa.Column("period_seconds", sa.Integer(), nullable=True),
        sa.Column("max_concurrent", sa.Integer(), nullable=True),
        sa.Column("update_timeout_seconds", sa.Integer(), nullable=True),
        sa.Column("safe_mode", sa.Boolean(), nullable=False),
        sa.Column("pause_on_failed_hosts", sa.Integer(), nullable=True),
        sa.Column("pause_on_failed_percent", sa.Float(), nullable=True),
        sa.Column("windows", sa.JSON(), nullable=False),
        sa.Column("percentage", sa.Float(), nullable=False),
        sa.Column("pin_version", sa.String(length=64), nullable=True),
        sa.Column("allow_downgrade", sa.Boolean(), nullable=False),
        sa.CheckConstraint(
            "percentage >= 0 AND percentage <= 100", name=op.f("ck_groups_percentage")
        ),
        sa.ForeignKeyConstraint(
            ["app_id"],
            ["applications.id"],
            name=op.f("fk_groups_app_id_applications"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["channel_id"],
            ["channels.id"],
            name=op.f("fk_groups_channel_id_channels"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_groups")),
        sa.UniqueConstraint("app_id", "name", "arch", name=op.f("uq_groups_app_id_name_arch")),
        sa.UniqueConstraint("app_id", "track", "arch", name=op.f("uq_groups_app_id_track_arch")),
    )
    op.create_table(
        "events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("instance_id", sa.String(length=64), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("group_id", sa.String(length=36), nullable=True),
        sa.Column("event_type", sa.Integer(), nullable=False),
        sa.Column("event_result", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.BigInteger(), nullable=True),
        sa.Column("base_code", sa.Integer(), nullable=True),
        sa.Column("flags", sa.BigInteger(), nullable=True),
        sa.Column("version", sa.String(length=64), nullable=True),
        sa.Column("previous_version", sa.String(length=64), nullable=True),
        sa.Column("boot_id", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["app_id"],
            ["applications.id"],
            name=op.f("fk_events_app_id_applications"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["group_id"], ["groups.id"], name=op.f("fk_events_group_id_groups"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            name=op.f("fk_events_instance_id_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_group_time", ["group_id", "created_at"], unique=False)
        batch_op.create_index(
            "ix_events_instance_time", ["instance_id", "created_at"], unique=False
        )

    op.create_table(
        "instance_apps",
        sa.Column("instance_id", sa.String(length=64), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("group_id", sa.String(length=36), nullable=True),
        sa.Column("track", sa.String(length=100), nullable=True),
        sa.Column("version", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("boot_id", sa.String(length=64), nullable=True),
        sa.Column("granted_version", sa.String(length=64), nullable=True),
        sa.Column("granted_package_id", sa.String(length=36), nullable=True),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_check_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error_code", sa.BigInteger(), nullable=True),
        sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("hold_reason", sa.String(length=32), nullable=True),
        sa.Column("held", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('new', 'idle', 'granted', 'downloading', 'downloaded', 'installed', 'complete', 'error', 'rolled_back', 'timed_out')",
            name=op.f("ck_instance_apps_status"),
        ),
        sa.ForeignKeyConstraint(
            ["app_id"],
            ["applications.id"],
            name=op.f("fk_instance_apps_app_id_applications"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["granted_package_id"],
            ["packages.id"],
            name=op.f("fk_instance_apps_granted_package_id_packages"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["groups.id"],
            name=op.f("fk_instance_apps_group_id_groups"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            name=op.f("fk_instance_apps_instance_id_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("instance_id", "app_id", name=op.f("pk_instance_apps")),
    )
    with op.batch_alter_table("instance_apps", schema=None) as batch_op:
        batch_op.create_index("ix_instance_apps_group_status", ["group_id", "status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("instance_apps", schema=None) as batch_op:
        batch_op.drop_index("ix_instance_apps_group_status")

    op.drop_table("instance_apps")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_instance_time")
        batch_op.drop_index("ix_events_group_time")

    op.drop_table("events")
    op.drop_table("groups")
    with op.batch_alter_table("package_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_package_files_sha256"))

    op.drop_table("package_files")
    op.drop_table("channels")
    with op.batch_alter_table("packages", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_packages_full",
            sqlite_where=sa.text("kind = 'full'"),
            postgresql_where=sa.text("kind = 'full'"),
        )
        batch_op.drop_index(
            "uq_packages_delta",
            sqlite_where=sa.text("kind = 'delta'"),
            postgresql_where=sa.text("kind = 'delta'"),
        )

    op.drop_table("packages")
    op.drop_table("instances")
    op.drop_table("config_stamp")
    op.drop_table("applications")
    op.drop_table("api_tokens")
