"""The rollout rules end to end: through the real HTTP app, on SQLite and PostgreSQL.

One test per rule of the rollout policy (rate per sliding period, concurrency, update timeout,
safe mode, failure gate by hosts and by share, maintenance windows, staged percentage, floors,
pin and downgrade, per-host hold) and the interactions that matter. Policies are set through the
admin API the way an operator does it; hosts are the `Host` simulator; the clock is the FakeClock
the app was given. Each test's docstring names the wrong implementation it catches.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

import pytest
from lxml import etree
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.jobs.sweeper import sweep_once
from nebula.policy import rollout_bucket
from nebula.store.db import create_engine, session_factory
from nebula.store.models import InstanceApp
from tests.conftest import FakeClock
from tests.factories import FLATCAR_APP_ID, Host, assert_status_counts_match

Client = Any  # aiohttp TestClient

OLD, MID, MID2, NEW, NEWER = "3815.2.0", "4000.0.0", "4100.0.0", "4152.2.3", "4230.0.0"
STABLE = "/api/v1/groups/stable"
STABLE_ID = "9a2deb70-37be-4026-853f-bfdd6b347bbe"  # the seeded stable amd64 group
AMD64 = {"arch": "amd64"}
NEW_BOOT = "{7b2e7e0e-5f0a-4c59-9d7e-1f2a3b4c5d6e}"
ERROR_HASH = 268435466  # base code 10 (payload hash mismatch) | 1<<28 (self-hosted server)
ROLLBACK = 268435500  # base code 44 | 1<<28


# -- helpers ---------------------------------------------------------------------------------------


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def machine(n: int) -> str:
    return f"{n:032x}"


def _file(name: str, version: str) -> dict[str, Any]:
    data = f"{name}-{version}".encode() * 64
    return {
        "name": name,
        "size": len(data),
        "sha1": hashlib.sha1(data).hexdigest(),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


async def add_version(client: Client, token: str, version: str, arch: str = "amd64") -> None:
    """A full package hosted elsewhere (no upload needed: the rules do not look at bytes)."""
    body = {
        "version": version,
        "arch": arch,
        "base_url": f"https://cdn.example/flatcar/{arch}/{version}/",
        "files": [_file("flatcar_production_update.gz", version)],
    }
    resp = await client.post("/api/v1/packages", json=body, headers=auth(token))
    assert resp.status == 201, await resp.text()


async def point(client: Client, token: str, version: str) -> None:
    resp = await client.put(
        "/api/v1/channels/stable", json={"arch": "amd64", "version": version}, headers=auth(token)
    )
    assert resp.status == 200, await resp.text()


async def set_policy(client: Client, token: str, **fields: Any) -> dict[str, Any]:
    resp = await client.patch(f"{STABLE}/policy", params=AMD64, json=fields, headers=auth(token))
    assert resp.status == 200, await resp.text()
    return (await resp.json())["policy"]  # type: ignore[no-any-return]


async def get_policy(client: Client, token: str) -> dict[str, Any]:
    resp = await client.get(f"{STABLE}/policy", params=AMD64, headers=auth(token))
    assert resp.status == 200, await resp.text()
    return (await resp.json())["policy"]  # type: ignore[no-any-return]


async def post(client: Client, token: str, path: str, **body: Any) -> Any:
    resp = await client.post(path, params=AMD64, json=body, headers=auth(token))
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def activity(client: Client, token: str) -> list[dict[str, Any]]:
    resp = await client.get(f"{STABLE}/activity", params=AMD64, headers=auth(token))
    assert resp.status == 200, await resp.text()
    return (await resp.json())["activity"]  # type: ignore[no-any-return]


async def omaha(client: Client, body: bytes) -> etree._Element:
    resp = await client.post("/v1/update/", data=body, headers={"Content-Type": "text/xml"})
    assert resp.status == 200, await resp.text()
    return etree.fromstring(await resp.read())


async def check(client: Client, host: Host, **kwargs: Any) -> str | None:
    """One update check: the offered version, or None for noupdate (anything else fails)."""
    doc = await omaha(client, host.check(**kwargs))
    uc = doc.find("app/updatecheck")
    assert uc is not None
    if uc.get("status") == "noupdate":
        return None
    assert uc.get("status") == "ok", etree.tostring(doc)
    manifest = uc.find("manifest")
    assert manifest is not None
    return manifest.get("version")


async def install(client: Client, host: Host) -> None:
    """Download and install what was granted; the host then waits for its reboot."""
    for event_type, result in ((13, 1), (14, 1), (3, 1)):
        await omaha(client, host.event(event_type, result))


async def reboot_into(client: Client, host: Host, version: str) -> str | None:
    """The first check after booting into `version` (3/2 previousversion=<old>)."""
    old, host.version, host.boot_id = host.version, version, NEW_BOOT
    return await check(client, host, previous_version=old)


async def complete(client: Client, host: Host, version: str) -> str | None:
    await install(client, host)
    return await reboot_into(client, host, version)


async def roll_back(client: Client, host: Host) -> str | None:
    """Installed, rebooted, and came back on the old version: 3/0 errorcode=44 in the check."""
    await install(client, host)
    host.boot_id = NEW_BOOT
    event = f'<event eventtype="3" eventresult="0" errorcode="{ROLLBACK}"></event>'
    return await check(client, host, event=event)


async def state_of(engine: AsyncEngine, machine_id: str) -> InstanceApp:
    async with session_factory(engine)() as session:
        state = await session.get(InstanceApp, (machine_id, FLATCAR_APP_ID))
    assert state is not None
    return state


async def hold_reason(engine: AsyncEngine, host: Host) -> str | None:
    return (await state_of(engine, host.machine_id)).hold_reason


async def sweep(db_url: str, now: datetime) -> list[str]:
    """One pass of the timeout sweeper, as another replica would run it."""
    engine = create_engine(db_url)
    try:
        return await sweep_once(session_factory(engine), now)
    finally:
        await engine.dispose()


def hosts(n: int, start: int = 0, version: str = OLD) -> list[Host]:
    return [Host(machine_id=machine(start + i), version=version) for i in range(n)]


@pytest.fixture
async def release(client: Client, admin_token: str) -> str:
    """NEW as stable amd64's target."""
    await add_version(client, admin_token, NEW)
    await point(client, admin_token, NEW)
    return NEW


