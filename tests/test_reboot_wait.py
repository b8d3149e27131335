"""Hosts that installed an update and wait for their reboot (issue 12, item 1): through the real
HTTP app on SQLite and PostgreSQL, with the injected clock.

The update timeout covers what a host does on its own (grant to 3/1); an installed host waiting
for locksmithd/FLUO/kured is never timed out or counted as a failure, an optional reboot timeout
only warns, and whether it holds a concurrency slot is the group's choice. Each test's docstring
names the wrong implementation it catches.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import FakeClock
from tests.factories import assert_status_counts_match
from tests.test_rollout import (
    AMD64,
    NEW,
    STABLE,
    Client,
    auth,
    check,
    get_policy,
    hold_reason,
    hosts,
    install,
    omaha,
    reboot_into,
    release,  # noqa: F401 (fixture)
    set_policy,
    state_of,
    sweep,
)


async def rollout(client: Client, token: str) -> dict[str, Any]:
    resp = await client.get(f"{STABLE}/rollout", params=AMD64, headers=auth(token))
    assert resp.status == 200, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def test_safe_mode_canary_waiting_for_its_reboot_does_not_halt_the_group(
    client: Client,
    admin_token: str,
    release: str,  # noqa: F811
    engine: AsyncEngine,
    clock: FakeClock,
    db_url: str,
) -> None:
    """The reported case: --update-timeout 3s --safe-mode on, the canary sends 13/1, 14/1, 3/1
    and waits ten seconds for its reboot window. Catches a sweeper that times out `installed`
    hosts (the group paused: "safe mode: the first host to update failed"), and a canary rule
    that lets the others through before the canary rebooted."""
    await set_policy(client, admin_token, safe_mode=True, update_timeout="3s")
    canary, second = hosts(2)
    assert await check(client, canary) == NEW
    await install(client, canary)
    clock.advance(seconds=10)
    assert await sweep(db_url, clock.now) == []
    policy = await get_policy(client, admin_token)
    assert policy["updates_enabled"] is True, policy["paused_reason"]
    state = await state_of(engine, canary.machine_id)
    assert state.status == "installed"
    # Still the canary: nobody else takes the version before it rebooted into it.
    assert await check(client, second) is None
    assert await hold_reason(engine, second) == "canary"
    # Its window opens: it boots into the new version and completes; the rest may follow.
    assert await reboot_into(client, canary, NEW) is None
    assert (await state_of(engine, canary.machine_id)).status == "complete"
    assert await check(client, second) == NEW
    await assert_status_counts_match(db_url, by_version=True)


async def test_installed_host_waiting_past_the_update_timeout_is_no_failure(
    client: Client,
    admin_token: str,
    release: str,  # noqa: F811
    engine: AsyncEngine,
    clock: FakeClock,
    db_url: str,
) -> None:
    """A host installs within its 2 hours and then waits five days for its reboot window: it
    is shown installed with how long it waited, the sweeper leaves it alone, the failure gate
    (1 failed host) does not fire, and it completes when it reboots. A host that never reported
    3/1 still times out. Catches a timeout that runs from the grant to completion (the old
    rule), a status that counts a waiting host as timed out, and a fix that stops timing out
    hosts altogether."""
    await set_policy(client, admin_token, update_timeout="2h", pause_on_failures=["1"])
    waiting, stuck = hosts(2)
    assert await check(client, waiting) == NEW
    assert await check(client, stuck) == NEW
    await omaha(client, stuck.event(13, 1))
    clock.advance(minutes=30)
    await install(client, waiting)
    installed_at = clock.now
    clock.advance(days=5)
    paused = await sweep(db_url, clock.now)
    # Only the host that never installed timed out (and that one failure pauses the group).
    assert len(paused) == 1 and "1 hosts failed" in paused[0]
    assert (await state_of(engine, stuck.machine_id)).status == "timed_out"
    state = await state_of(engine, waiting.machine_id)
    assert (state.status, state.installed_at) == ("installed", installed_at)
    status = await rollout(client, admin_token)
    assert status["hosts"]["timed_out"] == 1 and status["hosts"]["failed"] == 0
    assert (status["hosts"]["in_progress"], status["hosts"]["installed"]) == (1, 1)
    assert status["longest_reboot_wait_seconds"] == 5 * 86400
    assert status["hosts"]["reboot_overdue"] == 0  # no reboot timeout set
    resp = await client.get("/api/v1/instances", headers=auth(admin_token))
    listed = {i["machine_id"]: i for i in (await resp.json())["instances"]}
    assert listed[waiting.machine_id]["status"] == "installed"
    assert listed[waiting.machine_id]["reboot_wait_seconds"] == 5 * 86400
    assert listed[stuck.machine_id]["reboot_wait_seconds"] is None
    # The window opens: it reboots into the update and completes.
    assert await reboot_into(client, waiting, NEW) is None
    assert (await state_of(engine, waiting.machine_id)).status == "complete"
    assert await sweep(db_url, clock.now) == []
    await assert_status_counts_match(db_url, by_version=True)


async def test_waiting_installed_host_alone_never_trips_the_failure_gate(
    client: Client,
    admin_token: str,
    release: str,  # noqa: F811
    clock: FakeClock,
    db_url: str,
) -> None:
    """With a gate of one failed host, three hosts that all installed and then wait a week pause
    nothing. Catches a sweeper or gate that counts installed hosts past the timeout."""
    await set_policy(client, admin_token, update_timeout="1h", pause_on_failures=["1", "1%"])
    for host in hosts(3):
        assert await check(client, host) == NEW
        await install(client, host)
    clock.advance(days=7)
    assert await sweep(db_url, clock.now) == []
    assert (await get_policy(client, admin_token))["updates_enabled"] is True
    status = await rollout(client, admin_token)
    assert (status["state"], status["hosts"]["installed"], status["hosts"]["timed_out"]) == (
        "running",
        3,
        0,
    )


async def test_reboot_timeout_warns_and_never_fails(
    client: Client,
    admin_token: str,
    release: str,  # noqa: F811
    engine: AsyncEngine,
    clock: FakeClock,
    db_url: str,
) -> None:
    """--reboot-timeout 2d: a host installed three days ago is flagged overdue in rollout status
    and the instance list; one granted three days ago that installed only a day ago is not; and
    neither is timed out nor pauses the group (whose gate is one failed host). Catches a reboot
    timeout that acts as a second update timeout (a failure), one measured from the grant
    instead of the install (the slow host would be overdue too), and a warning that never
    shows."""
    policy = await set_policy(client, admin_token, reboot_timeout="2d", pause_on_failures=["1"])
    assert policy["reboot_timeout"] == "2d"
    early, slow = hosts(2)
    assert await check(client, early) == NEW
    assert await check(client, slow) == NEW
    await install(client, early)
    await omaha(client, slow.event(13, 1))
    clock.advance(days=2)
    await install(client, slow)
    clock.advance(days=1)
    assert await sweep(db_url, clock.now) == []
    assert (await get_policy(client, admin_token))["updates_enabled"] is True
    status = await rollout(client, admin_token)
    assert (status["hosts"]["installed"], status["hosts"]["reboot_overdue"]) == (2, 1)
    assert (status["hosts"]["failed"], status["hosts"]["timed_out"]) == (0, 0)
    assert status["reboot_timeout"] == "2d"
    assert status["longest_reboot_wait_seconds"] == 3 * 86400
    resp = await client.get(
        "/api/v1/instances", params={"status": "installed"}, headers=auth(admin_token)
    )
    listed = {i["machine_id"]: i for i in (await resp.json())["instances"]}
    assert listed[early.machine_id]["reboot_overdue"] is True
    assert listed[slow.machine_id]["reboot_overdue"] is False
    assert listed[slow.machine_id]["reboot_wait_seconds"] == 86400
    for host in (early, slow):
        assert (await state_of(engine, host.machine_id)).status == "installed"
    metrics = await (await client.get("/metrics")).text()
    assert 'nebula_reboot_overdue_instances{arch="amd64",group="stable"} 1.0' in metrics
    assert (
        'nebula_instances{app="flatcar",arch="amd64",channel="stable",group="stable",'
        'status="installed",version="3815.2.0"} 2.0'
    ) in metrics
    # Lifting it lifts the warning.
    await set_policy(client, admin_token, reboot_timeout=None)
    assert (await rollout(client, admin_token))["hosts"]["reboot_overdue"] == 0


async def test_installed_counts_as_updating_decides_the_concurrency_slot(
    client: Client,
    admin_token: str,
    release: str,  # noqa: F811
    engine: AsyncEngine,
    clock: FakeClock,
) -> None:
    """--max-concurrent 1 with an update timeout of 1h: by default an installed host waiting
    for its reboot keeps its slot (even past the update timeout: it has a reboot ahead); with
    --installed-counts-as-updating off it frees it at once. Catches the option being ignored
    either way, and an installed host that frees its slot just by outliving the update
    timeout."""
    policy = await set_policy(client, admin_token, max_concurrent=1, update_timeout="1h")
    assert policy["installed_counts_as_updating"] is True
    first, second, third = hosts(3)
    assert await check(client, first) == NEW
    await install(client, first)
    clock.advance(hours=3)
    assert await check(client, second) is None
    assert await hold_reason(engine, second) == "concurrency"
    policy = await set_policy(client, admin_token, installed_counts_as_updating=False)
    assert policy["installed_counts_as_updating"] is False
    assert await check(client, second) == NEW
    # second is downloading: it holds the slot, installed or not.
    await omaha(client, second.event(13, 1))
    assert await check(client, third) is None
    assert await hold_reason(engine, third) == "concurrency"
    await set_policy(client, admin_token, installed_counts_as_updating="on")
    await install(client, second)
    assert await check(client, third) is None  # two installed hosts hold the one slot
    resp = await client.patch(
        f"{STABLE}/policy",
        params=AMD64,
        json={"installed_counts_as_updating": "maybe"},
        headers=auth(admin_token),
    )
    assert resp.status == 400
