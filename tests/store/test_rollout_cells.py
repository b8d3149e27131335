"""Rollout status from the maintained counts equals rollout status from a scan of every host.

`host_cells` reads the counts by status and version and only the hosts that differ from the
rest; `scan_cells` groups every host in one query (what rollout status did before). On a few
hundred hosts in every status, on several versions, held, with recorded holds and grants of the
target and of a floor, under policies that exercise each branch (staged percentage, pause,
closed window, update timeout, downgrades), both must give the same status. Catches a set of
hosts the counts alone cannot classify that `host_cells` forgets to single out, and counts that
do not follow versions. Also: the million-host loader leaves counts equal to a recount.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.loadtest import fleetsql
from nebula.policy import GroupPolicy
from nebula.store import counts, db, history, rollouts
from nebula.store.models import Grant, Group, Instance, InstanceApp

STABLE_ID = "9a2deb70-37be-4026-853f-bfdd6b347bbe"
APP_ID = "e96281a6-d1af-4bde-9a0a-97b76e56dc57"
TARGET, FLOOR = "4152.2.3", "4081.2.0"
VERSIONS = ("3815.2.0", FLOOR, "4100.0.0", TARGET, "4152.2.3+dev", "4230.0.0", "junk", None)
STATUSES = (
    "new",
    "idle",
    "granted",
    "downloading",
    "downloaded",
    "installed",
    "complete",
    "error",
    "rolled_back",
    "timed_out",
)
HOLDS = (None, None, None, "rate_limit", "concurrency", "canary", "paused", "percentage")
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)  # a Monday


async def _fleet(engine: AsyncEngine, hosts: int = 400) -> None:
    rng = random.Random(7)
    deltas: Counter[counts.ShardKey] = Counter()
    async with db.transaction(db.session_factory(engine)) as session:
        for n in range(hosts):
            machine = f"{n:032x}"
            status = rng.choice(STATUSES)
            version = rng.choice(VERSIONS)
            granted = rng.choice((None, TARGET, FLOOR, "4100.0.0"))
            session.add(Instance(id=machine, created_at=NOW, last_seen_at=NOW))
            session.add(
                InstanceApp(
                    instance_id=machine,
                    app_id=APP_ID,
                    group_id=STABLE_ID,
                    version=version,
                    status=status,
                    granted_version=granted,
                    granted_at=None
                    if granted is None
                    else NOW - timedelta(hours=rng.randint(0, 5)),
                    status_changed_at=NOW,
                    hold_reason=rng.choice(HOLDS),
                    held=rng.random() < 0.05,
                    created_at=NOW,
                )
            )
            counts.move(deltas, machine, None, (STABLE_ID, status, version))
        await session.flush()
        for n in range(0, hosts, 9):
            session.add(
                Grant(group_id=STABLE_ID, instance_id=f"{n:032x}", version=TARGET, granted_at=NOW)
            )
        await counts.apply(session, deltas)


POLICIES: list[dict[str, Any]] = [
    {},
    {"percentage": 30.0},
    {"percentage": 30.0, "updates_enabled": False},
    {"percentage": 0.0},
    {"update_timeout_seconds": 2 * 3600},
    {"update_timeout_seconds": 2 * 3600, "percentage": 55.5, "allow_downgrade": True},
    {"windows": [{"days": [5], "start": "02:00", "end": "05:00", "tz": "UTC"}]},
    {"max_updates_per_period": 10, "period_seconds": 3600, "max_concurrent": 3},
]


@pytest.mark.parametrize("policy", POLICIES, ids=[str(p) or "default" for p in POLICIES])
@pytest.mark.parametrize("floors", [(), (FLOOR,)], ids=["no-floor", "floor"])
@pytest.mark.parametrize("target", [TARGET, None], ids=["target", "no-target"])
async def test_status_from_counts_equals_a_scan(
    engine: AsyncEngine, policy: dict[str, Any], floors: tuple[str, ...], target: str | None
) -> None:
    await _fleet(engine)
    async with db.transaction(db.session_factory(engine)) as session:
        group = (await session.execute(select(Group).where(Group.id == STABLE_ID))).scalar_one()
        for name, value in policy.items():
            setattr(group, name, value)
        if policy.get("windows"):
            # A window must parse, or policy_of fails closed; check it did not.
            assert rollouts.policy_of(group).windows != (rollouts.NEVER_OPEN,)
        scanned = await rollouts.scan_cells(session, group, target, NOW, floors)
        slow = await rollouts.rollout_status(session, group, target, NOW, floors, cells=scanned)
        fast = await rollouts.rollout_status(session, group, target, NOW, floors)
        await session.rollback()
    assert fast == slow
    assert slow.total == 400


async def test_counts_follow_versions_through_a_move(engine: AsyncEngine) -> None:
    await _fleet(engine, hosts=20)
    async with db.transaction(db.session_factory(engine)) as session:
        before = await counts.counts_by_version(session, STABLE_ID)
        deltas: Counter[counts.ShardKey] = Counter()
        counts.move(deltas, "x", (STABLE_ID, "installed", FLOOR), (STABLE_ID, "complete", TARGET))
        await counts.apply(session, deltas)
        after = await counts.counts_by_version(session, STABLE_ID)
    assert after.get(("complete", TARGET), 0) == before.get(("complete", TARGET), 0) + 1
    assert after.get(("installed", FLOOR), 0) == before.get(("installed", FLOOR), 0) - 1


async def test_loader_leaves_counts_equal_to_a_recount(db_url: str, engine: AsyncEngine) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("the loader writes with PostgreSQL's generate_series")
    await fleetsql.load(engine, 5_000)
    recount, stored = await fleetsql.consistency(engine)
    assert recount == stored
    assert sum(recount.values()) == 5_000
    async with db.transaction(db.session_factory(engine)) as session:
        groups = {g for g, _, _ in recount}
        assert len(groups) == len(fleetsql.TRACKS)
        statuses = Counter()
        for (_, status, _), n in recount.items():
            statuses[status] += n
        assert statuses["complete"] > statuses["idle"] > statuses["error"] > 0
        group = (await session.execute(select(Group).where(Group.id == STABLE_ID))).scalar_one()
        now = datetime.now(UTC)
        scanned = await rollouts.scan_cells(session, group, TARGET, now)
        slow = await rollouts.rollout_status(session, group, TARGET, now, cells=scanned)
        fast = await rollouts.rollout_status(session, group, TARGET, now)
    assert fast == slow
    assert slow.complete > slow.remaining > slow.in_progress > 0
    # Thirty days of history as a long-running server keeps it: a sample every four hours from
    # 30 days back, every hour for the last week, every five minutes for the last day, each
    # with the group's counts of today. The 30-day window reads the four-hourly ones: 179 full
    # four hours, and the oldest if it falls just inside.
    async with db.transaction(db.session_factory(engine)) as session:
        month = await history.read_history(session, STABLE_ID, history.WINDOWS["30d"], now)
        day = await history.read_history(session, STABLE_ID, history.WINDOWS["1d"], now)
    assert 179 <= len(month) <= 180
    assert {history.grid_of(p.at) for p in month} == {14400}
    assert {(b.at - a.at).total_seconds() for a, b in itertools.pairwise(month)} == {14400.0}
    assert len(day) > 250
    assert {(b.at - a.at).total_seconds() for a, b in itertools.pairwise(day)} == {300.0}
    stable_hosts = sum(n for (g, _, _), n in recount.items() if g == STABLE_ID)
    assert {p.total for p in month + day} == {stable_hosts}


async def test_counts_for_the_limits_stop_at_the_limit(engine: AsyncEngine) -> None:
    """decide() compares counts with limits only, so rollout_stats counts no further than a
    limit: with 5 grants in the period and a limit of 3 it reads 3, with a limit of 10 all 5.
    Catches a cap that is ignored (a scan of the whole period) or off by one (a limit that
    never holds: 2 < 3)."""
    sessions = db.session_factory(engine)
    now = datetime(2026, 12, 3, 12, tzinfo=UTC)
    async with db.transaction(sessions) as session:
        group_id = str((await session.execute(select(Group.id).limit(1))).scalar_one())
        for n in range(5):
            session.add(Instance(id=f"{n:032x}", created_at=now, last_seen_at=now))
        await session.flush()
        for n in range(5):
            rollouts.record_grant(session, group_id, f"{n:032x}", "4152.2.3", now)
    async with db.transaction(sessions) as session:
        for limit, expected in ((3, 3), (5, 5), (10, 5)):
            policy = GroupPolicy(max_updates_per_period=limit, period_seconds=3600)
            stats = await rollouts.rollout_stats(session, group_id, policy, "4152.2.3", now, "x")
            assert stats.grants_in_period == expected, limit