# -- updates per period --------------------------------------------------------------------------


async def test_rate_limit_is_a_sliding_window(
    client: Client, admin_token: str, release: str, engine: AsyncEngine, clock: FakeClock
) -> None:
    """At most 2 new grants in any hour. Catches a limit that never frees up (counts all grants
    ever), one on fixed clock hours (13:00 would start a fresh budget of 2 and let h3 in), and
    one counted on hosts in flight instead of grants (h0, h1 completed and would free it)."""
    await set_policy(client, admin_token, max_updates_per_period=2, period="1h")
    h = hosts(5)
    t0 = clock.now  # 12:00
    assert await check(client, h[0]) == NEW
    clock.advance(minutes=20)
    assert await check(client, h[1]) == NEW
    # Both complete: the rate counts grants, not hosts updating now.
    assert await complete(client, h[0], NEW) is None
    assert await complete(client, h[1], NEW) is None
    assert await check(client, h[2]) is None
    assert await hold_reason(engine, h[2]) == "rate_limit"

    # 13:01: h0's grant (12:00) left the window; h1's (12:20) is still in it.
    clock.now = t0 + timedelta(minutes=61)
    assert await check(client, h[2]) == NEW
    assert await check(client, h[3]) is None
    assert await hold_reason(engine, h[3]) == "rate_limit"
    clock.advance(minutes=20)  # 13:21: h1's grant left too
    assert await check(client, h[3]) == NEW
    assert await check(client, h[4]) is None
    # A retry of a granted host is not a new grant: h3 gets its answer again, h4 still waits.
    assert await check(client, h[3]) == NEW
    assert await hold_reason(engine, h[4]) == "rate_limit"


