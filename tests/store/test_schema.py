"""The migrations are the schema: the models must match what `alembic upgrade head` builds, on
both databases, and the seed must hold what the contract needs (Flatcar, its channels, groups
answering to the legacy CoreOS group UUIDs)."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.store import db
from nebula.store.models import Base, Channel, Group, PackageFile


async def test_models_match_migrations(engine: AsyncEngine) -> None:
    def diff(conn: Any) -> list[Any]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, Base.metadata))

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []
    assert await db.current_revision(engine) == db.head_revision()


async def test_seed_has_flatcar_channels_and_legacy_groups(engine: AsyncEngine) -> None:
    async with db.transaction(db.session_factory(engine)) as session:
        channels = {(c.name, c.arch) for c in (await session.execute(select(Channel))).scalars()}
        groups = {g.id: (g.track, g.arch) for g in (await session.execute(select(Group))).scalars()}
    assert channels == {
        (n, a) for n in ("alpha", "beta", "stable", "lts") for a in ("amd64", "arm64")
    }
    assert groups["9a2deb70-37be-4026-853f-bfdd6b347bbe"] == ("stable", "amd64")
    assert groups["11a585f6-9418-4df0-8863-78b2fd3240f8"] == ("stable", "arm64")
    assert groups["5b810680-e36a-4879-b98a-4f989e80b899"] == ("alpha", "amd64")
    assert sorted(t for t, a in groups.values() if a == "amd64") == [
        "alpha",
        "beta",
        "lts",
        "stable",
    ]


@pytest.mark.parametrize(
    "bad",
    [{"size": 0}, {"sha1": "abc"}, {"sha256": "0" * 63}],
    ids=["size-zero", "short-sha1", "short-sha256"],
)
async def test_database_refuses_bad_file_rows(engine: AsyncEngine, bad: dict[str, Any]) -> None:
    """The constraints hold even for code that skips the checks in nebula.store.packages."""
    from datetime import UTC, datetime

    from nebula.store.models import Package

    row = {
        "position": 0,
        "name": "f.gz",
        "size": 1,
        "sha1": "0" * 40,
        "sha256": "0" * 64,
        "stored": True,
    } | bad
    with pytest.raises(IntegrityError):
        async with db.transaction(db.session_factory(engine)) as session:
            session.add(
                Package(
                    id="00000000-0000-0000-0000-000000000001",
                    app_id="e96281a6-d1af-4bde-9a0a-97b76e56dc57",
                    version="1.0.0",
                    arch="amd64",
                    kind="full",
                    created_at=datetime.now(UTC),
                    created_by="test",
                    files=[PackageFile(**row)],
                )
            )


async def test_status_counts_backfilled_by_their_migration(engine: AsyncEngine) -> None:
    """Upgrading a database that already has hosts fills the counts from them: catches a
    migration that creates the table empty (every count would be off forever after)."""
    from datetime import UTC, datetime

    from nebula.store.models import Instance, InstanceApp, StatusCount

    now = datetime.now(UTC)
    stable = "9a2deb70-37be-4026-853f-bfdd6b347bbe"
    await db.downgrade(engine, "0004")
    async with engine.begin() as conn:
        for i, status in enumerate(["idle", "idle", "granted"]):
            mid = f"{i:032x}"
            await conn.execute(
                Instance.__table__.insert().values(id=mid, created_at=now, last_seen_at=now)
            )
            await conn.execute(
                InstanceApp.__table__.insert().values(
                    instance_id=mid,
                    app_id="e96281a6-d1af-4bde-9a0a-97b76e56dc57",
                    group_id=stable,
                    status=status,
                    status_changed_at=now,
                    created_at=now,
                    held=False,
                )
            )
    await db.upgrade(engine)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(StatusCount.status, func.sum(StatusCount.count)).group_by(StatusCount.status)
            )
        ).all()
    assert sorted((s, int(n)) for s, n in rows) == [("granted", 1), ("idle", 2)]


async def test_completions_backfilled_by_their_migration(engine: AsyncEngine) -> None:
    """Upgrading a database whose hosts completed updates before completions were recorded
    keeps those completions: catches a migration that creates the table empty (a group in safe
    mode would take its next host for the canary of a version that had long passed)."""
    from datetime import UTC, datetime

    from nebula.store.models import Completion, Instance, InstanceApp

    now = datetime.now(UTC)
    stable = "9a2deb70-37be-4026-853f-bfdd6b347bbe"
    await db.downgrade(engine, "0005")
    async with engine.begin() as conn:
        for i, (status, granted) in enumerate(
            [("complete", "4152.2.3"), ("granted", "4152.2.3"), ("complete", None)]
        ):
            mid = f"{i:032x}"
            await conn.execute(
                Instance.__table__.insert().values(id=mid, created_at=now, last_seen_at=now)
            )
            await conn.execute(
                InstanceApp.__table__.insert().values(
                    instance_id=mid,
                    app_id="e96281a6-d1af-4bde-9a0a-97b76e56dc57",
                    group_id=stable,
                    status=status,
                    granted_version=granted,
                    status_changed_at=now,
                    created_at=now,
                    held=False,
                )
            )
    await db.upgrade(engine)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(Completion.group_id, Completion.version, Completion.instance_id)
            )
        ).all()
    assert rows == [(stable, "4152.2.3", f"{0:032x}")]
