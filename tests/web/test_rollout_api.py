"""The rollout admin API (nebula.web.rollout): policy validation, pause and resume with reasons,
per-host hold and release, channel floors, rollout status numbers, and how holds show up for
hosts (noupdate), on the host's state (hold_reason) and on /metrics.

Each test runs against a real app on a fresh database of each backend; each names the wrong
implementation it would catch.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from lxml import etree
from prometheus_client.parser import text_string_to_metric_families

from nebula.policy import rollout_bucket
from tests.conftest import FakeClock
from tests.factories import Host
from tests.problem import check_problem

Client = Any  # aiohttp TestClient

OLD, MID, NEW, NEWER = "3815.2.0", "4000.0.0", "4152.2.3", "4230.0.0"
STABLE = "/api/v1/groups/stable"
AMD64 = {"arch": "amd64"}
ROLLBACK = 268435500  # 44 | 1<<28
ERROR = 268435466  # 10 | 1<<28

DEFAULTS = {
    "updates_enabled": True,
    "paused_reason": None,
    "paused_by": None,
    "paused_at": None,
    "max_updates_per_period": None,
    "period": None,
    "max_concurrent": None,
    "update_timeout": None,
    "safe_mode": False,
    "pause_on_failed_hosts": None,
    "pause_on_failed_percent": None,
    "windows": [],
    "percentage": 100.0,
    "pin_version": None,
    "allow_downgrade": False,
    "reboot_timeout": None,
    "installed_counts_as_updating": True,
    "retire_after": "14d",
    "floors": [],
}


# -- helpers ---------------------------------------------------------------------------------------


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def machine(n: int) -> str:
    return f"{n:032x}"


async def expect_error(resp: Any, status: int) -> str:
    """An admin API error: the status and a problem document (tests.problem); its detail."""
    raw = await resp.text()
    assert resp.status == status, raw
    return check_problem(resp.content_type, await resp.json(), status)


async def add_version(client: Client, token: str, version: str, arch: str = "amd64") -> None:
    data = f"payload-{version}".encode() * 64
    body = {
        "version": version,
        "arch": arch,
        "base_url": f"https://cdn.example/{arch}/{version}/",
        "files": [
            {
                "name": "flatcar_production_update.gz",
                "size": len(data),
                "sha1": hashlib.sha1(data).hexdigest(),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        ],
    }
    resp = await client.post("/api/v1/packages", json=body, headers=auth(token))
    assert resp.status == 201, await resp.text()


async def point(client: Client, token: str, version: str) -> None:
    resp = await client.put(
        "/api/v1/channels/stable", json={"arch": "amd64", "version": version}, headers=auth(token)
    )
    assert resp.status == 200, await resp.text()


async def patch(client: Client, token: str, body: Any) -> Any:
    return await client.patch(f"{STABLE}/policy", params=AMD64, json=body, headers=auth(token))


async def set_policy(client: Client, token: str, **fields: Any) -> dict[str, Any]:
    resp = await patch(client, token, fields)
    assert resp.status == 200, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def get_policy(client: Client, token: str) -> dict[str, Any]:
    resp = await client.get(f"{STABLE}/policy", params=AMD64, headers=auth(token))
    assert resp.status == 200, await resp.text()
    return (await resp.json())["policy"]  # type: ignore[no-any-return]


async def activity(client: Client, token: str) -> list[dict[str, Any]]:
    """The group's log but for channel changes (the `release` fixture's; channel logging is
    tested with the channel routes, tests/web/test_catalog_api.py)."""
    resp = await client.get(f"{STABLE}/activity", params=AMD64, headers=auth(token))
    assert resp.status == 200, await resp.text()
    return [a for a in (await resp.json())["activity"] if a["action"] != "channel_set"]


async def rollout(client: Client, token: str) -> dict[str, Any]:
    resp = await client.get(f"{STABLE}/rollout", params=AMD64, headers=auth(token))
    assert resp.status == 200, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def instances(client: Client, token: str) -> dict[str, dict[str, Any]]:
    resp = await client.get("/api/v1/instances", headers=auth(token))
    assert resp.status == 200, await resp.text()
    return {i["machine_id"]: i for i in (await resp.json())["instances"]}


async def check(client: Client, host: Host, **kwargs: Any) -> str | None:
    """An update check: 200 and `ok` (the version) or `noupdate` (None); never anything else."""
    resp = await client.post("/v1/update/", data=host.check(**kwargs))
    assert resp.status == 200, await resp.text()
    uc = etree.fromstring(await resp.read()).find("app/updatecheck")
    assert uc is not None
    assert uc.get("status") in ("ok", "noupdate"), uc.get("status")
    if uc.get("status") == "noupdate":
        assert len(uc) == 0
        return None
    return uc.find("manifest").get("version")  # type: ignore[union-attr]


async def send(client: Client, body: bytes) -> None:
    resp = await client.post("/v1/update/", data=body)
    assert resp.status == 200, await resp.text()


async def install(client: Client, host: Host) -> None:
    for event_type, result in ((13, 1), (14, 1), (3, 1)):
        await send(client, host.event(event_type, result))


async def complete(client: Client, host: Host, version: str) -> str | None:
    await install(client, host)
    old, host.version = host.version, version
    host.boot_id = "{7b2e7e0e-5f0a-4c59-9d7e-1f2a3b4c5d6e}"
    return await check(client, host, previous_version=old)


async def roll_back(client: Client, host: Host) -> str | None:
    await install(client, host)
    host.boot_id = "{7b2e7e0e-5f0a-4c59-9d7e-1f2a3b4c5d6e}"
    event = f'<event eventtype="3" eventresult="0" errorcode="{ROLLBACK}"></event>'
    return await check(client, host, event=event)


def ids_with_bucket(target: str, low: float, high: float, count: int, start: int) -> list[str]:
    """Machine ids whose staged-percentage bucket for `target` lies in [low, high)."""
    found = []
    n = start
    while len(found) < count:
        if low <= rollout_bucket(machine(n), target) < high:
            found.append(machine(n))
        n += 1
        assert n < start + 10_000
    return found


@pytest.fixture
async def release(client: Client, admin_token: str) -> str:
    await add_version(client, admin_token, NEW)
    await point(client, admin_token, NEW)
    return NEW


# -- policy validation -----------------------------------------------------------------------------


BAD_POLICIES: list[tuple[Any, str]] = [
    ({"max_concurrent": -1}, "max_concurrent must be a positive integer"),
    ({"max_concurrent": 0}, "max_concurrent must be a positive integer"),
    ({"max_concurrent": 2.5}, "max_concurrent must be a positive integer"),
    ({"max_concurrent": True}, "max_concurrent must be a positive integer"),
    ({"max_updates_per_period": -5, "period": "1h"}, "max_updates_per_period must be"),
    ({"period": "1 fortnight"}, "period:"),
    ({"period": "-1h"}, "period:"),
    ({"period": 0}, "period:"),
    ({"period": 1.5}, "period:"),
    ({"update_timeout": "soon"}, "update_timeout:"),
    ({"update_timeout": ["2h"]}, "update_timeout:"),
    ({"windows": ["Mon-Fri 02:00-25:00 UTC"]}, "window"),
    ({"windows": ["Mon-Fri 02:00-05:00 Mars/Olympus_Mons"]}, "IANA"),
    ({"windows": ["Funday 02:00-05:00 UTC"]}, "window"),
    ({"windows": ["Mon 02:00-02:00 UTC"]}, "window"),
    ({"windows": "Mon-Fri 02:00-05:00 UTC"}, "windows must be a list"),
    ({"percentage": 120}, "percentage must be from 0 to 100"),
    ({"percentage": -1}, "percentage must be from 0 to 100"),
    ({"percentage": "50"}, "percentage must be a number"),
    ({"pause_on_failures": "x"}, "pause_on_failures"),
    ({"pause_on_failures": ["5", "x%"]}, "pause_on_failures"),
    ({"pause_on_failures": ["0"]}, "pause_on_failures"),
    ({"pause_on_failures": ["0%"]}, "pause_on_failures"),
    ({"pause_on_failures": ["150%"]}, "pause_on_failures"),
    ({"pause_on_failures": {"hosts": 5}}, "pause_on_failures"),
    ({"safe_mode": "maybe"}, "safe_mode must be true or false"),
    ({"allow_downgrade": 1}, "allow_downgrade must be true or false"),
    ({"reboot_timeout": "a while"}, "reboot_timeout:"),
    ({"reboot_timeout": "999999d"}, "longer than ten years"),
    ({"update_timeout": 10**12}, "longer than ten years"),
    ({"installed_counts_as_updating": "maybe"}, "installed_counts_as_updating must be"),
    ({"retire_after": "-1d"}, "retire_after:"),
    ({"retire_after": True}, "retire_after:"),
    ({"max_updates_per_period": 7}, "needs the period"),
    ({"pin_version": "latest"}, "is not a version"),
    ({"colour": "blue"}, "unknown policy field 'colour'"),
    ({"updates_enabled": False}, "unknown policy field"),
    # One bad field spoils the whole change: the good ones are not applied either.
    ({"max_concurrent": 3, "percentage": 120}, "percentage"),
    (["max_concurrent", 3], "JSON object"),
    ({"add_floors": "4000.0.0"}, "add_floors must be a list"),
    ({"remove_floors": [4000]}, "remove_floors must be a list"),
    ({"add_floors": ["x.y"]}, "is not a version"),
    ({"add_floors": ["4000.0.0"], "remove_floors": ["4000.0.0"]}, "both added and removed"),
]


async def test_bad_policy_is_400_and_changes_nothing(client: Client, admin_token: str) -> None:
    """Each bad body of BAD_POLICIES in turn (one app and database for all: they change nothing).
    Catches a field accepted unchecked (a negative limit would hold every host forever, a
    percentage of 120 breaks the database's check constraint: a 500), a bad value that becomes
    a server error instead of a 400 with a message, and a change half applied."""
    for body, message in BAD_POLICIES:
        error = await expect_error(await patch(client, admin_token, body), 400)
        assert message in error, (body, error)
        assert await get_policy(client, admin_token) == DEFAULTS, body
    assert await activity(client, admin_token) == []


async def test_pin_to_a_version_without_a_package_is_404(
    client: Client, admin_token: str, release: str
) -> None:
    """Catches a pin stored without a package: the group would silently get no target at all.
    An arm64 package of the version does not count for an amd64 group."""
    await add_version(client, admin_token, MID, arch="arm64")
    for version in ("9999.0.0", MID):
        error = await expect_error(await patch(client, admin_token, {"pin_version": version}), 404)
        assert version in error
    assert (await get_policy(client, admin_token))["pin_version"] is None
    await add_version(client, admin_token, MID)
    body = await set_policy(client, admin_token, pin_version=MID)
    assert body["policy"]["pin_version"] == MID


async def test_policy_and_floors_change_in_one_transaction(
    client: Client, admin_token: str, release: str
) -> None:
    """A PATCH with limits and floors is applied whole or not at all. Catches the limits being
    written before a floor without a package is refused (the README's example left the rate
    and percentage changed behind an error), and floors that a PATCH adds but does not log."""
    change = {"max_updates_per_period": 50, "period": "1h", "percentage": 25}
    error = await expect_error(
        await patch(client, admin_token, {**change, "add_floors": [MID]}), 404
    )
    assert MID in error
    assert await get_policy(client, admin_token) == DEFAULTS
    assert await activity(client, admin_token) == []

    await add_version(client, admin_token, MID)
    body = await set_policy(client, admin_token, **change, add_floors=[MID])
    assert body["policy"]["floors"] == [MID] and body["policy"]["percentage"] == 25
    assert "floors" in body["changed"]
    actions = [a["action"] for a in await activity(client, admin_token)]
    assert sorted(actions) == ["floor", "policy"]
    body = await set_policy(client, admin_token, remove_floors=[MID], max_concurrent=2)
    assert (body["policy"]["floors"], body["policy"]["max_concurrent"]) == ([], 2)


async def test_patch_then_get(client: Client, admin_token: str, release: str) -> None:
    """Every field round-trips, the answer names what changed, and the activity log records
    the change with who made it; a PATCH leaves the fields it does not name alone. Catches a
    field stored under the wrong column or not at all, a PATCH that resets what it does not
    name, a change logged without its actor, and no-op changes flooding the log."""
    await add_version(client, admin_token, MID)
    body = await set_policy(
        client,
        admin_token,
        max_updates_per_period=7,
        period="90m",
        max_concurrent=3,
        update_timeout="2h",
        safe_mode=True,
        pause_on_failures=["5", "10%"],
        windows=["Mon-Fri 02:00-05:00 Europe/Berlin", "sat,sun 22:00-06:00 UTC"],
        percentage=12.5,
        pin_version=MID,
        allow_downgrade="on",
    )
    expected = {
        **DEFAULTS,
        "max_updates_per_period": 7,
        "period": "1h30m",
        "max_concurrent": 3,
        "update_timeout": "2h",
        "safe_mode": True,
        "pause_on_failed_hosts": 5,
        "pause_on_failed_percent": 10.0,
        "windows": ["Mon,Tue,Wed,Thu,Fri 02:00-05:00 Europe/Berlin", "Sat,Sun 22:00-06:00 UTC"],
        "percentage": 12.5,
        "pin_version": MID,
        "allow_downgrade": True,
    }
    assert (body["group"], body["arch"]) == ("stable", "amd64")
    assert body["policy"] == expected
    assert body["changed"] == sorted(
        [
            "max_updates_per_period",
            "period_seconds",
            "max_concurrent",
            "update_timeout_seconds",
            "safe_mode",
            "pause_on_failed_hosts",
            "pause_on_failed_percent",
            "windows",
            "percentage",
            "pin_version",
            "allow_downgrade",
        ]
    )
    assert await get_policy(client, admin_token) == expected
    # Other groups are untouched.
    resp = await client.get(f"{STABLE}/policy", params={"arch": "arm64"}, headers=auth(admin_token))
    assert (await resp.json())["policy"] == DEFAULTS

    (entry,) = await activity(client, admin_token)
    assert (entry["actor"], entry["action"]) == ("ops", "policy")
    assert entry["detail"]["changes"]["max_concurrent"] == [None, 3]
    assert entry["detail"]["changes"]["period_seconds"] == [None, 5400]
    assert "max_concurrent none -> 3" in entry["message"]

    # A partial change; nulls lift limits; the same value again is no change and not logged.
    # A failure limit of one kind leaves the other kind as it was.
    body = await set_policy(
        client, admin_token, max_concurrent=None, pause_on_failures=["3"], percentage=12.5
    )
    assert body["changed"] == ["max_concurrent", "pause_on_failed_hosts"]
    policy = await get_policy(client, admin_token)
    assert policy == {**expected, "max_concurrent": None, "pause_on_failed_hosts": 3}
    assert len(await activity(client, admin_token)) == 2
    # "none" first clears both, so that only what follows it stays.
    body = await set_policy(client, admin_token, pause_on_failures=["none", "20%"])
    limits = (body["policy"]["pause_on_failed_hosts"], body["policy"]["pause_on_failed_percent"])
    assert limits == (None, 20.0)
    body = await set_policy(client, admin_token, pause_on_failures=["3", "10%"])
    assert body["policy"] == {**expected, "max_concurrent": None, "pause_on_failed_hosts": 3}
    assert len(await activity(client, admin_token)) == 4
    body = await set_policy(client, admin_token, max_concurrent=None)
    assert body["changed"] == []
    assert len(await activity(client, admin_token)) == 4

    # Lifting the rate without its period is fine; lifting the period under a rate is not.
    error = await expect_error(await patch(client, admin_token, {"period": None}), 400)
    assert "period" in error
    body = await set_policy(client, admin_token, max_updates_per_period=None, period=None)
    assert body["policy"]["period"] is None and body["policy"]["max_updates_per_period"] is None
    body = await set_policy(client, admin_token, windows=[], pin_version="none")
    assert body["policy"]["windows"] == [] and body["policy"]["pin_version"] is None


async def test_group_refs(client: Client, admin_token: str) -> None:
    """The policy of a name that exists for both arches needs the arch; ids work alone; an
    unknown group is 404. Catches a lookup that silently picks one of the two groups."""
    error = await expect_error(await client.get(f"{STABLE}/policy", headers=auth(admin_token)), 400)
    assert "arch" in error
    resp = await client.get(
        "/api/v1/groups/9a2deb70-37be-4026-853f-bfdd6b347bbe/policy", headers=auth(admin_token)
    )
    assert resp.status == 200 and (await resp.json())["arch"] == "amd64"
    await expect_error(
        await client.get("/api/v1/groups/nightly/policy", headers=auth(admin_token)), 404
    )
    await expect_error(
        await client.post(
            "/api/v1/groups/nightly/pause", params=AMD64, json={}, headers=auth(admin_token)
        ),
        404,
    )


async def test_viewer_reads_but_cannot_change(
    client: Client, admin_token: str, viewer_token: str, release: str
) -> None:
    """Catches rollout routes that skip the role check (they are not under the admin router)."""
    host = Host(machine_id=machine(1), version=NEW)
    assert await check(client, host) is None
    for method, path, body in [
        ("PATCH", f"{STABLE}/policy", {"max_concurrent": 3}),
        ("POST", f"{STABLE}/pause", {"reason": "x"}),
        ("POST", f"{STABLE}/resume", {"reason": "x"}),
        ("POST", f"/api/v1/instances/{host.machine_id}/hold", {}),
        ("POST", f"/api/v1/instances/{host.machine_id}/release", {}),
        ("POST", "/api/v1/channels/stable/floors", {"arch": "amd64", "version": NEW}),
        ("DELETE", f"/api/v1/channels/stable/floors/{NEW}", None),
    ]:
        resp = await client.request(
            method, path, params=AMD64, json=body, headers=auth(viewer_token)
        )
        assert "read only" in await expect_error(resp, 403), path
    for path in ("policy", "rollout", "activity"):
        resp = await client.get(f"{STABLE}/{path}", params=AMD64, headers=auth(viewer_token))
        assert resp.status == 200, path
    assert await get_policy(client, admin_token) == DEFAULTS
    assert await activity(client, admin_token) == []
    # And without a token at all.
    await expect_error(await client.get(f"{STABLE}/policy", params=AMD64), 401)


# -- pause and resume ------------------------------------------------------------------------------


async def test_pause_and_resume_record_reason_and_actor(
    client: Client, admin_token: str, db_url: str, clock: FakeClock
) -> None:
    """Catches a pause that does not say who or why (in the policy and the activity log), a
    resume that leaves the reason behind, and a second pause that overwrites the first."""
    from tests.factories import make_token

    oncall = await make_token(db_url, "oncall", "admin")
    paused_at = clock.now
    resp = await client.post(
        f"{STABLE}/pause",
        params=AMD64,
        json={"reason": "kernel panic on db hosts"},
        headers=auth(oncall),
    )
    assert resp.status == 200, await resp.text()
    policy = (await resp.json())["policy"]
    assert policy["updates_enabled"] is False
    assert policy["paused_reason"] == "kernel panic on db hosts"
    assert policy["paused_by"] == "oncall"
    assert policy["paused_at"] == paused_at.isoformat()
    assert await get_policy(client, admin_token) == {**policy, "floors": []}

    # Pausing a paused group changes nothing (the first reason stays), says so, and logs the
    # second reason.
    clock.advance(minutes=5)
    resp = await client.post(
        f"{STABLE}/pause", params=AMD64, json={"reason": "again"}, headers=auth(admin_token)
    )
    assert resp.status == 200
    answer = await resp.json()
    assert answer["changed"] is False
    assert answer["message"] == (
        f"already paused by oncall since {paused_at.isoformat()}: kernel panic on db hosts"
    )
    policy = await get_policy(client, admin_token)
    assert (policy["paused_reason"], policy["paused_by"]) == ("kernel panic on db hosts", "oncall")

    clock.advance(minutes=30)
    resp = await client.post(
        f"{STABLE}/resume",
        params=AMD64,
        json={"reason": "fixed in 4152.2.4"},
        headers=auth(admin_token),
    )
    assert resp.status == 200
    policy = await get_policy(client, admin_token)
    assert policy["updates_enabled"] is True
    assert (policy["paused_reason"], policy["paused_by"], policy["paused_at"]) == (None,) * 3

    resume, again, pause = await activity(client, admin_token)
    assert (again["actor"], again["action"], again["detail"]) == (
        "ops",
        "pause",
        {"unchanged": True},
    )
    assert again["message"].endswith("; pause asked again: again")
    assert (pause["actor"], pause["action"], pause["message"]) == (
        "oncall",
        "pause",
        "kernel panic on db hosts",
    )
    assert pause["at"] == paused_at.isoformat()
    assert (resume["actor"], resume["action"], resume["message"]) == (
        "ops",
        "resume",
        "fixed in 4152.2.4",
    )
    assert resume["detail"]["was_paused_for"] == "kernel panic on db hosts"
    assert resume["at"] == clock.now.isoformat()

    # Without a reason: a default one; a reason that is not a string is refused.
    resp = await client.post(f"{STABLE}/pause", params=AMD64, headers=auth(admin_token))
    assert resp.status == 200
    assert (await get_policy(client, admin_token))["paused_reason"] == "paused by operator"
    error = await expect_error(
        await client.post(
            f"{STABLE}/resume", params=AMD64, json={"reason": 42}, headers=auth(admin_token)
        ),
        400,
    )
    assert "reason" in error
    assert (await get_policy(client, admin_token))["updates_enabled"] is False

    # The arm64 group of the same name was never paused.
    resp = await client.get(f"{STABLE}/policy", params={"arch": "arm64"}, headers=auth(admin_token))
    assert (await resp.json())["policy"]["updates_enabled"] is True


# -- per-host hold ---------------------------------------------------------------------------------


async def test_hold_and_release_a_host(client: Client, admin_token: str, release: str) -> None:
    """Catches an unknown host silently 'held' (a typo would protect nothing), a release that
    leaves the old hold_reason on the host, and a hold that the next check ignores."""
    mid = machine(7)
    error = await expect_error(
        await client.post(f"/api/v1/instances/{mid}/hold", json={}, headers=auth(admin_token)),
        404,
    )
    assert mid in error
    await expect_error(
        await client.post(f"/api/v1/instances/{mid}/release", json={}, headers=auth(admin_token)),
        404,
    )

    host = Host(machine_id=mid, version=NEW)
    assert await check(client, host) is None  # known now, up to date
    resp = await client.post(
        f"/api/v1/instances/{mid.upper()}/hold",
        json={"reason": "database primary"},
        headers=auth(admin_token),
    )
    assert resp.status == 200
    assert await resp.json() == {"machine_id": mid, "held": True}
    assert (await instances(client, admin_token))[mid]["held"] is True

    host.version = OLD
    assert await check(client, host) is None
    listed = (await instances(client, admin_token))[mid]
    assert (listed["held"], listed["hold_reason"], listed["status"]) == (True, "host_hold", "idle")

    # Braced, as hosts may send it (and the Omaha endpoint normalizes it).
    resp = await client.post(
        f"/api/v1/instances/{{{mid.upper()}}}/release", json={}, headers=auth(admin_token)
    )
    assert resp.status == 200 and (await resp.json())["held"] is False
    listed = (await instances(client, admin_token))[mid]
    assert (listed["held"], listed["hold_reason"]) == (False, None)
    assert await check(client, host) == NEW

    release_entry, hold_entry = await activity(client, admin_token)
    assert (hold_entry["actor"], hold_entry["action"]) == ("ops", "hold")
    assert "database primary" in hold_entry["message"] and mid in hold_entry["message"]
    assert (release_entry["action"], release_entry["detail"]["machine_id"]) == ("release", mid)


# -- floors ----------------------------------------------------------------------------------------


async def test_floors_add_and_remove(client: Client, admin_token: str, release: str) -> None:
    """Catches a floor without a package (hosts below it would be offered nothing they can
    install), floors listed unsorted by version, and a removal of a floor that is not one."""
    floors = "/api/v1/channels/stable/floors"
    headers = auth(admin_token)
    error = await expect_error(
        await client.post(floors, json={"arch": "amd64", "version": MID}, headers=headers), 404
    )
    assert MID in error
    await expect_error(await client.post(floors, json={"version": MID}, headers=headers), 400)
    # An arch that is not text is refused before it reaches a query (PostgreSQL: a 500).
    for arch in (5, ["amd64"], "x86"):
        error = await expect_error(
            await client.post(floors, json={"arch": arch, "version": NEW}, headers=headers), 400
        )
        assert "arch" in error
    await expect_error(
        await client.post(floors, json={"arch": "amd64", "version": "x.y"}, headers=headers), 400
    )
    await expect_error(
        await client.post(
            "/api/v1/channels/nightly/floors",
            json={"arch": "amd64", "version": NEW},
            headers=headers,
        ),
        404,
    )

    for version in ("4100.0.0", MID, "4010.1.0"):
        await add_version(client, admin_token, version)
    for version in ("4100.0.0", "4010.1.0", MID, MID):  # twice: once is enough
        resp = await client.post(
            floors, json={"arch": "amd64", "version": version}, headers=headers
        )
        assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["channel"], body["arch"]) == ("stable", "amd64")
    assert body["floors"] == [MID, "4010.1.0", "4100.0.0"]  # by version, not as text
    assert (await get_policy(client, admin_token))["floors"] == [MID, "4010.1.0", "4100.0.0"]
    assert (await rollout(client, admin_token))["floors"] == [MID, "4010.1.0", "4100.0.0"]
    # The arm64 channel of the same name has none.
    resp = await client.get(f"{STABLE}/policy", params={"arch": "arm64"}, headers=headers)
    assert (await resp.json())["policy"]["floors"] == []

    resp = await client.delete(f"{floors}/4010.1.0", params=AMD64, headers=headers)
    assert resp.status == 200 and (await resp.json())["floors"] == [MID, "4100.0.0"]
    error = await expect_error(
        await client.delete(f"{floors}/4010.1.0", params=AMD64, headers=headers), 404
    )
    assert "4010.1.0" in error
    await expect_error(await client.delete(f"{floors}/{MID}", headers=headers), 400)
    assert (await get_policy(client, admin_token))["floors"] == [MID, "4100.0.0"]

    # The changes are in the activity log of the group following the channel, with who made
    # them (an entry of no group would show nowhere).
    log = [(a["actor"], a["action"], a["message"]) for a in await activity(client, admin_token)]
    assert log[0] == ("ops", "floor", "4010.1.0 is no longer a floor of stable (amd64)")
    assert ("ops", "floor", f"{MID} is a floor of stable (amd64)") in log


# -- rollout status --------------------------------------------------------------------------------


async def test_rollout_status_numbers(
    client: Client, admin_token: str, release: str, clock: FakeClock, db_url: str
) -> None:
    """A fleet of 12 hosts in every state the status reports. Catches hosts put in the wrong
    bucket: a timed-out host still in progress, a rollback not counted as failed, hosts already
    on the target counted as remaining, a host ahead of the target counted as remaining (the
    rollout would never look finished), holds not broken down by reason."""
    from nebula.jobs.sweeper import sweep_once
    from nebula.store.db import create_engine, session_factory

    await set_policy(client, admin_token, update_timeout="1h")
    t1 = Host(machine_id=machine(1), version=OLD)
    assert await check(client, t1) == NEW  # will time out
    clock.advance(minutes=61)

    c1, c2 = Host(machine_id=machine(2)), Host(machine_id=machine(3))
    for host in (c1, c2):
        assert await check(client, host) == NEW
        assert await complete(client, host, NEW) is None
    c3 = Host(machine_id=machine(4), version=NEW)  # installed on the target
    assert await check(client, c3) is None
    p1 = Host(machine_id=machine(5))
    assert await check(client, p1) == NEW
    await send(client, p1.event(13, 1))
    f1 = Host(machine_id=machine(6))
    assert await check(client, f1) == NEW
    await send(client, f1.event(3, 0, ERROR))
    r1 = Host(machine_id=machine(7))
    assert await check(client, r1) == NEW
    assert await roll_back(client, r1) is None
    h1 = Host(machine_id=machine(8), version=NEW)
    assert await check(client, h1) is None
    resp = await client.post(
        f"/api/v1/instances/{h1.machine_id}/hold", json={}, headers=auth(admin_token)
    )
    assert resp.status == 200
    h1.version = OLD
    assert await check(client, h1) is None
    a1 = Host(machine_id=machine(9), version=NEWER)  # ahead of the target: nothing to do
    assert await check(client, a1) is None

    await set_policy(client, admin_token, percentage=50, max_concurrent=1)
    for mid in ids_with_bucket(NEW, 50, 100, 2, start=100):
        assert await check(client, Host(machine_id=mid)) is None
    (q1,) = ids_with_bucket(NEW, 0, 50, 1, start=100)
    assert await check(client, Host(machine_id=q1)) is None  # p1 holds the one slot

    expected_hosts = {
        "total": 12,
        "complete": 3,
        "in_progress": 1,
        "installed": 0,
        "reboot_overdue": 0,
        "failed": 2,
        "timed_out": 1,
        "held": {"host_hold": 1, "percentage": 2, "concurrency": 1},
        "not_yet_eligible": 2,
        "remaining": 7,  # f1, r1, t1, h1, the two outside the percentage, q1
        # f1 and t1 are offered it again, q1 when a slot frees; not r1 (it rolled back from
        # it), h1 (held) or the two the percentage leaves out.
        "to_update": 3,
    }
    status = await rollout(client, admin_token)
    assert status["hosts"] == expected_hosts
    assert (status["group"], status["arch"], status["target"]) == ("stable", "amd64", NEW)
    assert status["updates_enabled"] is True and status["paused_reason"] is None
    assert status["grants_last_hour"] == 5  # c1, c2, p1, f1, r1; t1's is older
    assert status["rate_per_hour"] == 5.0
    assert status["eta_seconds"] == pytest.approx(3 / 5 * 3600)  # hosts to update, not remaining
    assert status["next_window_opens"] is None

    # The same once the sweeper has marked t1 (it was counted by its grant time before).
    engine = create_engine(db_url)
    try:
        await sweep_once(session_factory(engine), clock.now)
    finally:
        await engine.dispose()
    status = await rollout(client, admin_token)
    assert status["hosts"] == expected_hosts

    # A rate limit caps the pace the ETA assumes; a pause has no ETA; a closed window says
    # when it opens next.
    await set_policy(client, admin_token, max_updates_per_period=2, period="1h")
    status = await rollout(client, admin_token)
    assert status["rate_per_hour"] == 2.0
    assert status["eta_seconds"] == pytest.approx(3 / 2 * 3600)
    await set_policy(client, admin_token, windows=["Mon 02:00-05:00 UTC"])
    status = await rollout(client, admin_token)
    assert status["next_window_opens"] == "2026-11-30T02:00:00+00:00"
    resp = await client.post(
        f"{STABLE}/pause", params=AMD64, json={"reason": "x"}, headers=auth(admin_token)
    )
    assert resp.status == 200
    status = await rollout(client, admin_token)
    assert (status["updates_enabled"], status["paused_reason"], status["eta_seconds"]) == (
        False,
        "x",
        None,
    )


async def test_rollout_status_counts_hosts_passing_through_a_floor(
    client: Client, admin_token: str, release: str
) -> None:
    """A host granted a floor is updating as part of this rollout: in progress, and failed when
    it fails there. Catches a status that only knows the target: such hosts would show as
    'remaining' (behind and not updating), and a failure on the floor would show nowhere."""
    await add_version(client, admin_token, MID)
    resp = await client.post(
        "/api/v1/channels/stable/floors",
        json={"arch": "amd64", "version": MID},
        headers=auth(admin_token),
    )
    assert resp.status == 200
    going, failing = Host(machine_id=machine(1)), Host(machine_id=machine(2))
    assert await check(client, going) == MID
    assert await check(client, failing) == MID
    await send(client, failing.event(3, 0, ERROR))
    hosts = (await rollout(client, admin_token))["hosts"]
    assert (hosts["in_progress"], hosts["failed"], hosts["remaining"]) == (1, 1, 1)
    # Through the floor: on it, the host is behind the target again until its next check.
    assert await complete(client, going, MID) == NEW
    hosts = (await rollout(client, admin_token))["hosts"]
    assert (hosts["in_progress"], hosts["complete"]) == (1, 0)
    assert await complete(client, going, NEW) is None
    hosts = (await rollout(client, admin_token))["hosts"]
    assert (hosts["in_progress"], hosts["complete"], hosts["remaining"]) == (0, 1, 1)


async def test_rollout_status_follows_the_policy_in_force(
    client: Client, admin_token: str, release: str
) -> None:
    """Holds in the status are those of the policy now, not each host's last answer. Catches a
    status that still says "held percentage" after the percentage went to 100, "paused" after a
    resume, a percentage counted only from hosts that checked since it was set (none had: the
    SQL count of hosts outside it must match nebula.policy for every host, on both databases),
    and "running" with an unknown end once every host is complete."""
    from nebula.policy import in_rollout

    fleet = [Host(machine_id=machine(n)) for n in range(40)]
    for host in fleet:
        assert await check(client, host) == NEW
        assert await complete(client, host, NEW) is None
    status = await rollout(client, admin_token)
    assert (status["state"], status["eta_seconds"]) == ("done", 0)
    assert status["hosts"]["complete"] == 40

    await add_version(client, admin_token, NEWER)
    await point(client, admin_token, NEWER)
    await set_policy(client, admin_token, percentage=30)
    outside = sum(not in_rollout(h.machine_id, NEWER, 30) for h in fleet)
    assert 0 < outside < 40
    status = await rollout(client, admin_token)  # before any host checked again
    assert status["hosts"]["held"] == {"percentage": outside}
    # The instance list shows the same hosts held, by the same rule (nebula.policy here,
    # SQL there).
    listed = await instances(client, admin_token)
    assert {m for m, i in listed.items() if i["hold_reason"] == "percentage"} == {
        h.machine_id for h in fleet if not in_rollout(h.machine_id, NEWER, 30)
    }
    assert status["hosts"]["to_update"] == 40 - outside
    assert status["state"] == "running"

    for host in fleet:
        await check(client, host)  # the 30% are granted, the rest recorded as "percentage"
    await set_policy(client, admin_token, percentage=100)
    status = await rollout(client, admin_token)
    assert status["hosts"]["held"] == {}
    assert status["hosts"]["to_update"] == outside
    assert {i["hold_reason"] for i in (await instances(client, admin_token)).values()} == {None}

    resp = await client.post(f"{STABLE}/pause", params=AMD64, json={}, headers=auth(admin_token))
    assert resp.status == 200
    status = await rollout(client, admin_token)
    assert (status["state"], status["hosts"]["held"]) == ("paused", {"paused": outside})
    for host in fleet:
        await check(client, host)  # recorded as "paused"
    listed = await instances(client, admin_token)
    assert sum(i["hold_reason"] == "paused" for i in listed.values()) == outside
    resp = await client.post(f"{STABLE}/resume", params=AMD64, json={}, headers=auth(admin_token))
    assert resp.status == 200
    status = await rollout(client, admin_token)
    assert (status["state"], status["hosts"]["held"]) == ("running", {})
    assert {i["hold_reason"] for i in (await instances(client, admin_token)).values()} == {None}


async def test_rollout_status_without_target(client: Client, admin_token: str) -> None:
    """A group whose channel points nowhere: its hosts are counted, nothing is complete.
    Catches a status query that fails (a 500) on a group without a target."""
    await send(client, Host(machine_id=machine(1)).check())
    status = await rollout(client, admin_token)
    assert status["target"] is None
    assert status["hosts"]["total"] == 1 and status["hosts"]["complete"] == 0


# -- holds: noupdate, hold_reason, metrics --------------------------------------------------------


def hold_counts(text: str) -> dict[tuple[str, str], float]:
    counts = {}
    for family in text_string_to_metric_families(text):
        if family.name != "nebula_update_checks":
            continue
        for sample in family.samples:
            if sample.name == "nebula_update_checks_total":
                counts[(sample.labels["decision"], sample.labels["reason"])] = sample.value
    return counts


async def test_every_hold_is_noupdate_recorded_and_counted(
    client: Client, admin_token: str, release: str
) -> None:
    """One host held by each rule in turn. Catches a hold answered with an error status (the
    client reports code 34 and backs off), a hold reason not recorded on the host's state or not
    shown by GET /api/v1/instances, and holds counted under the wrong labels on /metrics."""
    seen: list[str] = []

    async def held(host: Host, reason: str, **kwargs: Any) -> None:
        assert await check(client, host, **kwargs) is None, reason  # `check` asserts noupdate
        listed = (await instances(client, admin_token))[host.machine_id]
        assert listed["hold_reason"] == reason
        seen.append(reason)

    n = iter(range(1, 100))

    def fresh() -> Host:
        return Host(machine_id=machine(next(n)), version=OLD)

    await client.post(f"{STABLE}/pause", params=AMD64, json={}, headers=auth(admin_token))
    await held(fresh(), "paused")
    await client.post(f"{STABLE}/resume", params=AMD64, json={}, headers=auth(admin_token))

    known = Host(machine_id=machine(50), version=NEW)
    await check(client, known)
    await client.post(
        f"/api/v1/instances/{known.machine_id}/hold", json={}, headers=auth(admin_token)
    )
    known.version = OLD
    await held(known, "host_hold")

    await set_policy(client, admin_token, windows=["Sat 02:00-03:00 UTC"])
    await held(fresh(), "outside_window")
    await set_policy(client, admin_token, windows=[], percentage=0)
    await held(fresh(), "percentage")
    await set_policy(client, admin_token, percentage=100, max_updates_per_period=1, period="1h")
    first = fresh()
    assert await check(client, first) == NEW
    await held(fresh(), "rate_limit")
    await set_policy(client, admin_token, max_updates_per_period=None, period=None)
    await set_policy(client, admin_token, max_concurrent=1)
    await held(fresh(), "concurrency")
    await set_policy(client, admin_token, max_concurrent=None, safe_mode=True)
    await held(fresh(), "canary")
    await set_policy(client, admin_token, safe_mode=False)
    await install(client, first)
    first.boot_id = "{7b2e7e0e-5f0a-4c59-9d7e-1f2a3b4c5d6e}"
    await held(
        first,
        "rolled_back",
        event=f'<event eventtype="3" eventresult="0" errorcode="{ROLLBACK}"></event>',
    )

    resp = await client.get("/metrics")
    assert resp.status == 200
    counts = hold_counts(await resp.text())
    holds = {reason: v for (decision, reason), v in counts.items() if decision == "hold"}
    assert holds == {reason: 1.0 for reason in seen}
    assert len(seen) == 8
    assert counts[("grant", "new")] == 1.0
    assert counts[("noupdate", "current")] == 1.0  # `known` on NEW at first
    # A hold is never counted as an error.
    assert not any(decision == "error" for decision, _ in counts)