# -- concurrency ---------------------------------------------------------------------------------


async def test_concurrency_slot_freed_by_completion(
    client: Client, admin_token: str, release: str, engine: AsyncEngine
) -> None:
    """At most 2 hosts between grant and completion. Catches a limit that counts grants (it
    would stay full after completions), one that counts only downloading hosts (h0 is merely
    granted), and one that ignores failed hosts freeing their slot."""
    await set_policy(client, admin_token, max_concurrent=2)
    h = hosts(5)
    assert await check(client, h[0]) == NEW
    assert await check(client, h[1]) == NEW
    await omaha(client, h[1].event(13, 1))
    assert await check(client, h[2]) is None
    assert await hold_reason(engine, h[2]) == "concurrency"
    assert await complete(client, h[0], NEW) is None  # frees a slot
    assert await check(client, h[2]) == NEW
    assert await check(client, h[3]) is None
    assert await hold_reason(engine, h[3]) == "concurrency"
    # A failed host is not updating any more: its slot is free.
    await omaha(client, h[1].event(3, 0, ERROR_HASH))
    assert await check(client, h[3]) == NEW
    assert await check(client, h[4]) is None


async def test_update_timeout_frees_the_slot_and_counts_as_a_failure(
    client: Client,
    admin_token: str,
    release: str,
    engine: AsyncEngine,
    clock: FakeClock,
    db_url: str,
) -> None:
    """A granted host not complete within the timeout stops holding its slot (even before the
    sweeper ran), the sweeper marks it timed_out, and the failure gate counts it. Catches a slot
    held forever by a host that went quiet, a sweeper that marks nothing (or marks hosts inside
    their time), and timeouts left out of the failure count."""
    await set_policy(
        client, admin_token, max_concurrent=1, update_timeout="2h", pause_on_failures=["1"]
    )
    h = hosts(3)
    assert await check(client, h[0]) == NEW
    await omaha(client, h[0].event(13, 1))
    clock.advance(hours=1, minutes=59)
    assert await check(client, h[1]) is None
    assert await hold_reason(engine, h[1]) == "concurrency"
    assert await sweep(db_url, clock.now) == []  # not yet: still inside its 2 hours
    assert (await state_of(engine, h[0].machine_id)).status == "downloading"

    clock.advance(minutes=2)
    assert await check(client, h[1]) == NEW  # h0 no longer holds the slot
    paused = await sweep(db_url, clock.now)
    assert len(paused) == 1 and "1 hosts failed" in paused[0] and NEW in paused[0]
    state = await state_of(engine, h[0].machine_id)
    assert (state.status, state.granted_version) == ("timed_out", NEW)
    # ... counted as a failure: the gate (1 failed host) paused the group, as "nebula".
    policy = await get_policy(client, admin_token)
    assert policy["updates_enabled"] is False and policy["paused_by"] == "nebula"
    assert "failure gate" in policy["paused_reason"]
    (entry, *_) = await activity(client, admin_token)
    assert (entry["actor"], entry["action"]) == ("nebula", "auto_pause")
    assert await check(client, h[2]) is None
    assert await hold_reason(engine, h[2]) == "paused"
    # A second pass finds nothing new to mark.
    assert await sweep(db_url, clock.now) == []

    resp = await client.get(f"{STABLE}/rollout", params=AMD64, headers=auth(admin_token))
    counts = (await resp.json())["hosts"]
    assert (counts["timed_out"], counts["in_progress"]) == (1, 1)
    # The sweeper moved the maintained status counts along with the host.
    counted = await assert_status_counts_match(db_url, by_version=True)
    assert counted[(STABLE_ID, "timed_out")] == 1


