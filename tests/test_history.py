"""Rollout history from count samples (nebula.store.history, nebula.jobs.history), through the
real app and the admin API, on both databases, with the clock injected."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select

from nebula.jobs.history import sample_once
from nebula.store import db
from nebula.store import history as samples
from nebula.store.models import CountSample, StatusCount
from nebula.web.app import create_app
from tests.conftest import FakeClock
from tests.factories import Host, make_settings
from tests.web.test_steady_state import NEW, OLD, add_version, auth, check

STABLE = "/api/v1/groups/stable/history"
DAY = 86400
KEEP = 30 * DAY


async def history(client: Any, token: str, window: str) -> list[dict[str, Any]]:
    resp = await client.get(STABLE, params={"arch": "amd64", "window": window}, headers=auth(token))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["group"], body["arch"], body["window"]) == ("stable", "amd64", window)
    return body["points"]  # type: ignore[no-any-return]


async def test_history_follows_the_rollout_and_thins_and_prunes(
    client: Any, admin_token: str, viewer_token: str, db_url: str, clock: FakeClock
) -> None:
    """Two hosts on NEW, two on OLD that get NEW granted; one completes. Each sample must show
    versions and statuses as they were then; a day later the samples off the hour go, the
    hourly one stays for the long windows; past the retention all go. Catches a sample that
    reads hosts instead of counts (retired or shard rows wrong), points merged across times,
    and thinning or pruning that removes the wrong samples."""
    engine = db.create_engine(db_url)
    sessions = db.session_factory(engine)
    try:
        await add_version(client, admin_token, NEW)
        hosts = [Host(machine_id=f"{n:032x}", version=NEW if n < 2 else OLD) for n in range(4)]
        for host in hosts:
            await check(client, host)
        start = clock.now  # 12:00:00, on the hour
        # The app's own leader may have taken this slot's sample already (at its start): either
        # way there is one sample of the 12:00 slot, and a second call writes nothing.
        await sample_once(sessions, clock(), 300, KEEP)
        assert await sample_once(sessions, clock(), 300, KEEP) == 0
        clock.advance(minutes=5)
        hosts[2].version = NEW
        assert await check(client, hosts[2]) is None  # completed
        await sample_once(sessions, clock(), 300, KEEP)

        points = await history(client, viewer_token, "1h")
        assert [p["at"] for p in points] == [
            start.isoformat(),
            (start + timedelta(minutes=5)).isoformat(),
        ]
        first, second = points
        assert first["hosts"] == second["hosts"] == 4
        assert first["versions"] == {NEW: 2, OLD: 2}
        assert first["statuses"] == {"idle": 2, "granted": 2}
        assert second["versions"] == {NEW: 3, OLD: 1}
        assert second["statuses"] == {"idle": 2, "complete": 1, "granted": 1}

        clock.advance(days=2)
        await sample_once(sessions, clock(), 300, KEEP)  # thins what is older than a day
        week = await history(client, admin_token, "7d")
        assert [p["versions"] for p in week] == [{NEW: 2, OLD: 2}]  # the 12:00 sample alone
        assert len(await history(client, admin_token, "1d")) == 1  # today's (12:05) sample

        clock.advance(days=40)
        await sample_once(sessions, clock(), 300, KEEP)
        async with engine.connect() as conn:
            times = (
                await conn.execute(select(func.count(func.distinct(CountSample.at))))
            ).scalar_one()
        assert times == 1  # only the sample just taken
    finally:
        await engine.dispose()


async def test_history_route_refuses_bad_windows_and_strangers(
    client: Any, admin_token: str
) -> None:
    resp = await client.get(
        STABLE, params={"arch": "amd64", "window": "2w"}, headers=auth(admin_token)
    )
    assert resp.status == 400
    assert "window must be one of 1h, 1d, 7d, 30d" in await resp.text()
    assert (await client.get(STABLE, params={"arch": "amd64"})).status == 401
    assert await history(client, admin_token, "1d") == []  # nothing sampled yet: no points


async def test_the_leader_takes_samples_by_itself(
    db_url: str,
    tmp_path: Path,
    key_file: Path,
    clock: FakeClock,
    aiohttp_client: Any,
) -> None:
    """A process started on a database with hosts samples them by itself (its leader runs the
    history job at once): catches a job that is defined but never started. The first process
    writes the host and stops (its leadership goes with it on PostgreSQL)."""
    settings = make_settings(db_url, tmp_path, key_file)
    first = await aiohttp_client(create_app(settings, clock=clock))
    await check(first, Host(machine_id="f" * 32, version=NEW))
    await first.close()
    engine = db.create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(delete(CountSample))  # whatever the first one sampled
        await aiohttp_client(create_app(settings, clock=clock))
        for _ in range(300):  # bounded
            async with engine.connect() as conn:
                count = select(func.count()).select_from(CountSample)
                if (await conn.execute(count)).scalar_one():
                    return
            await asyncio.sleep(0.05)
        raise AssertionError("no count sample was taken by the leader")
    finally:
        await engine.dispose()


STABLE_ID = "9a2deb70-37be-4026-853f-bfdd6b347bbe"  # the seeded stable amd64 group


async def _sample_at(sessions: Any, at: datetime, on_a: int) -> None:
    """The group's counts at `at`: `on_a` idle hosts on version A, 50 complete on B; sampled."""
    async with db.transaction(sessions) as session:
        await session.execute(delete(StatusCount).where(StatusCount.group_id == STABLE_ID))
        session.add(
            StatusCount(group_id=STABLE_ID, status="idle", version="A", shard=0, count=on_a)
        )
        session.add(StatusCount(group_id=STABLE_ID, status="complete", version="B", count=50))
    await sample_once(sessions, at, 1800, KEEP)


