"""`nebula policy`, `nebula rollout` and `nebula instance hold|release` against a real server on
a real socket (see tests/cli/test_cli.py: the server runs in the test's event loop, each CLI
command in a worker thread through click's CliRunner). What the CLI did is checked through the
API, not only through what it printed.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import aiohttp
import pytest
from lxml import etree

from tests.cli.runner import fails, nebula, ok
from tests.conftest import FakeClock
from tests.factories import Host

OLD, FLOOR, NEW = "3815.2.0", "4081.2.0", "4152.2.3"
STABLE = "/api/v1/groups/stable"


def rows(output: str) -> dict[str, str]:
    """'  name   value' lines of the CLI's key/value displays, by name."""
    found = {}
    for line in output.splitlines():
        if line.startswith("  "):
            name, _, value = line.strip().partition("  ")
            found[name.strip()] = value.strip()
    return found


async def api(base: str, token: str, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, base + path, headers={"Authorization": f"Bearer {token}"}, **kwargs
        ) as resp,
    ):
        return resp.status, (await resp.json() if resp.content_type.endswith("json") else None)


async def add_version(base: str, token: str, version: str) -> None:
    data = f"payload-{version}".encode() * 64
    body = {
        "version": version,
        "arch": "amd64",
        "base_url": f"https://cdn.example/{version}/",
        "files": [
            {
                "name": "flatcar_production_update.gz",
                "size": len(data),
                "sha1": hashlib.sha1(data).hexdigest(),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        ],
    }
    status, answer = await api(base, token, "POST", "/api/v1/packages", json=body)
    assert status == 201, answer


async def check(base: str, host: Host) -> str | None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/v1/update/", data=host.check()) as resp,
    ):
        assert resp.status == 200
        uc = etree.fromstring(await resp.read()).find("app/updatecheck")
    assert uc is not None
    if uc.get("status") == "noupdate":
        return None
    assert uc.get("status") == "ok"
    return uc.find("manifest").get("version")  # type: ignore[union-attr]


@pytest.fixture
async def env(server: str, admin_token: str) -> dict[str, str]:
    """NEW as stable amd64's target, FLOOR uploaded too; the CLI's environment."""
    for version in (FLOOR, NEW):
        await add_version(server, admin_token, version)
    status, _ = await api(
        server,
        admin_token,
        "PUT",
        "/api/v1/channels/stable",
        json={"arch": "amd64", "version": NEW},
    )
    assert status == 200
    return {"NEBULA_URL": server, "NEBULA_TOKEN": admin_token}


# -- policy --------------------------------------------------------------------------------------