# -- safe mode -----------------------------------------------------------------------------------


async def test_safe_mode_canary_first(
    client: Client, admin_token: str, release: str, engine: AsyncEngine
) -> None:
    """A new version goes to one host; the rest wait (hold reason canary) until it completed.
    Catches a canary rule that releases everyone once the canary downloaded or installed, and
    one that never releases them."""
    await set_policy(client, admin_token, safe_mode=True)
    canary, *rest = hosts(4)
    assert await check(client, canary) == NEW
    for step in ((13, 1), (14, 1), (3, 1)):
        assert await check(client, rest[0]) is None
        assert await hold_reason(engine, rest[0]) == "canary"
        await omaha(client, canary.event(*step))
    assert await check(client, rest[1]) is None  # installed, waiting for its reboot: still
    assert await hold_reason(engine, rest[1]) == "canary"
    assert await reboot_into(client, canary, NEW) is None
    assert (await state_of(engine, canary.machine_id)).status == "complete"
    for host in rest:
        assert await check(client, host) == NEW
    # The canary's retries in between were the same grant, never a second canary.
    assert (await state_of(engine, canary.machine_id)).granted_version == NEW


async def test_safe_mode_canary_failure_pauses_the_group(
    client: Client, admin_token: str, release: str, engine: AsyncEngine
) -> None:
    """A failed canary pauses the group, recorded as an automatic pause by 'nebula'; after a
    resume the next host is the new canary. Catches a gate that needs a failure limit to be set
    (none is) and a canary rule that lets everyone through once the canary failed."""
    await set_policy(client, admin_token, safe_mode=True)
    canary, second, third = hosts(3)
    assert await check(client, canary) == NEW
    await omaha(client, canary.event(13, 1))
    await omaha(client, canary.event(3, 0, ERROR_HASH))
    state = await state_of(engine, canary.machine_id)
    assert (state.status, state.last_error_code) == ("error", 10)

    policy = await get_policy(client, admin_token)
    assert policy["updates_enabled"] is False
    assert policy["paused_by"] == "nebula"
    assert "safe mode" in policy["paused_reason"] and NEW in policy["paused_reason"]
    (entry,) = [a for a in await activity(client, admin_token) if a["action"] == "auto_pause"]
    assert entry["actor"] == "nebula" and entry["message"] == policy["paused_reason"]

    assert await check(client, second) is None
    assert await hold_reason(engine, second) == "paused"

    await post(client, admin_token, f"{STABLE}/resume", reason="hash mismatch was the CDN")
    assert await check(client, second) == NEW  # the next canary
    assert await check(client, third) is None
    assert await hold_reason(engine, third) == "canary"


async def test_safe_mode_timed_out_canary_is_not_replaced_behind_the_gate(
    client: Client,
    admin_token: str,
    release: str,
    engine: AsyncEngine,
    clock: FakeClock,
    db_url: str,
) -> None:
    """A canary past its timeout has failed; until the sweeper pauses the group for it nobody
    else may take the version. Catches a canary rule that counts only canaries inside their
    timeout: the second host would be granted in the gap before the sweeper runs."""
    await set_policy(client, admin_token, safe_mode=True, update_timeout="1h")
    canary, second = hosts(2)
    assert await check(client, canary) == NEW
    clock.advance(minutes=61)
    assert await check(client, second) is None
    assert await hold_reason(engine, second) == "canary"
    (reason,) = await sweep(db_url, clock.now)
    assert "safe mode" in reason
    assert (await state_of(engine, canary.machine_id)).status == "timed_out"
    assert await check(client, second) is None
    # As operators see it (the policy in force; a steady check-in rewrites no hold reason).
    resp = await client.get("/api/v1/instances", headers=auth(admin_token))
    (listed,) = [
        i for i in (await resp.json())["instances"] if i["machine_id"] == second.machine_id
    ]
    assert listed["hold_reason"] == "paused"


