"""sysext images and their promotions.

`sysext_images` holds the systemd-sysext images Nebula hosts for systemd-sysupdate (one row per
name, version and arch; the bytes live in the payload store under their SHA-256), and
`sysext_promotions` which of them each track (a host's GROUP=) sees in its SHA256SUMS index.
An image stays while it is promoted (ON DELETE RESTRICT).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "sysext_images",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("arch", sa.String(length=8), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.CheckConstraint("arch IN ('x86-64', 'arm64')", name=op.f("ck_sysext_images_arch")),
        sa.CheckConstraint("size > 0", name=op.f("ck_sysext_images_size_positive")),
        sa.CheckConstraint("length(sha256) = 64", name=op.f("ck_sysext_images_sha256_len")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sysext_images")),
        sa.UniqueConstraint(
            "name", "version", "arch", name=op.f("uq_sysext_images_name_version_arch")
        ),
    )
    op.create_index(op.f("ix_sysext_images_sha256"), "sysext_images", ["sha256"], unique=False)
    op.create_table(
        "sysext_promotions",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("track", sa.String(length=100), nullable=False),
        sa.Column("image_id", _ID, nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("promoted_by", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["sysext_images.id"],
            name=op.f("fk_sysext_promotions_image_id_sysext_images"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sysext_promotions")),
        sa.UniqueConstraint("track", "image_id", name=op.f("uq_sysext_promotions_track_image_id")),
    )
    op.create_index(
        op.f("ix_sysext_promotions_image_id"), "sysext_promotions", ["image_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_sysext_promotions_image_id"), table_name="sysext_promotions")
    op.drop_table("sysext_promotions")
    op.drop_index(op.f("ix_sysext_images_sha256"), table_name="sysext_images")
    op.drop_table("sysext_images")
