"""Hosts that leave (issue 12, items 2 and 3): retired after `retire_after` of silence, back on
their next check-in, and deleted by an admin. Through the real HTTP app on SQLite and
PostgreSQL with the injected clock; the retirement job runs as the leader runs it, announcing
to the app's host cache. Each test's docstring names the wrong implementation it catches.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.jobs.retirement import retire_once
from nebula.store.db import create_engine, session_factory
from nebula.store.models import Activity, Event, Grant, Instance, InstanceApp
from nebula.web.keys import HOST_CHANGES
from tests.conftest import FakeClock
from tests.factories import assert_status_counts_match
from tests.test_rollout import (
    AMD64,
    NEW,
    OLD,
    STABLE,
    STABLE_ID,
    Client,
    auth,
    check,
    hold_reason,
    hosts,
    install,
    reboot_into,
    release,  # noqa: F401 (fixture)
    set_policy,
    state_of,
)


async def retire(client: Client, db_url: str, clock: FakeClock) -> list[str]:
    """One pass of the retirement job (another engine, as the leader's process has), telling
    the app's host cache as the deployment's change feed would."""
    engine = create_engine(db_url)
    try:
        return await retire_once(session_factory(engine), clock.now, client.app[HOST_CHANGES])
    finally:
        await engine.dispose()


async def rollout(client: Client, token: str) -> dict[str, Any]:
    resp = await client.get(f"{STABLE}/rollout", params=AMD64, headers=auth(token))
    assert resp.status == 200, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def listed(client: Client, token: str, **params: str) -> set[str]:
    resp = await client.get("/api/v1/instances", params=params, headers=auth(token))
    assert resp.status == 200, await resp.text()
    return {i["machine_id"] for i in (await resp.json())["instances"]}


async def group_counts(client: Client, token: str) -> dict[str, int]:
    resp = await client.get(STABLE, params=AMD64, headers=auth(token))
    assert resp.status == 200, await resp.text()
    return (await resp.json())["instances"]  # type: ignore[no-any-return]


async def test_silent_hosts_leave_every_count_and_come_back(
    client: Client,
    admin_token: str,
    release: str,  # noqa: F811
    engine: AsyncEngine,
    clock: FakeClock,
    db_url: str,
) -> None:
    """Two hosts go silent for 15 days (retire_after 14d, the default): one installed and
    waiting for its reboot, holding the one concurrency slot, one idle behind the target. They
    leave rollout status (which is then done), the group's counts, /metrics and the default
    instance list; the slot is free. Each comes back with its state intact: the installed one
    completes when it reboots, the idle one is idle again. Counts equal a recount throughout.
    Catches a retirement that only hides hosts from one view (counts, metrics or the list), one
    that loses state or history, a host that stays retired after checking in, and counts not
    moved back (assert_status_counts_match)."""
    policy = await set_policy(client, admin_token, max_concurrent=1)
    assert policy["retire_after"] == "14d"
    waiting, idle = hosts(2)
    assert await check(client, waiting) == NEW
    await install(client, waiting)
    assert await check(client, idle) is None
    assert await hold_reason(engine, idle) == "concurrency"
    clock.advance(days=10)
    (alive,) = hosts(1, start=10, version=NEW)
    assert await check(client, alive) is None
    assert await retire(client, db_url, clock) == []  # nobody silent for 14 days yet
    clock.advance(days=5)
    assert sorted(await retire(client, db_url, clock)) == sorted(
        [waiting.machine_id, idle.machine_id]
    )
    assert await retire(client, db_url, clock) == []  # nothing twice

    counted = await assert_status_counts_match(db_url, by_version=True)
    assert counted == {(STABLE_ID, "idle"): 1}  # only `alive`
    status = await rollout(client, admin_token)
    assert status["state"] == "done"
    assert (status["hosts"]["total"], status["hosts"]["complete"]) == (1, 1)
    assert (status["hosts"]["in_progress"], status["hosts"]["remaining"]) == (0, 0)
    assert await group_counts(client, admin_token) == {"idle": 1}
    metrics = await (await client.get("/metrics")).text()
    assert 'status="installed"' not in metrics
    assert (
        'nebula_instances{app="flatcar",arch="amd64",channel="stable",group="stable",'
        'status="idle",version="4152.2.3"} 1.0'
    ) in metrics
    assert await listed(client, admin_token) == {alive.machine_id}
    assert await listed(client, admin_token, all="1") == {
        alive.machine_id,
        waiting.machine_id,
        idle.machine_id,
    }
    assert await listed(client, admin_token, retired="1") == {waiting.machine_id, idle.machine_id}
    state = await state_of(engine, waiting.machine_id)
    assert (state.status, state.granted_version) == ("installed", NEW)  # its state is kept

    # The retired installed host holds no slot any more: a newcomer gets the update.
    (newcomer,) = hosts(1, start=20)
    assert await check(client, newcomer) == NEW

    # Back: the installed one reboots into the update and completes; the idle one is live.
    assert await reboot_into(client, waiting, NEW) is None
    state = await state_of(engine, waiting.machine_id)
    assert (state.status, state.retired_at) == ("complete", None)
    assert await check(client, idle) is None
    state = await state_of(engine, idle.machine_id)
    assert (state.status, state.retired_at, state.version) == ("idle", None, OLD)
    counted = await assert_status_counts_match(db_url, by_version=True)
    assert counted == {
        (STABLE_ID, "idle"): 2,
        (STABLE_ID, "complete"): 1,
        (STABLE_ID, "granted"): 1,
    }
    assert await listed(client, admin_token, retired="1") == set()
    assert (await rollout(client, admin_token))["hosts"]["total"] == 4


async def test_retired_host_is_not_answered_from_the_host_cache(
    client: Client,
    admin_token: str,
    release: str,  # noqa: F811
    engine: AsyncEngine,
    clock: FakeClock,
    db_url: str,
) -> None:
    """A current host whose check-ins are answered from memory (steady state) goes silent and
    is retired; its next check-in, the same bytes as a steady one, must un-retire it durably in
    that request (not in a later last-seen batch). Catches a host cache or steady-state rule
    that answers a retired host as a plain check-in (it would stay retired and out of every
    count while checking in every 45 minutes)."""
    (host,) = hosts(1, version=NEW)
    assert await check(client, host) is None
    clock.advance(minutes=45)
    assert await check(client, host) is None  # steady: from the host cache
    clock.advance(days=14, minutes=1)
    assert await retire(client, db_url, clock) == [host.machine_id]
    assert (await state_of(engine, host.machine_id)).retired_at == clock.now
    assert await assert_status_counts_match(db_url) == {}
    clock.advance(minutes=1)
    assert await check(client, host) is None
    state = await state_of(engine, host.machine_id)
    assert (state.retired_at, state.status) == (None, "idle")
    assert await assert_status_counts_match(db_url) == {(STABLE_ID, "idle"): 1}
    async with engine.connect() as conn:
        seen = (
            await conn.execute(select(Instance.last_seen_at).where(Instance.id == host.machine_id))
        ).scalar_one()
    assert seen == clock.now
    # And it is steady again afterwards, still live.
    clock.advance(minutes=45)
    assert await check(client, host) is None
    assert (await state_of(engine, host.machine_id)).retired_at is None


async def test_retire_after_is_per_group_and_can_be_off(
    client: Client,
    admin_token: str,
    release: str,  # noqa: F811
    clock: FakeClock,
    db_url: str,
) -> None:
    """--retire-after 2d retires after two days; none never retires. Catches a job that ignores
    the group's setting (the default 14 days) and one that retires when it is off."""
    policy = await set_policy(client, admin_token, retire_after="2d")
    assert policy["retire_after"] == "2d"
    first, second = hosts(2, version=NEW)
    assert await check(client, first) is None
    clock.advance(days=2, seconds=1)
    assert await retire(client, db_url, clock) == [first.machine_id]
    policy = await set_policy(client, admin_token, retire_after="none")
    assert policy["retire_after"] is None
    assert await check(client, second) is None
    clock.advance(days=400)
    assert await retire(client, db_url, clock) == []
    resp = await client.patch(
        f"{STABLE}/policy", params=AMD64, json={"retire_after": "soon"}, headers=auth(admin_token)
    )
    assert resp.status == 400


async def test_delete_removes_a_host_and_is_admin_only(
    client: Client,
    admin_token: str,
    viewer_token: str,
    release: str,  # noqa: F811
    engine: AsyncEngine,
    db_url: str,
) -> None:
    """DELETE /api/v1/instances/ID removes the host, its state, its events and grants, moves the
    counts and logs who did it; a viewer token is refused (403) and changes nothing; an
    unknown host is 404. Catches a delete open to read-only tokens, one that leaves the counts
    (or events) behind, and one that is not in the activity log."""
    gone, kept = hosts(2)
    assert await check(client, gone) == NEW
    await install(client, gone)
    assert await check(client, kept) == NEW
    assert await assert_status_counts_match(db_url) == {
        (STABLE_ID, "installed"): 1,
        (STABLE_ID, "granted"): 1,
    }

    resp = await client.delete(f"/api/v1/instances/{gone.machine_id}", headers=auth(viewer_token))
    assert resp.status == 403
    assert (await state_of(engine, gone.machine_id)).status == "installed"

    braced = "{" + gone.machine_id.upper() + "}"
    resp = await client.delete(f"/api/v1/instances/{braced}", headers=auth(admin_token))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["machine_id"] == gone.machine_id
    async with engine.connect() as conn:
        for model, column in (
            (Instance, Instance.id),
            (InstanceApp, InstanceApp.instance_id),
            (Event, Event.instance_id),
            (Grant, Grant.instance_id),
        ):
            n = (
                await conn.execute(
                    select(func.count()).select_from(model).where(column == gone.machine_id)
                )
            ).scalar_one()
            assert n == 0, model
        entry = (
            await conn.execute(
                select(Activity.actor, Activity.action, Activity.group_id, Activity.message).where(
                    Activity.action == "delete"
                )
            )
        ).one()
    assert tuple(entry) == ("ops", "delete", STABLE_ID, f"host {gone.machine_id} deleted")
    assert await assert_status_counts_match(db_url, by_version=True) == {(STABLE_ID, "granted"): 1}
    resp = await client.delete(f"/api/v1/instances/{gone.machine_id}", headers=auth(admin_token))
    assert resp.status == 404
    # Checking in again, it is a new host.
    gone.version = OLD
    assert await check(client, gone) == NEW
    assert await assert_status_counts_match(db_url) == {(STABLE_ID, "granted"): 2}


async def test_deleting_a_retired_host_moves_no_count(
    client: Client,
    admin_token: str,
    release: str,  # noqa: F811
    clock: FakeClock,
    db_url: str,
) -> None:
    """A retired host is in no count: deleting it must not take it out a second time. Catches
    a delete that moves the counts of every state it removes (the count would go to -1)."""
    gone, kept = hosts(2, version=NEW)
    assert await check(client, gone) is None
    clock.advance(days=15)
    assert await check(client, kept) is None
    assert await retire(client, db_url, clock) == [gone.machine_id]
    resp = await client.delete(f"/api/v1/instances/{gone.machine_id}", headers=auth(admin_token))
    assert resp.status == 200, await resp.text()
    assert await assert_status_counts_match(db_url, by_version=True) == {(STABLE_ID, "idle"): 1}
    assert await listed(client, admin_token, all="1") == {kept.machine_id}