async def test_policy_set_every_option_and_show(
    server: str, admin_token: str, env: dict[str, str]
) -> None:
    """Catches an option the CLI drops or sends under the wrong name (the server would keep its
    default), both --pause-on-failures merged wrongly into one, and a show that prints what the
    server does not hold."""
    args = [
        "policy",
        "set",
        "stable",
        "--arch",
        "amd64",
        "--max-updates-per-period",
        "7",
        "--period",
        "1h",
        "--max-concurrent",
        "3",
        "--update-timeout",
        "2h",
        "--safe-mode",
        "on",
        "--pause-on-failures",
        "5",
        "--pause-on-failures",
        "10%",
        "--window",
        "Mon-Fri 02:00-05:00 Europe/Berlin",
        "--percentage",
        "50",
        "--floor",
        FLOOR,
        "--pin",
        "none",
        "--allow-downgrade",
        "off",
        "--reboot-timeout",
        "3d",
        "--installed-counts-as-updating",
        "off",
        "--retire-after",
        "7d",
    ]
    out = ok(await nebula(args, **env))
    status, body = await api(server, admin_token, "GET", f"{STABLE}/policy?arch=amd64")
    assert status == 200
    policy = body["policy"]
    assert {k: policy[k] for k in policy if k not in ("windows",)} == {
        "updates_enabled": True,
        "paused_reason": None,
        "paused_by": None,
        "paused_at": None,
        "max_updates_per_period": 7,
        "period": "1h",
        "max_concurrent": 3,
        "update_timeout": "2h",
        "safe_mode": True,
        "pause_on_failed_hosts": 5,
        "pause_on_failed_percent": 10.0,
        "percentage": 50.0,
        "pin_version": None,
        "allow_downgrade": False,
        "reboot_timeout": "3d",
        "installed_counts_as_updating": False,
        "retire_after": "7d",
        "floors": [FLOOR],
    }
    (window,) = policy["windows"]
    assert window.endswith("02:00-05:00 Europe/Berlin") and window.startswith("Mon")

    expected_rows = {
        "updates per period": "7 per 1h",
        "max concurrent": "3",
        "update timeout": "2h",
        "safe mode": "on",
        "pause on failures": "5 hosts or 10%",
        "windows": window,
        "percentage": "50%",
        "floors": FLOOR,
        "pin": "none (follows its channel)",
        "allow downgrade": "off",
        "reboot timeout": "3d (warns)",
        "installed counts as updating": "off",
        "retire after": "7d",
    }
    assert out.splitlines()[0] == "group stable (amd64): updates on"
    assert rows(out) == expected_rows
    shown = ok(await nebula(["policy", "show", "stable", "--arch", "amd64"], **env))
    assert shown == out
    as_json = json.loads(
        ok(await nebula(["policy", "show", "stable", "--arch", "amd64", "--json"], **env))
    )
    assert as_json == body

    # Lifting limits with 'none', removing the floor; untouched options stay.
    out = ok(
        await nebula(
            [
                "policy",
                "set",
                "stable",
                "--arch",
                "amd64",
                "--max-concurrent",
                "none",
                "--pause-on-failures",
                "none",
                "--window",
                "none",
                "--remove-floor",
                FLOOR,
                "--percentage",
                "100",
            ],
            **env,
        )
    )
    assert rows(out) == {
        **expected_rows,
        "max concurrent": "none",
        "pause on failures": "never",
        "windows": "always",
        "percentage": "100%",
        "floors": "none",
    }
    status, body = await api(server, admin_token, "GET", f"{STABLE}/policy?arch=amd64")
    assert body["policy"]["max_concurrent"] is None and body["policy"]["floors"] == []
    assert body["policy"]["max_updates_per_period"] == 7

    # The change shows in the activity log as made by the token's owner.
    out = ok(await nebula(["rollout", "activity", "stable", "--arch", "amd64"], **env))
    actors = [line.split()[1:3] for line in out.splitlines()]
    assert ["ops", "policy"] in actors


async def test_policy_set_refusals(server: str, admin_token: str, env: dict[str, str]) -> None:
    """Bad values are refused before or by the server with its message; nothing changes.
    Catches a CLI that swallows the server's message, exits 0 on a refusal, or half applies a
    change (a floor added although the PATCH before it failed)."""
    base = ["policy", "set", "stable", "--arch", "amd64"]
    fails(await nebula(base, **env), 2, "nothing to change")
    fails(await nebula([*base, "--percentage", "120"], **env), 2, "120")
    fails(await nebula([*base, "--max-concurrent", "-1"], **env), 2, "-1")
    fails(await nebula([*base, "--safe-mode", "maybe"], **env), 2, "maybe")
    fails(await nebula([*base, "--period", "1x"], **env), 1, "400", "1x")
    fails(await nebula([*base, "--max-updates-per-period", "5"], **env), 1, "400", "period")
    fails(await nebula([*base, "--window", "Mon 02:00-25:00 UTC"], **env), 1, "400", "25:00")
    fails(await nebula([*base, "--pause-on-failures", "x"], **env), 1, "400", "'x'")
    fails(await nebula([*base, "--pin", "9999.0.0"], **env), 1, "404", "9999.0.0")
    fails(await nebula([*base, "--floor", "9999.0.0"], **env), 1, "404", "9999.0.0")
    fails(await nebula([*base, "--period", "1x", "--floor", FLOOR], **env), 1, "400", "1x")
    # The README's example on a server without the floor's package: all of it or nothing.
    readme = ["--max-updates-per-period", "50", "--period", "1h", "--percentage", "25"]
    fails(await nebula([*base, *readme, "--floor", "9999.0.0"], **env), 1, "404", "9999.0.0")
    fails(await nebula([*base, *readme, "--remove-floor", FLOOR], **env), 1, "404", FLOOR)
    fails(await nebula(["policy", "set", "stable", "--max-concurrent", "3"], **env), 1, "--arch")
    fails(await nebula(["policy", "show", "nightly"], **env), 1, "404", "nightly")
    status, body = await api(server, admin_token, "GET", f"{STABLE}/policy?arch=amd64")
    policy = body["policy"]
    assert (policy["max_concurrent"], policy["period"], policy["windows"], policy["floors"]) == (
        None,
        None,
        [],
        [],
    )
    assert (policy["max_updates_per_period"], policy["percentage"]) == (None, 100.0)
    status, body = await api(server, admin_token, "GET", f"{STABLE}/activity?arch=amd64")
    # Nothing but the setup's channel change: no refused policy change left an entry.
    assert status == 200 and [a["action"] for a in body["activity"]] == ["channel_set"]


