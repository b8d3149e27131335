"""A known host's grant in one PostgreSQL statement (nebula.store.knowngrant): what it writes,
that it is one statement, that it never overwrites a change another process made to the host
meanwhile, and that the counts its limits are decided on include what the group lock's
previous holder committed.

Whether a check waits for a lock is read from PostgreSQL (pg_locks), never from a clock.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.store import db
from nebula.store.counts import shard_of
from nebula.store.rollouts import lock_group
from nebula.web.keys import ENGINE
from tests.statements import statements
from tests.test_first_check import BOUND, lock_waiters, rows
from tests.test_rollout import (
    NEW,
    OLD,
    STABLE_ID,
    add_version,
    check,
    hosts,
    point,
    set_policy,
)

pytestmark = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)

_WRITES = ("instance_apps", "grants", "status_counts")


async def release(client: Any, token: str) -> None:
    await add_version(client, token, NEW)
    await point(client, token, NEW)


async def test_a_known_hosts_grant_is_one_statement(
    client: Any, admin_token: str, engine: AsyncEngine
) -> None:
    """A host that has been checking in is granted when the channel moves. Catches the grant
    going through the transaction (a lock, a locking read, updates and inserts), and the
    statement writing a row wrong or not at all (the grant row, the count's move)."""
    (h,) = hosts(1)
    assert await check(client, h) is None  # known and idle before the release
    await release(client, admin_token)
    app_engine = client.app[ENGINE]
    with statements(app_engine, lambda s: any(t in s for t in _WRITES)) as sent:
        assert await check(client, h) == NEW
    assert len(sent) == 1, sent
    assert sent[0].lstrip().startswith("WITH host")
    got = await rows(engine, h.machine_id)
    assert got["state"] == {
        "group_id": STABLE_ID,
        "track": "stable",
        "version": OLD,
        "status": "granted",
        "granted_version": NEW,
        "package": True,
        "granted_at": True,
        "checked": True,
        "hold_reason": None,
        "held": False,
        "retired_at": None,
    }
    assert got["grants"] == [(STABLE_ID, NEW)]
    assert got["counts"] == [("granted", OLD, 1)]
    assert await check(client, h) == NEW  # asked again: the same grant, not a second one
    got = await rows(engine, h.machine_id)
    assert got["grants"] == [(STABLE_ID, NEW)]
    assert got["counts"] == [("granted", OLD, 1)]


async def test_a_known_host_held_by_a_limit_is_held_in_one_statement(
    client: Any, admin_token: str, engine: AsyncEngine
) -> None:
    """Catches the statement granting past a limit, or recording the held host without its
    reason, with a grant row or a moved count."""
    first, second = hosts(2)
    for h in (first, second):
        assert await check(client, h) is None
    await release(client, admin_token)
    await set_policy(client, admin_token, max_concurrent=1)
    assert await check(client, first) == NEW
    with statements(client.app[ENGINE], lambda s: any(t in s for t in _WRITES)) as sent:
        assert await check(client, second) is None
    assert len(sent) == 1, sent
    got = await rows(engine, second.machine_id)
    assert (got["state"]["status"], got["state"]["hold_reason"]) == ("idle", "concurrency")
    assert got["grants"] == []
    assert got["counts"] == [("granted", OLD, 1), ("idle", OLD, 1)]


async def _grant_elsewhere(session: Any, machine_id: str, now: Any) -> None:
    """What another replica's grant of this host writes (its state, grant row and count)."""
    shard = shard_of(machine_id)
    for sql in (
        "UPDATE instance_apps SET status = 'granted', granted_version = :v, granted_at = :t, "
        "status_changed_at = :t WHERE instance_id = :m",
        "INSERT INTO grants (group_id, instance_id, version, granted_at) VALUES (:g, :m, :v, :t)",
        "UPDATE status_counts SET count = count - 1 WHERE group_id = :g AND status = 'idle' "
        "AND version = :o AND shard = :s",
        "INSERT INTO status_counts (group_id, status, version, shard, count) "
        "VALUES (:g, 'granted', :o, :s, 1) ON CONFLICT (group_id, status, version, shard) "
        "DO UPDATE SET count = status_counts.count + 1",
    ):
        await session.execute(
            text(sql), {"g": STABLE_ID, "m": machine_id, "v": NEW, "o": OLD, "s": shard, "t": now}
        )


async def test_a_change_another_process_commits_while_waiting_is_not_overwritten(
    client: Any, admin_token: str, engine: AsyncEngine, clock: Any
) -> None:
    """Another replica grants the host (committing while holding the group's lock) while this
    process still has it cached as idle; this process's check waits for that lock. Its
    statement must find the host changed, write nothing, and the transaction answer with the
    same grant. Catches an update not guarded by the expected state (a second grant row, a
    count moved twice), and a guard read in the statement's snapshot from before the wait."""
    (h,) = hosts(1)
    assert await check(client, h) is None
    await release(client, admin_token)
    await set_policy(client, admin_token, max_concurrent=5)  # a counted grant: the lock alone
    async with db.session_factory(engine)() as session, session.begin():
        await lock_group(session, STABLE_ID)
        await _grant_elsewhere(session, h.machine_id, clock.now)
        task = asyncio.ensure_future(check(client, h))
        async with asyncio.timeout(BOUND):
            while await lock_waiters(engine) == 0:
                assert not task.done(), "the check did not wait for the group's lock"
                await asyncio.sleep(0.05)
    assert await asyncio.wait_for(task, BOUND) == NEW  # the other replica's grant, again
    got = await rows(engine, h.machine_id)
    assert (got["state"]["status"], got["state"]["granted_version"]) == ("granted", NEW)
    assert got["grants"] == [(STABLE_ID, NEW)]
    assert got["counts"] == [("granted", OLD, 1)]


async def test_a_hold_another_process_set_is_not_overwritten(
    client: Any, admin_token: str, engine: AsyncEngine
) -> None:
    """An operator's hold on the host, committed by another process without this one hearing
    of it yet (its cached snapshot says not held). Catches a statement that grants a host
    whose stored state is no longer the one it decided on."""
    (h,) = hosts(1)
    assert await check(client, h) is None
    await release(client, admin_token)
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE instance_apps SET held = true WHERE instance_id = :m"),
            {"m": h.machine_id},
        )
    assert await check(client, h) is None
    got = await rows(engine, h.machine_id)
    assert (got["state"]["status"], got["state"]["held"]) == ("idle", True)
    assert got["grants"] == []