# -- failure gate ----------------------------------------------------------------------------------


async def test_failure_gate_by_hosts_counts_rollbacks(
    client: Client, admin_token: str, release: str, engine: AsyncEngine
) -> None:
    """Pause at 2 failed hosts, one of them a rollback (error 44). Catches a gate that counts
    only error events (the rollback arrives inside an update check) or pauses at the first."""
    await set_policy(client, admin_token, pause_on_failures=["2"])
    h = hosts(6)
    for host in h[:5]:
        assert await check(client, host) == NEW
    await omaha(client, h[0].event(3, 0, (1 << 28) | 9))
    assert (await get_policy(client, admin_token))["updates_enabled"] is True
    assert await check(client, h[5]) == NEW  # one failure: still granting

    assert await roll_back(client, h[1]) is None
    state = await state_of(engine, h[1].machine_id)
    assert (state.status, state.last_error_code, state.hold_reason) == (
        "rolled_back",
        44,
        "rolled_back",
    )
    policy = await get_policy(client, admin_token)
    assert policy["updates_enabled"] is False
    assert "2 hosts failed (limit 2)" in policy["paused_reason"]
    entries = [a for a in await activity(client, admin_token) if a["action"] == "auto_pause"]
    assert [a["actor"] for a in entries] == ["nebula"]

    late = Host(machine_id=machine(99), version=OLD)
    assert await check(client, late) is None
    assert await hold_reason(engine, late) == "paused"
    # Hosts already updating go on (a retry is answered with the same grant).
    assert await check(client, h[2]) == NEW
    assert await complete(client, h[2], NEW) is None
    assert (await state_of(engine, h[2].machine_id)).status == "complete"


async def test_failure_gate_by_share_of_attempts(
    client: Client, admin_token: str, release: str, engine: AsyncEngine
) -> None:
    """Pause at 30% of the hosts that were granted the version. Catches a share taken of every
    host in the group (10 hosts already on NEW would make 3 of 20 = 15%) or of completed hosts
    only, and an off-by-one at the limit (2 of 10 must not pause, 3 of 10 must)."""
    await set_policy(client, admin_token, pause_on_failures=["30%"])
    for host in hosts(10, start=100, version=NEW):  # never granted: not attempts
        assert await check(client, host) is None
    h = hosts(10)
    for host in h:
        assert await check(client, host) == NEW
    await omaha(client, h[0].event(3, 0, ERROR_HASH))
    assert await roll_back(client, h[1]) is None
    assert (await get_policy(client, admin_token))["updates_enabled"] is True  # 20%
    await omaha(client, h[2].event(13, 0, (1 << 28) | 9))
    policy = await get_policy(client, admin_token)
    assert policy["updates_enabled"] is False
    assert "3 of 10 hosts failed (30%, limit 30%)" in policy["paused_reason"]
    assert await check(client, Host(machine_id=machine(200), version=OLD)) is None


async def test_failure_gate_after_resume_counts_new_failures(
    client: Client, admin_token: str, release: str
) -> None:
    """An operator resume is logged with who and why, and the gate still watches afterwards:
    catches a resume that switches the gate off for good (or leaves the group paused) and a
    gate that fires once per version only."""
    await set_policy(client, admin_token, pause_on_failures=["1"])
    h = hosts(3)
    assert await check(client, h[0]) == NEW
    assert await check(client, h[1]) == NEW
    await omaha(client, h[0].event(3, 0, ERROR_HASH))
    assert (await get_policy(client, admin_token))["updates_enabled"] is False
    await post(client, admin_token, f"{STABLE}/resume", reason="known flake")
    assert (await get_policy(client, admin_token))["updates_enabled"] is True
    assert await check(client, h[2]) == NEW
    await omaha(client, h[1].event(3, 0, ERROR_HASH))
    assert (await get_policy(client, admin_token))["updates_enabled"] is False
    log = [(a["actor"], a["action"]) for a in await activity(client, admin_token)]
    assert log[:3] == [("nebula", "auto_pause"), ("ops", "resume"), ("nebula", "auto_pause")]


