"""How grants take the group's lock on PostgreSQL: side by side where they count nothing, one at a
time where the policy counts (rate, concurrency, safe mode), and never counted under a shared
lock when the limits arrived after this process read its catalog.

A transaction of the test's own holds the group's row lock (FOR SHARE, as a grant in flight
does); whether the app's grant waits for it is read from PostgreSQL itself (pg_locks), never
from a clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.store import db
from nebula.store.rollouts import lock_group
from nebula.web.app import create_app
from nebula.web.keys import CATALOG
from tests.factories import make_settings
from tests.test_rollout import (
    NEW,
    STABLE_ID,
    add_version,
    check,
    hold_reason,
    hosts,
    point,
    set_policy,
)

pytestmark = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)

BOUND = 30.0  # seconds: a liveness bound, far above any honest wait here


@asynccontextmanager
async def grant_in_flight(engine: AsyncEngine) -> AsyncIterator[None]:
    """Hold stable amd64's row lock as a limit-free grant does, until the block ends."""
    async with db.session_factory(engine)() as session, session.begin():
        await lock_group(session, STABLE_ID, shared=True)
        yield


async def lock_waiters(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        result = await conn.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted"))
        return int(result.scalar_one())


async def test_grants_that_count_nothing_share_the_group_lock(
    client: Any, admin_token: str, engine: AsyncEngine
) -> None:
    """Catches every grant taking the row FOR UPDATE: this check would wait for the test's
    transaction, which ends only after the check answered."""
    await add_version(client, admin_token, NEW)
    await point(client, admin_token, NEW)
    (h,) = hosts(1)
    async with grant_in_flight(engine):
        assert await asyncio.wait_for(check(client, h), BOUND) == NEW


async def test_grants_under_limits_take_turns(
    client: Any, admin_token: str, engine: AsyncEngine
) -> None:
    """Catches a counting policy granting under a shared lock: two such grants could both count
    one slot free and both take it."""
    await add_version(client, admin_token, NEW)
    await point(client, admin_token, NEW)
    await set_policy(client, admin_token, max_concurrent=5)
    (h,) = hosts(1)
    async with grant_in_flight(engine):
        task = asyncio.ensure_future(check(client, h))
        async with asyncio.timeout(BOUND):
            while await lock_waiters(engine) == 0:
                assert not task.done(), "the grant did not wait for the group's lock"
                await asyncio.sleep(0.05)
    assert await asyncio.wait_for(task, BOUND) == NEW


async def test_limits_newer_than_the_catalog_hold_instead_of_counting_shared(
    aiohttp_client: Any, db_url: str, tmp_path: Any, key_file: Any, admin_token: str
) -> None:
    """Replica `here` read its catalog before replica `there` set a concurrency limit: its next
    grant takes the shared lock, then finds the limit on the fresh row, and starts over with
    the lock alone. Catches ignoring the fresh policy (h1 would be granted past the limit) and
    holding the host for the stale catalog instead of counting (h1 would wait for ever at a
    limit that has room, and a host asking two replicas at once gets two answers)."""
    here_engine = db.create_engine(db_url)
    settings = make_settings(db_url, tmp_path, key_file, cache_ttl=600.0)
    here = await aiohttp_client(create_app(settings, engine=here_engine))
    there = await aiohttp_client(create_app(settings))
    try:
        await add_version(there, admin_token, NEW)
        await point(there, admin_token, NEW)
        h = hosts(2)
        here.app[CATALOG].invalidate()  # read it now: the release, no limits
        assert await check(here, h[0]) == NEW  # `here` has read the catalog: no limits
        await set_policy(there, admin_token, max_concurrent=1)
        # h0 is in flight and the limit is 1: counted (alone), h1 must wait.
        assert await check(here, h[1]) is None
        assert await hold_reason(here_engine, h[1]) == "concurrency"
        await set_policy(there, admin_token, max_concurrent=2)
        assert await check(here, h[1]) == NEW  # 1 in flight of 2
    finally:
        await here_engine.dispose()


async def test_retired_host_back_in_the_middle_of_an_update_takes_the_group_lock(
    client: Any, admin_token: str, engine: AsyncEngine, db_url: str, clock: Any
) -> None:
    """A granted host that went silent and was retired holds no concurrency slot; when it comes
    back (here with only a 13/1 event, which alone never locks the group) it takes its slot
    again, so it must wait for the group's lock like a grant. Catches an un-retire that grows
    the in-flight count behind a counting grant's back (max_concurrent could be exceeded)."""
    from nebula.jobs.retirement import retire_once
    from nebula.web.keys import HOST_CHANGES
    from tests.test_rollout import omaha

    await add_version(client, admin_token, NEW)
    await point(client, admin_token, NEW)
    await set_policy(client, admin_token, max_concurrent=5)
    (h,) = hosts(1)
    assert await check(client, h) == NEW
    clock.advance(days=15)
    sessions = db.session_factory(engine)
    assert await retire_once(sessions, clock.now, client.app[HOST_CHANGES]) == [h.machine_id]
    async with grant_in_flight(engine):
        task = asyncio.ensure_future(omaha(client, h.event(13, 1)))
        async with asyncio.timeout(BOUND):
            while await lock_waiters(engine) == 0:
                assert not task.done(), "the returning host did not wait for the group's lock"
                await asyncio.sleep(0.05)
    await asyncio.wait_for(task, BOUND)
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT status, retired_at FROM instance_apps WHERE instance_id = :m"),
                {"m": h.machine_id},
            )
        ).one()
    assert tuple(row) == ("downloading", None)