async def test_every_policy_answer_shows_the_floors_and_keeps_what_was_not_given(
    server: str, admin_token: str, env: dict[str, str]
) -> None:
    """Catches answers that omit the floors (policy set without --floor, pause and resume
    printed "floors none" while one existed), a --pause-on-failures N that clears the P% rule
    given earlier, and a pause of a paused group that drops the new reason without a word."""
    base = ["--arch", "amd64"]
    ok(await nebula(["policy", "set", "stable", *base, "--floor", FLOOR], **env))
    ok(await nebula(["policy", "set", "stable", *base, "--pause-on-failures", "10%"], **env))
    out = ok(await nebula(["policy", "set", "stable", *base, "--pause-on-failures", "2"], **env))
    assert rows(out)["floors"] == FLOOR
    assert rows(out)["pause on failures"] == "2 hosts or 10%"
    out = ok(
        await nebula(
            [
                "policy",
                "set",
                "stable",
                *base,
                "--pause-on-failures",
                "none",
                "--pause-on-failures",
                "3",
            ],
            **env,
        )
    )
    assert rows(out)["pause on failures"] == "3 hosts"

    out = ok(await nebula(["rollout", "pause", "stable", *base, "--reason", "first"], **env))
    assert rows(out)["floors"] == FLOOR
    out = ok(await nebula(["rollout", "pause", "stable", *base, "--reason", "second"], **env))
    assert out.splitlines()[0].startswith("nothing changed: already paused by ops since ")
    assert "first" in out.splitlines()[0]
    assert out.splitlines()[1] == "group stable (amd64): updates PAUSED (first, by ops)"
    assert rows(out)["floors"] == FLOOR
    out = ok(await nebula(["rollout", "resume", "stable", *base, "--reason", "ok now"], **env))
    assert rows(out)["floors"] == FLOOR
    out = ok(await nebula(["rollout", "resume", "stable", *base, "--reason", "twice"], **env))
    assert out.splitlines()[0].startswith("nothing changed: not paused")

    status, body = await api(server, admin_token, "GET", f"{STABLE}/activity?arch=amd64")
    assert status == 200
    logged = [(a["action"], a["message"]) for a in body["activity"]]
    assert logged[0] == ("resume", "not paused: updates were already on; resume asked again: twice")
    assert logged[2][0] == "pause" and logged[2][1].endswith("; pause asked again: second")
    assert body["activity"][2]["detail"] == {"unchanged": True}


# -- rollout ---------------------------------------------------------------------------------------