async def test_failure_gate_remembers_hosts_that_retry(
    client: Client, admin_token: str, release: str
) -> None:
    """A failed host that checks again is granted again (a retry), but it still failed: the gate
    counts hosts that failed, not hosts failed right now. Catches a count of current statuses,
    which a bad release retried host by host never trips."""
    await set_policy(client, admin_token, pause_on_failures=["2"])
    a, b = hosts(2)
    assert await check(client, a) == NEW
    await omaha(client, a.event(3, 0, ERROR_HASH))  # a failed
    assert await check(client, a) == NEW  # and is granted again: status 'granted' now
    assert (await get_policy(client, admin_token))["updates_enabled"] is True
    await omaha(client, a.event(3, 0, ERROR_HASH))  # the same host again: still one host
    assert (await get_policy(client, admin_token))["updates_enabled"] is True
    assert await check(client, a) == NEW
    assert await check(client, b) == NEW
    await omaha(client, b.event(3, 0, ERROR_HASH))  # a second host: the gate trips
    policy = await get_policy(client, admin_token)
    assert policy["updates_enabled"] is False
    assert "2 hosts failed" in policy["paused_reason"]


# -- maintenance windows ---------------------------------------------------------------------------


async def test_window_in_its_time_zone(
    client: Client, admin_token: str, release: str, engine: AsyncEngine, clock: FakeClock
) -> None:
    """Grants only inside Mon-Fri 02:00-05:00 Berlin time (UTC+1 in November). Catches a window
    read in UTC (01:30 UTC is inside Berlin's window, 04:30 UTC is outside it) and one that
    ignores the days (Saturday)."""
    await set_policy(client, admin_token, windows=["Mon-Fri 02:00-05:00 Europe/Berlin"])
    h = hosts(6)
    # Friday 2026-11-27 12:00 UTC.
    assert clock.now.weekday() == 4
    assert await check(client, h[0]) is None
    assert await hold_reason(engine, h[0]) == "outside_window"
    clock.advance(hours=14, minutes=30)  # Saturday 02:30 UTC = 03:30 Berlin: the wrong day
    assert await check(client, h[0]) is None
    assert await hold_reason(engine, h[0]) == "outside_window"
    clock.advance(days=2, hours=-2)  # Monday 00:30 UTC = 01:30 Berlin
    assert await check(client, h[1]) is None
    clock.advance(hours=1)  # Monday 01:30 UTC = 02:30 Berlin
    assert await check(client, h[1]) == NEW
    assert await check(client, h[2]) == NEW
    clock.advance(hours=3)  # 04:30 UTC = 05:30 Berlin
    assert await check(client, h[3]) is None
    assert await hold_reason(engine, h[3]) == "outside_window"
    # A host granted inside the window may finish outside it.
    assert await check(client, h[1]) == NEW
    assert await complete(client, h[1], NEW) is None
    assert (await state_of(engine, h[1].machine_id)).status == "complete"


# -- staged percentage -----------------------------------------------------------------------------


async def test_percentage_raising_only_adds_hosts(
    client: Client, admin_token: str, release: str, engine: AsyncEngine
) -> None:
    """Catches a random (per check) choice, a hash that ignores the machine id, and a raise that
    reshuffles who is in: every host granted at 25% is also granted at 60%, and the answer of a
    host does not change between checks at the same percentage."""
    fleet = hosts(40)
    granted: dict[float, set[str]] = {}
    for pct in (25.0, 60.0, 100.0):
        await set_policy(client, admin_token, percentage=pct)
        got: set[str] = set()
        for _ in range(2):  # twice: the same hosts each time
            for host in fleet:
                if await check(client, host) == NEW:
                    got.add(host.machine_id)
                else:
                    assert await hold_reason(engine, host) == "percentage"
        granted[pct] = got
        expected = {h.machine_id for h in fleet if rollout_bucket(h.machine_id, NEW) < pct}
        assert got == expected
    assert 0 < len(granted[25.0]) < len(granted[60.0]) < len(granted[100.0]) == 40
    assert granted[25.0] <= granted[60.0] <= granted[100.0]


