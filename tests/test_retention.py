"""Retention of grants, failures and activity (nebula.jobs.retention, nebula.store.retention):
old rows go, in batches, but never one a rollout rule still reads. The rules are driven through
the real HTTP app with the injected clock, as in tests/test_rollout.py; the prunes run against
the same database, as the leader would run them. Each test's docstring names the wrong
implementation it catches."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.config import load_settings
from nebula.errors import ConfigError
from nebula.jobs.retention import Ages, prune_once, retention_ages, run_retention
from nebula.store import db
from nebula.store.models import Activity, Failure, Grant
from nebula.store.rollouts import log_activity
from nebula.web.app import create_app
from tests.conftest import FakeClock
from tests.factories import make_settings
from tests.test_rollout import (
    ERROR_HASH,
    NEW,
    NEWER,
    STABLE,
    Client,
    add_version,
    check,
    complete,
    get_policy,
    hold_reason,
    hosts,
    omaha,
    point,
    post,
    release,
    set_policy,
)

__all__ = ["release"]  # the fixture: NEW as stable amd64's target
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


async def rows(engine: AsyncEngine, model: type[Grant] | type[Failure] | type[Activity]) -> int:
    async with db.session_factory(engine)() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


async def prune(
    engine: AsyncEngine, clock: FakeClock, ages: Ages, batch: int = 5000
) -> dict[str, int]:
    return await prune_once(db.session_factory(engine), clock.now, ages, batch)


async def test_rate_limit_holds_after_a_prune(
    client: Client, admin_token: str, release: str, engine: AsyncEngine, clock: FakeClock
) -> None:
    """Grants an hour old, with a grant age of an hour and a rate period of a day: the rate limit
    still sees them. Catches grants pruned by their configured age alone (the third host would
    be granted at once). The group was resumed after the grants, so the failure gate needs none
    of them: only the rate window keeps them."""
    await set_policy(client, admin_token, max_updates_per_period=2, period="1d")
    h = hosts(3)
    assert await check(client, h[0]) == NEW
    assert await check(client, h[1]) == NEW
    clock.advance(minutes=1)
    await post(client, admin_token, f"{STABLE}/pause", reason="look")
    await post(client, admin_token, f"{STABLE}/resume", reason="fine")
    clock.advance(hours=3)
    assert await prune(engine, clock, Ages(grants=HOUR, failures=HOUR)) == {
        "grants": 0,
        "failures": 0,
    }
    assert await check(client, h[2]) is None
    assert await hold_reason(engine, h[2]) == "rate_limit"

    clock.advance(days=1)  # out of the rate window, before the resume: no rule reads them
    assert (await prune(engine, clock, Ages(grants=HOUR)))["grants"] == 2
    assert await rows(engine, Grant) == 0
    assert await check(client, h[2]) == NEW


async def test_failure_gate_by_hosts_holds_after_a_prune(
    client: Client, admin_token: str, release: str, engine: AsyncEngine, clock: FakeClock
) -> None:
    """A failure ten days old, with a failure age of a day: the version is still the target and
    the group was never resumed, so the gate still counts it and the second failure pauses.
    Catches failures pruned by age alone (the gate would see one failure and go on)."""
    await set_policy(client, admin_token, pause_on_failures=["2"])
    a, b = hosts(2)
    assert await check(client, a) == NEW
    await omaha(client, a.event(3, 0, ERROR_HASH))
    clock.advance(days=10)
    assert await prune(engine, clock, Ages(grants=DAY, failures=DAY)) == {
        "grants": 0,
        "failures": 0,
    }
    assert await check(client, b) == NEW
    await omaha(client, b.event(3, 0, ERROR_HASH))
    policy = await get_policy(client, admin_token)
    assert policy["updates_enabled"] is False
    assert "2 hosts failed" in policy["paused_reason"]


async def test_failure_gate_by_share_holds_after_a_prune(
    client: Client, admin_token: str, release: str, engine: AsyncEngine, clock: FakeClock
) -> None:
    """1 of 4 granted hosts failed ten days ago; then a fifth is granted and fails: 2 of 5 is
    40%, under the 50% limit. Catches grants pruned by age while the failure stays: 2 failed of
    1 attempted would pause the group."""
    await set_policy(client, admin_token, pause_on_failures=["50%"])
    h = hosts(5)
    for host in h[:4]:
        assert await check(client, host) == NEW
    await omaha(client, h[0].event(3, 0, ERROR_HASH))
    clock.advance(days=10)
    await prune(engine, clock, Ages(grants=DAY, failures=DAY))
    assert await rows(engine, Grant) == 4
    assert await check(client, h[4]) == NEW
    await omaha(client, h[4].event(3, 0, ERROR_HASH))
    assert (await get_policy(client, admin_token))["updates_enabled"] is True
    await omaha(client, h[1].event(3, 0, ERROR_HASH))  # 3 of 5: 60%
    assert (await get_policy(client, admin_token))["updates_enabled"] is False


async def test_rows_of_a_finished_rollout_go(
    client: Client, admin_token: str, release: str, engine: AsyncEngine, clock: FakeClock
) -> None:
    """NEW's rollout is over (the channel moved to NEWER, no host is still updating to NEW):
    its old grants and failures go, NEWER's stay while a host is on its way to it, however old.
    Catches a retention that keeps everything a policy might read (nothing would ever go) and
    one that ignores hosts in the middle of an update (their version is no longer offered, but
    a failure of theirs would ask the gate about it)."""
    await set_policy(client, admin_token, pause_on_failures=["5"])
    h = hosts(3)
    assert await check(client, h[0]) == NEW
    assert await check(client, h[1]) == NEW
    await omaha(client, h[0].event(3, 0, ERROR_HASH))  # failed
    assert await complete(client, h[1], NEW) is None
    await add_version(client, admin_token, NEWER)
    await point(client, admin_token, NEWER)
    assert await check(client, h[2]) == NEWER  # in flight to NEWER
    await add_version(client, admin_token, "4300.0.0")
    await point(client, admin_token, "4300.0.0")
    clock.advance(days=3)
    removed = await prune(engine, clock, Ages(grants=DAY, failures=DAY))
    assert removed == {"grants": 2, "failures": 1}
    async with db.session_factory(engine)() as session:
        left = (await session.execute(select(Grant.instance_id, Grant.version))).all()
    assert left == [(h[2].machine_id, NEWER)]


async def test_activity_goes_by_age_in_batches(engine: AsyncEngine, clock: FakeClock) -> None:
    """Entries strictly older than the age go, across several batches; the rest stay. Catches
    a prune that stops after one batch or takes the cut-off's own second."""
    async with db.transaction(db.session_factory(engine)) as session:
        for days in range(10):  # 0..9 days old
            log_activity(session, clock.now - timedelta(days=days), "ops", "pause", f"{days}")
    removed = await prune(engine, clock, Ages(activity=timedelta(days=3)), batch=2)
    assert removed == {"activity": 6}
    async with db.session_factory(engine)() as session:
        kept = sorted((await session.execute(select(Activity.message))).scalars())
    assert kept == ["0", "1", "2", "3"]