async def test_rollout_status_pause_resume_activity(
    server: str, admin_token: str, env: dict[str, str]
) -> None:
    """Catches a pause that does not reach the server (hosts keep getting updates), a reason
    that is lost on the way, and a status that prints other numbers than the API's."""
    updating = Host(machine_id="a" * 32, version=OLD)
    assert await check(server, updating) == NEW
    assert await check(server, Host(machine_id="b" * 32, version=NEW)) is None

    out = ok(await nebula(["rollout", "status", "stable", "--arch", "amd64"], **env))
    assert out.splitlines()[0] == f"group stable (amd64) -> {NEW}: running"
    shown = rows(out)
    assert (shown["hosts"], shown["complete"], shown["in progress"], shown["remaining"]) == (
        "2",
        "1",
        "1",
        "0 (0 to update under this policy)",
    )
    assert shown["pace"].startswith("1 grants in the last hour")
    status, api_status = await api(server, admin_token, "GET", f"{STABLE}/rollout?arch=amd64")
    as_json = json.loads(
        ok(await nebula(["rollout", "status", "stable", "--arch", "amd64", "--json"], **env))
    )
    assert as_json == api_status

    out = ok(
        await nebula(
            ["rollout", "pause", "stable", "--arch", "amd64", "--reason", "bad kernel"], **env
        )
    )
    assert out.splitlines()[0] == "group stable (amd64): updates PAUSED (bad kernel, by ops)"
    assert await check(server, Host(machine_id="c" * 32, version=OLD)) is None
    out = ok(await nebula(["rollout", "status", "stable", "--arch", "amd64"], **env))
    assert out.splitlines()[0] == f"group stable (amd64) -> {NEW}: PAUSED: bad kernel"
    assert rows(out)["finishes in"].startswith("unknown")

    out = ok(
        await nebula(
            ["rollout", "resume", "stable", "--arch", "amd64", "--reason", "fixed upstream"],
            **env,
        )
    )
    assert out.splitlines()[0] == "group stable (amd64): updates on"
    assert await check(server, Host(machine_id="c" * 32, version=OLD)) == NEW

    out = ok(await nebula(["rollout", "activity", "stable", "--arch", "amd64"], **env))
    lines = out.splitlines()
    assert len(lines) == 3  # the setup's channel change is the first entry
    assert re.match(r"\S+\s+ops\s+resume\s+fixed upstream$", lines[0]), lines[0]
    assert re.match(r"\S+\s+ops\s+pause\s+bad kernel$", lines[1]), lines[1]
    assert re.match(r"\S+\s+ops\s+channel_set\s+channel stable", lines[2]), lines[2]
    listed = json.loads(
        ok(
            await nebula(
                ["rollout", "activity", "stable", "--arch", "amd64", "--limit", "1", "--json"],
                **env,
            )
        )
    )
    (entry,) = listed["activity"]
    assert (entry["actor"], entry["action"], entry["message"]) == (
        "ops",
        "resume",
        "fixed upstream",
    )
    assert entry["detail"]["was_paused_for"] == "bad kernel"

    # The arm64 group was never touched; a name for both arches needs --arch.
    status, body = await api(server, admin_token, "GET", f"{STABLE}/policy?arch=arm64")
    assert (status, body["policy"]["updates_enabled"]) == (200, True)
    fails(await nebula(["rollout", "pause", "stable"], **env), 1, "--arch")


# -- instance hold|release -----------------------------------------------------------------------


async def test_instance_hold_and_release(
    server: str, admin_token: str, env: dict[str, str]
) -> None:
    """Catches a hold that does not reach the host's state, and a release that leaves it held."""
    mid = "d" * 32
    fails(await nebula(["instance", "hold", mid], **env), 1, "404", mid)

    host = Host(machine_id=mid, version=NEW)
    assert await check(server, host) is None
    braced = "{" + mid.upper() + "}"  # as hosts may send it
    out = ok(await nebula(["instance", "hold", braced, "--reason", "database primary"], **env))
    assert out.strip() == f"{mid} held"
    host.version = OLD
    assert await check(server, host) is None
    status, body = await api(server, admin_token, "GET", "/api/v1/instances")
    (listed,) = body["instances"]
    assert (listed["held"], listed["hold_reason"]) == (True, "host_hold")
    out = ok(await nebula(["instance", "list"], **env))
    (row,) = [line for line in out.splitlines() if line.startswith(mid)]
    assert " held " in row

    out = ok(await nebula(["instance", "release", mid], **env))
    assert out.strip() == f"{mid} released"
    status, body = await api(server, admin_token, "GET", "/api/v1/instances")
    assert (status, body["instances"][0]["held"]) == (200, False)
    assert await check(server, host) == NEW

    out = ok(await nebula(["rollout", "activity", "stable", "--arch", "amd64"], **env))
    assert "database primary" in out.splitlines()[1] and " hold " in out.splitlines()[1]