async def test_lowering_the_percentage_keeps_grants(
    client: Client, admin_token: str, release: str
) -> None:
    """A host granted at a higher percentage keeps its grant (it may be downloading) when the
    percentage goes down; only new grants follow the lower share. Catches a percentage applied
    to retries of a grant, which would strand hosts in the middle of their download."""
    fleet = hosts(20)
    for host in fleet:
        assert await check(client, host) == NEW
    await set_policy(client, admin_token, percentage=0)
    for host in fleet:
        assert await check(client, host) == NEW
    late = Host(machine_id=machine(500), version=OLD)
    assert await check(client, late) is None


# -- floors ----------------------------------------------------------------------------------------


async def test_floors_are_stepping_stones(
    client: Client, admin_token: str, release: str, engine: AsyncEngine
) -> None:
    """A host below two floors gets the lower floor, then the next, then the target. Catches
    floors ignored (straight to NEW), the highest floor first, and floors offered to hosts
    already past them."""
    for version in (MID, MID2):
        await add_version(client, admin_token, version)
        body = await post(
            client, admin_token, "/api/v1/channels/stable/floors", arch="amd64", version=version
        )
        assert version in body["floors"]
    host = Host(machine_id=machine(1), version=OLD)
    assert await check(client, host) == MID
    assert (await state_of(engine, host.machine_id)).granted_version == MID
    # Completing the first floor: the same check offers the next step.
    assert await complete(client, host, MID) == MID2
    assert (await state_of(engine, host.machine_id)).granted_version == MID2
    assert await complete(client, host, MID2) == NEW
    assert await complete(client, host, NEW) is None
    state = await state_of(engine, host.machine_id)
    assert (state.status, state.version) == ("complete", NEW)

    between = Host(machine_id=machine(2), version="4050.0.0")
    assert await check(client, between) == MID2
    on_floor = Host(machine_id=machine(3), version=MID2)
    assert await check(client, on_floor) == NEW

    # Without the lower floor an old host goes to the next one.
    resp = await client.delete(
        f"/api/v1/channels/stable/floors/{MID}", params=AMD64, headers=auth(admin_token)
    )
    assert resp.status == 200 and (await resp.json())["floors"] == [MID2]
    assert await check(client, Host(machine_id=machine(4), version=OLD)) == MID2


async def test_floors_count_against_the_limits(
    client: Client, admin_token: str, release: str, engine: AsyncEngine
) -> None:
    """A host updating to a floor holds a concurrency slot like any other. Catches slots
    counted only for hosts granted the target version."""
    await add_version(client, admin_token, MID)
    await post(client, admin_token, "/api/v1/channels/stable/floors", arch="amd64", version=MID)
    await set_policy(client, admin_token, max_concurrent=1)
    assert await check(client, Host(machine_id=machine(1), version=OLD)) == MID
    blocked = Host(machine_id=machine(2), version=MID)
    assert await check(client, blocked) is None
    assert await hold_reason(engine, blocked) == "concurrency"


