"""A new host's first check-in in one PostgreSQL statement (nebula.store.firstcheck): what it
writes, that it is one statement, and that the counts its limits are decided on are read after
the group's lock, so they include what the lock's previous holder committed.

Whether a check waits for a lock is read from PostgreSQL (pg_locks), never from a clock.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.store import db
from nebula.store.rollouts import lock_group
from nebula.web.keys import ENGINE
from tests.statements import statements
from tests.test_rollout import (
    NEW,
    STABLE_ID,
    add_version,
    check,
    hosts,
    point,
    set_policy,
)

pytestmark = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)

BOUND = 30.0  # seconds: a liveness bound, far above any honest wait here


async def rows(engine: AsyncEngine, machine_id: str) -> dict[str, Any]:
    """What the database holds of one host: its state, grants and status counts."""
    async with engine.connect() as conn:
        state = (
            (
                await conn.execute(
                    text(
                        "SELECT group_id, track, version, status, granted_version, "
                        "granted_package_id IS NOT NULL AS package, granted_at IS NOT NULL "
                        "AS granted_at, last_check_at IS NOT NULL AS checked, hold_reason, held, "
                        "retired_at FROM instance_apps WHERE instance_id = :m"
                    ),
                    {"m": machine_id},
                )
            )
            .mappings()
            .one()
        )
        ip = (
            await conn.execute(text("SELECT ip FROM instances WHERE id = :m"), {"m": machine_id})
        ).scalar_one()
        grants = (
            await conn.execute(
                text("SELECT group_id, version FROM grants WHERE instance_id = :m"),
                {"m": machine_id},
            )
        ).all()
        counts = (
            await conn.execute(
                text(
                    "SELECT status, version, sum(count) FROM status_counts "
                    "WHERE group_id = :g GROUP BY status, version HAVING sum(count) <> 0"
                ),
                {"g": STABLE_ID},
            )
        ).all()
    return {
        "state": dict(state),
        "ip": ip,
        "grants": [tuple(g) for g in grants],
        "counts": sorted(tuple(c) for c in counts),
    }


async def test_a_new_hosts_grant_is_one_statement(
    client: Any, admin_token: str, engine: AsyncEngine
) -> None:
    """Catches the first check-in going through the transaction (a lock, upserts and inserts:
    nine round trips) or a read before its statement, and the statement writing a row wrong or
    not at all."""
    await add_version(client, admin_token, NEW)
    await point(client, admin_token, NEW)
    (h,) = hosts(1)
    app_engine = client.app[ENGINE]
    with statements(app_engine, lambda s: "instance_apps" in s or "grants" in s) as sent:
        assert await check(client, h) == NEW
    assert len(sent) == 1, sent  # one statement reads that it has no state and writes it
    assert sent[0].lstrip().startswith("WITH stored")
    got = await rows(engine, h.machine_id)
    assert got["state"] == {
        "group_id": STABLE_ID,
        "track": "stable",
        "version": h.version,
        "status": "granted",
        "granted_version": NEW,
        "package": True,
        "granted_at": True,
        "checked": True,
        "hold_reason": None,
        "held": False,
        "retired_at": None,
    }
    assert got["ip"] == "127.0.0.1"
    assert got["grants"] == [(STABLE_ID, NEW)]
    assert got["counts"] == [("granted", h.version, 1)]
    assert await check(client, h) == NEW  # asked again: the same grant, not a second one
    assert (await rows(engine, h.machine_id))["grants"] == [(STABLE_ID, NEW)]


async def test_a_new_host_held_by_a_limit_is_written_held(
    client: Any, admin_token: str, engine: AsyncEngine
) -> None:
    """Catches the statement granting past a limit, or writing the held host without its
    reason, its count or with a grant row."""
    await add_version(client, admin_token, NEW)
    await point(client, admin_token, NEW)
    await set_policy(client, admin_token, max_concurrent=1)
    first, second = hosts(2)
    assert await check(client, first) == NEW
    assert await check(client, second) is None
    got = await rows(engine, second.machine_id)
    assert got["state"]["status"] == "idle"
    assert got["state"]["hold_reason"] == "concurrency"
    assert got["state"]["granted_version"] is None
    assert got["grants"] == []
    assert got["counts"] == [("granted", first.version, 1), ("idle", second.version, 1)]


async def test_a_new_host_with_nothing_to_get_is_written_idle(
    client: Any, admin_token: str, engine: AsyncEngine
) -> None:
    """The first-seen host on the target: idle, no grant, counted under its version."""
    await add_version(client, admin_token, NEW)
    await point(client, admin_token, NEW)
    (h,) = hosts(1, version=NEW)
    assert await check(client, h) is None
    got = await rows(engine, h.machine_id)
    assert (got["state"]["status"], got["state"]["hold_reason"]) == ("idle", None)
    assert got["grants"] == []
    assert got["counts"] == [("idle", NEW, 1)]


async def lock_waiters(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        result = await conn.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted"))
        return int(result.scalar_one())


async def test_the_gate_counts_what_the_previous_lock_holder_committed(
    client: Any, admin_token: str, engine: AsyncEngine, clock: Any
) -> None:
    """A transaction of the test's own holds the group's lock, as a counted grant does, and
    records the period's last grant; a new host's check waits for it. Catches counting in the
    statement's own snapshot (taken before the wait: it would not see that grant, and grant a
    host past the rate limit)."""
    await add_version(client, admin_token, NEW)
    await point(client, admin_token, NEW)
    await set_policy(client, admin_token, max_updates_per_period=2, period="1h")
    first, second = hosts(2)
    assert await check(client, first) == NEW  # 1 of 2
    async with db.session_factory(engine)() as session, session.begin():
        await lock_group(session, STABLE_ID)
        await session.execute(
            text(
                "INSERT INTO grants (group_id, instance_id, version, granted_at) "
                "VALUES (:g, :m, :v, :t)"
            ),
            {"g": STABLE_ID, "m": first.machine_id, "v": NEW, "t": clock.now},
        )
        task = asyncio.ensure_future(check(client, second))
        async with asyncio.timeout(BOUND):
            while await lock_waiters(engine) == 0:
                assert not task.done(), "the new host's grant did not wait for the group's lock"
                await asyncio.sleep(0.05)
    assert await asyncio.wait_for(task, BOUND) is None
    got = await rows(engine, second.machine_id)
    assert got["state"]["hold_reason"] == "rate_limit"
    assert got["grants"] == []