async def test_instance_delete_and_list_retired(
    server: str,
    admin_token: str,
    viewer_token: str,
    db_url: str,
    clock: FakeClock,
    env: dict[str, str],
) -> None:
    """`instance list` shows live hosts, `--retired` only the retired ones, `--all` both;
    `instance delete` removes a host (a viewer token is refused). Catches flags the CLI drops
    (the server's default list would come back for --retired) and a delete sent without the
    id or for a viewer."""
    from datetime import timedelta

    from nebula.jobs.retirement import retire_once
    from nebula.store.db import create_engine, session_factory

    silent, alive = Host(machine_id="e" * 32, version=NEW), Host(machine_id="f" * 32, version=NEW)
    assert await check(server, silent) is None
    engine = create_engine(db_url)
    try:  # fifteen days on, for the retirement job; then `alive` checks in
        later = clock.now + timedelta(days=15)
        assert await retire_once(session_factory(engine), later) == [silent.machine_id]
    finally:
        await engine.dispose()
    assert await check(server, alive) is None

    def ids(out: str) -> set[str]:
        return {line.split()[0] for line in out.splitlines()[1:] if line.strip()}

    assert ids(ok(await nebula(["instance", "list"], **env))) == {alive.machine_id}
    retired = ok(await nebula(["instance", "list", "--retired"], **env))
    assert ids(retired) == {silent.machine_id} and "(retired)" in retired
    assert ids(ok(await nebula(["instance", "list", "--all"], **env))) == {
        silent.machine_id,
        alive.machine_id,
    }
    fails(await nebula(["instance", "list", "--all", "--retired"], **env), 2, "say one")

    viewer = {**env, "NEBULA_TOKEN": viewer_token}
    fails(await nebula(["instance", "delete", silent.machine_id, "--yes"], **viewer), 1, "403")
    out = ok(await nebula(["instance", "delete", silent.machine_id, "--yes"], **env))
    assert out.strip() == f"{silent.machine_id} deleted"
    assert ids(ok(await nebula(["instance", "list", "--all"], **env))) == {alive.machine_id}
    fails(await nebula(["instance", "delete", silent.machine_id, "--yes"], **env), 1, "404")
    out = ok(await nebula(["rollout", "activity", "stable", "--arch", "amd64"], **env))
    assert f"host {silent.machine_id} deleted" in out and " ops " in out


async def test_rollout_status_and_list_show_hosts_waiting_for_their_reboot(
    server: str, admin_token: str, clock: FakeClock, env: dict[str, str]
) -> None:
    """An installed host waiting two days for its reboot: `rollout status` says how many wait and
    for how long, warns past --reboot-timeout, and `instance list` shows the wait. Catches a CLI
    that drops the server's new fields (the wait would show nowhere)."""
    ok(
        await nebula(
            ["policy", "set", "stable", "--arch", "amd64", "--reboot-timeout", "1d"], **env
        )
    )
    host = Host(machine_id="a" * 32, version=OLD)
    assert await check(server, host) == NEW
    async with aiohttp.ClientSession() as http:
        for event in ((13, 1), (14, 1), (3, 1)):
            async with http.post(f"{server}/v1/update/", data=host.event(*event)) as resp:
                assert resp.status == 200
    clock.advance(days=2, hours=3)
    out = ok(await nebula(["rollout", "status", "stable", "--arch", "amd64"], **env))
    assert (
        "    installed  1 waiting for their reboot, longest 2d3h (holding a concurrency slot)"
        in out.splitlines()
    ), out
    assert "WARNING      1 installed hosts waited past the reboot timeout (1d)" in out
    out = ok(await nebula(["instance", "list"], **env))
    (row,) = [line for line in out.splitlines() if line.startswith(host.machine_id)]
    assert "installed 2d3h (reboot overdue)" in row


async def test_rollout_history_prints_the_samples(
    server: str, admin_token: str, db_url: str, clock: FakeClock, env: dict[str, str]
) -> None:
    """`rollout history` shows each sample's hosts by version (with shares) and status, and
    --json is the API's answer. Catches a CLI that drops versions or mislabels the window."""
    from nebula.jobs.history import sample_once
    from nebula.store import db

    for n, version in enumerate((NEW, NEW, NEW, OLD)):
        await check(server, Host(machine_id=f"{n:032x}", version=version))
    engine = db.create_engine(db_url)
    try:
        await sample_once(db.session_factory(engine), clock(), 300, 86400)
    finally:
        await engine.dispose()
    out = ok(
        await nebula(["rollout", "history", "stable", "--arch", "amd64", "--window", "1h"], **env)
    )
    lines = out.splitlines()
    assert lines[0] == "group stable (amd64), last 1h: 1 samples"
    assert f"{NEW} 3 (75%)  {OLD} 1 (25%)" in lines[1]
    assert "[granted 1, idle 3]" in lines[1]
    as_json = json.loads(
        ok(await nebula(["rollout", "history", "stable", "--arch", "amd64", "--json"], **env))
    )
    _, api_answer = await api(server, admin_token, "GET", f"{STABLE}/history?arch=amd64")
    assert as_json == api_answer
    fails(await nebula(["rollout", "history", "stable", "--window", "2w"], **env), 2, "2w")
