"""History grids: count samples thin out in three steps as they age.

`count_samples.hourly` becomes `grid`: the coarsest grid the sample's time stamp lies on, in
seconds (14400 on a four-hour boundary, 3600 on the hour, 0 otherwise; UTC). Every sample is
kept for a day, those on the hour for a week, those on a four-hour boundary for the retention,
and each history window reads one grid: the 30-day window 180 time stamps instead of 720.
An index on `at` serves taking, thinning and pruning samples, which select by time.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from __future__ import annotations

from datetime import UTC

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

GRIDS = (14400, 3600)

samples = sa.table(
    "count_samples",
    sa.column("at", sa.DateTime(timezone=True)),
    sa.column("hourly", sa.Boolean()),
    sa.column("grid", sa.Integer()),
)


def upgrade() -> None:
    op.add_column(
        "count_samples", sa.Column("grid", sa.Integer(), nullable=False, server_default="0")
    )
    bind = op.get_bind()
    # A few hundred distinct stamps at most (hourly ones for the retention): computed here,
    # the same way on both databases.
    stamps = bind.execute(sa.select(samples.c.at).where(samples.c.hourly).distinct()).scalars()
    for at in list(stamps):
        seconds = int((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp())
        grid = next((g for g in GRIDS if seconds % g == 0), 0)
        bind.execute(sa.update(samples).where(samples.c.at == at).values(grid=grid))
    with op.batch_alter_table("count_samples", schema=None) as batch_op:
        batch_op.drop_column("hourly")
    # Taking a sample (is this slot's taken?), thinning and pruning select by time across
    # groups: without it each was a scan of every sample, every 30 seconds.
    op.create_index("ix_count_samples_at", "count_samples", ["at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_count_samples_at", table_name="count_samples")
    op.add_column(
        "count_samples",
        sa.Column("hourly", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.execute(sa.update(samples).where(samples.c.grid > 0).values(hourly=True))
    with op.batch_alter_table("count_samples", schema=None) as batch_op:
        batch_op.drop_column("grid")