async def test_samples_thin_out_to_exact_ones_on_each_grid(engine: Any) -> None:
    """Samples every 30 minutes on day 0 (00:00-09:00) and day 6 (10:00-12:00), then one on day
    8 at 14:00, each with a different count. Past a week only the four-hourly ones are left
    (00:00, 04:00, 08:00), past a day the hourly ones, and each keeps the counts of its own
    moment. Catches thinning that keeps the wrong sample of a bucket (the last, or an average),
    thins by the wrong age, and windows that read a grid they no longer have in full."""
    sessions = db.session_factory(engine)
    day0 = datetime(2026, 11, 27, tzinfo=UTC)
    script = [day0 + timedelta(minutes=30 * n) for n in range(19)]  # 00:00 .. 09:00
    script += [day0 + timedelta(days=6, hours=10, minutes=30 * n) for n in range(5)]  # .. 12:00
    for n, at in enumerate(script):
        await _sample_at(sessions, at, on_a=n + 1)
    now = day0 + timedelta(days=8, hours=14)
    await _sample_at(sessions, now, on_a=1000)

    async with db.transaction(sessions) as session:
        stamps = (await session.execute(select(CountSample.at, CountSample.grid).distinct())).all()
        month = await samples.read_history(session, STABLE_ID, samples.WINDOWS["30d"], now)
        week = await samples.read_history(session, STABLE_ID, samples.WINDOWS["7d"], now)
        day = await samples.read_history(session, STABLE_ID, samples.WINDOWS["1d"], now)
    kept = {at: n + 1 for n, at in enumerate(script)} | {now: 1000}
    day6 = day0 + timedelta(days=6)
    assert sorted(stamps) == [
        (day0, 14400),
        (day0 + timedelta(hours=4), 14400),
        (day0 + timedelta(hours=8), 14400),
        (day6 + timedelta(hours=10), 3600),
        (day6 + timedelta(hours=11), 3600),
        (day6 + timedelta(hours=12), 14400),
        (now, 3600),
    ]

    def shown(points: list[samples.Point]) -> list[tuple[datetime, int]]:
        for p in points:
            assert p.statuses == {"idle": kept[p.at], "complete": 50}
            assert p.versions == {"A": kept[p.at], "B": 50}
        return [(p.at, p.versions["A"]) for p in points]

    assert shown(month) == [
        (day0, 1),
        (day0 + timedelta(hours=4), 9),
        (day0 + timedelta(hours=8), 17),
        (day6 + timedelta(hours=12), 24),
    ]
    assert shown(week) == [
        (day6 + timedelta(hours=10), 20),
        (day6 + timedelta(hours=11), 22),
        (day6 + timedelta(hours=12), 24),
        (now, 1000),
    ]
    assert shown(day) == [(now, 1000)]


@pytest.mark.parametrize(
    ("at", "grid"),
    [
        ("00:00", 14400),
        ("04:00", 14400),
        ("20:00", 14400),
        ("01:00", 3600),
        ("13:00", 3600),
        ("04:05", 0),
        ("12:30", 0),
        ("23:59", 0),
    ],
)
def test_grid_of_a_stamp(at: str, grid: int) -> None:
    hour, minute = map(int, at.split(":"))
    assert samples.grid_of(datetime(2026, 12, 3, hour, minute, tzinfo=UTC)) == grid


def test_each_window_reads_the_finest_grid_it_has_in_full() -> None:
    assert {w: samples.grid_for(s) for w, s in samples.WINDOWS.items()} == {
        "1h": 0,
        "1d": 0,
        "7d": 3600,
        "30d": 14400,
    }


async def test_migration_gives_kept_samples_their_grid(engine: Any) -> None:
    """Samples taken before migration 0014 (with `hourly`) get their grid from their stamp, and
    a downgrade gives the hourly flag back. Catches a migration that leaves every old sample on
    grid 0 (the next thinning would drop them all) or marks every hourly one four-hourly."""
    import sqlalchemy as sa

    old = sa.table(
        "count_samples",
        sa.column("group_id", sa.String()),
        sa.column("at", sa.DateTime(timezone=True)),
        sa.column("status", sa.String()),
        sa.column("version", sa.String()),
        sa.column("hosts", sa.Integer()),
        sa.column("hourly", sa.Boolean()),
    )
    day = datetime(2026, 11, 27, tzinfo=UTC)
    stamps = {day: 14400, day + timedelta(hours=5): 3600, day + timedelta(minutes=5): 0}
    await db.downgrade(engine, "0011")
    async with engine.begin() as conn:
        for at, grid in stamps.items():
            for version in ("A", "B"):
                row = {"group_id": STABLE_ID, "at": at, "status": "idle", "version": version}
                await conn.execute(old.insert().values(**row, hosts=3, hourly=grid > 0))
    await db.upgrade(engine)
    async with engine.connect() as conn:
        rows = (await conn.execute(select(CountSample.at, CountSample.grid).distinct())).all()
    assert sorted(rows) == sorted(stamps.items())
    await db.downgrade(engine, "0011")
    async with engine.connect() as conn:
        back = (await conn.execute(sa.select(old.c.at, old.c.hourly).distinct())).all()
    assert sorted((at.replace(tzinfo=UTC), hourly) for at, hourly in back) == sorted(
        (at, grid > 0) for at, grid in stamps.items()
    )
    await db.upgrade(engine)