async def test_the_loop_prunes_each_round(engine: AsyncEngine, clock: FakeClock) -> None:
    """run_retention, as the leader runs it: a round at start, then one every interval, each at
    the clock's time then. Catches a loop that reads the clock once or stops after a round."""
    async with db.transaction(db.session_factory(engine)) as session:
        for days in range(6):
            log_activity(session, clock.now - timedelta(days=days), "ops", "pause", f"{days}")
    task = asyncio.create_task(
        run_retention(db.session_factory(engine), clock, Ages(activity=timedelta(days=4)), 0.01)
    )
    try:
        await _until(engine, 5)
        clock.advance(days=2)
        await _until(engine, 3)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def _until(engine: AsyncEngine, count: int) -> None:
    for _ in range(1000):
        if await rows(engine, Activity) == count:
            return
        await asyncio.sleep(0.01)
    assert await rows(engine, Activity) == count


async def test_the_leader_prunes_by_itself(
    db_url: str, tmp_path: Path, key_file: Path, clock: FakeClock, aiohttp_client: Any
) -> None:
    """A process started with activity_retention 2d prunes a week-old entry by itself (its
    leader runs retention at once) and keeps a day-old one: catches a job that is defined but
    never started, or started without the settings' ages."""
    engine = db.create_engine(db_url)
    try:
        async with db.transaction(db.session_factory(engine)) as session:
            log_activity(session, clock.now - timedelta(days=7), "ops", "pause", "old")
            log_activity(session, clock.now - timedelta(days=1), "ops", "pause", "recent")
        settings = make_settings(db_url, tmp_path, key_file, activity_retention="2d")
        await aiohttp_client(create_app(settings, clock=clock))
        await _until(engine, 1)
        async with db.session_factory(engine)() as session:
            assert (await session.execute(select(Activity.message))).scalars().all() == ["recent"]
    finally:
        await engine.dispose()


def test_retention_settings_are_checked() -> None:
    for name in ("grant_retention", "failure_retention", "activity_retention"):
        with pytest.raises(ConfigError, match=name):
            load_settings({name: "a while"}, environ={})
    settings = load_settings({"grant_retention": "", "activity_retention": "2d"}, environ={})
    ages = retention_ages(settings)
    assert ages == Ages(
        events=timedelta(days=90), grants=None, failures=timedelta(days=90), activity=2 * DAY
    )