async def test_safe_mode_remembers_a_floor_completed_by_a_host_that_moved_on(
    client: Client, admin_token: str, release: str, engine: AsyncEngine
) -> None:
    """Safe mode with a floor: host A completes the floor and is granted the target. The floor's
    canary has passed, so B takes the floor without being a canary, and B failing is an ordinary
    failure, not "the first host to update failed". Catches completions counted from hosts'
    current state (A's grant of the target erases its completion of the floor: B would become
    the floor's second canary and its failure would pause the group)."""
    await add_version(client, admin_token, MID)
    await post(client, admin_token, "/api/v1/channels/stable/floors", arch="amd64", version=MID)
    await set_policy(client, admin_token, safe_mode=True)
    a, b, c = hosts(3)
    assert await check(client, a) == MID
    assert await complete(client, a, MID) == NEW  # on to the target, as the target's canary
    assert await check(client, b) == MID  # the floor is through its canary: B may take it
    assert await check(client, c) == MID  # ... and so may C, while B updates
    await omaha(client, b.event(3, 0, ERROR_HASH))
    policy = await get_policy(client, admin_token)
    assert policy["updates_enabled"] is True, policy["paused_reason"]


# -- pin and downgrade -----------------------------------------------------------------------------


async def test_pin_and_downgrade(
    client: Client, admin_token: str, release: str, engine: AsyncEngine
) -> None:
    """Catches a pin that is ignored, a downgrade offered without allow_downgrade (contract §8:
    the client never compares versions), and one refused with it."""
    await add_version(client, admin_token, MID)
    await add_version(client, admin_token, NEWER)
    on_new = Host(machine_id=machine(1), version=NEW)
    on_old = Host(machine_id=machine(2), version=OLD)

    await set_policy(client, admin_token, pin_version=MID)
    assert await check(client, on_old) == MID
    assert await check(client, on_new) is None
    state = await state_of(engine, on_new.machine_id)
    assert (state.status, state.granted_version, state.hold_reason) == ("idle", None, None)

    await set_policy(client, admin_token, allow_downgrade=True)
    assert await check(client, on_new) == MID
    assert await complete(client, on_new, MID) is None
    assert (await state_of(engine, on_new.machine_id)).status == "complete"

    # A pin above the channel's version, then none: back to following the channel.
    await set_policy(client, admin_token, pin_version=NEWER, allow_downgrade=False)
    assert await check(client, Host(machine_id=machine(3), version=NEW)) == NEWER
    await set_policy(client, admin_token, pin_version=None)
    assert await check(client, Host(machine_id=machine(4), version=OLD)) == NEW
    assert await check(client, Host(machine_id=machine(5), version=NEWER)) is None


# -- per-host hold ---------------------------------------------------------------------------------


async def test_host_hold_and_release(
    client: Client, admin_token: str, release: str, engine: AsyncEngine
) -> None:
    """Catches a hold that is not applied to checks and a release that leaves it in place."""
    host = Host(machine_id=machine(1), version=OLD)
    other = Host(machine_id=machine(2), version=OLD)
    await check(client, Host(machine_id=host.machine_id, version=NEW))  # known, up to date
    await post(client, admin_token, f"/api/v1/instances/{host.machine_id}/hold", reason="db")
    assert await check(client, host) is None
    assert await hold_reason(engine, host) == "host_hold"
    assert await check(client, other) == NEW  # only that host
    await post(client, admin_token, f"/api/v1/instances/{host.machine_id}/release")
    assert await check(client, host) == NEW


async def test_pause_beats_every_other_reason_but_regrants(
    client: Client, admin_token: str, release: str, engine: AsyncEngine
) -> None:
    """A paused group grants nothing new, whatever the limits would allow, and still answers a
    host mid-update with its grant. Catches a pause that is ignored while slots are free, and
    one that answers a retrying host noupdate (its download would be stranded)."""
    await set_policy(client, admin_token, max_concurrent=5)
    busy, fresh = hosts(2)
    assert await check(client, busy) == NEW
    await omaha(client, busy.event(13, 1))
    await post(client, admin_token, f"{STABLE}/pause", reason="wait")
    assert await check(client, fresh) is None
    assert await hold_reason(engine, fresh) == "paused"
    assert await check(client, busy) == NEW
    assert (await state_of(engine, busy.machine_id)).status == "downloading"