async def test_the_gate_counts_what_the_previous_lock_holder_committed(
    client: Any, admin_token: str, engine: AsyncEngine, clock: Any
) -> None:
    """A transaction of the test's own holds the group's lock and grants the one host the
    concurrency limit allows; a known host's check waits for it. Catches counting in the
    statement's own snapshot (taken before the wait: it would not see that grant, and grant
    past the limit)."""
    first, second = hosts(2)
    for h in (first, second):
        assert await check(client, h) is None
    await release(client, admin_token)
    await set_policy(client, admin_token, max_concurrent=1)
    async with db.session_factory(engine)() as session, session.begin():
        await lock_group(session, STABLE_ID)
        await _grant_elsewhere(session, first.machine_id, clock.now)
        task = asyncio.ensure_future(check(client, second))
        async with asyncio.timeout(BOUND):
            while await lock_waiters(engine) == 0:
                assert not task.done(), "the known host's grant did not wait for the group's lock"
                await asyncio.sleep(0.05)
    assert await asyncio.wait_for(task, BOUND) is None
    got = await rows(engine, second.machine_id)
    assert (got["state"]["status"], got["state"]["hold_reason"]) == ("idle", "concurrency")
    assert got["grants"] == []
    assert got["counts"] == [("granted", OLD, 1), ("idle", OLD, 1)]


async def test_the_hosts_row_is_locked_before_its_state(
    client: Any, admin_token: str, engine: AsyncEngine
) -> None:
    """The check-in batch (nebula.store.seen) locks a host's instances row, then writes its
    instance_apps row. A transaction of the test's own does the same while the known host's
    grant runs: the grant must wait at the host's row without holding the state row, so the
    batch's write goes through. Catches the statement updating instance_apps before instances
    (PostgreSQL found a deadlock: a 500 to the host in a fleet rollout)."""
    (h,) = hosts(1)
    assert await check(client, h) is None
    await release(client, admin_token)
    async with engine.connect() as conn:
        tx = await conn.begin()
        await conn.execute(
            text("SELECT id FROM instances WHERE id = :m FOR UPDATE"), {"m": h.machine_id}
        )
        task = asyncio.ensure_future(check(client, h))
        async with asyncio.timeout(BOUND):
            while await lock_waiters(engine) == 0:
                assert not task.done(), "the grant did not wait for the host's row"
                await asyncio.sleep(0.05)
        # The batch's second write: it would wait for a state row the grant held.
        await conn.execute(text("SET LOCAL lock_timeout = '5s'"))
        await conn.execute(
            text("UPDATE instance_apps SET boot_id = boot_id WHERE instance_id = :m"),
            {"m": h.machine_id},
        )
        await tx.commit()
    assert await asyncio.wait_for(task, BOUND) == NEW
    got = await rows(engine, h.machine_id)
    assert (got["state"]["status"], got["grants"]) == ("granted", [(STABLE_ID, NEW)])
