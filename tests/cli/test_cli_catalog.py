"""`nebula app|channel|group|package` verbs against a real server, in table and JSON output:
a custom application taken from nothing to a host that updates from it, with the CLI alone;
then what the CLI says when a delete is refused or a change is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from lxml import etree

from tests.cli.runner import fails, nebula, ok
from tests.cli.test_cli import api, table_rows
from tests.factories import FLATCAR_APP_ID, Host, payload_file

AGENT = "io.example.agent"


async def run_json(args: list[str], env: dict[str, str]) -> Any:
    return json.loads(ok(await nebula([*args, "-o", "json"], **env)))


async def test_a_custom_app_from_nothing_to_an_update(
    server: str, admin_token: str, tmp_path: Path, signing_key: RSAPrivateKey
) -> None:
    """Catches a verb missing or not passing --app on to the server (the agent's channel
    `stable` would then be Flatcar's), tables that lose a column, and an app whose hosts are
    not offered its package."""
    env = {"NEBULA_URL": server, "NEBULA_TOKEN": admin_token}
    out = ok(await nebula(["app", "create", "agent", "--id", "{IO.Example.Agent}"], **env))
    assert f"app agent: {AGENT}" in out
    header, *rows = table_rows(ok(await nebula(["app", "list"], **env)))
    assert header == ["NAME", "ID", "DESCRIPTION"]
    assert sorted(r[:2] for r in rows) == [["agent", AGENT], ["flatcar", FLATCAR_APP_ID]]
    header, *_ = table_rows(ok(await nebula(["app", "list", "-o", "wide"], **env)))
    assert header[-1] == "CREATED"
    app = await run_json(["app", "set", "agent", "--description", "node agent"], env)
    assert (app["id"], app["description"]) == (AGENT, "node agent")

    main = payload_file(tmp_path, "agent.raw", signing_key, size=8192)
    for version in ("1.0.0", "1.1.0"):
        upload = ["package", "upload", str(main), "--version", version, "--arch", "amd64"]
        ok(await nebula([*upload, "--app", "agent"], **env))
    for name in ("stable", "beta"):
        out = ok(
            await nebula(["channel", "create", name, "--arch", "amd64", "--app", AGENT], **env)
        )
        assert f"channel {name} (amd64) of {AGENT} offers nothing yet" in out
    created = await run_json(
        ["group", "create", "agents", "--arch", "amd64", "--channel", "beta", "--app", "agent"],
        env,
    )
    assert (created["app_id"], created["channel"]) == (AGENT, "beta")
    ok(await nebula(["policy", "set", "agents", "--arch", "amd64", "--max-concurrent", "5"], **env))
    out = ok(
        await nebula(
            ["channel", "set", "beta", "--arch", "amd64", "--version", "1.1.0", "--app", "agent"],
            **env,
        )
    )
    assert "beta (amd64) now offers 1.1.0" in out

    # Flatcar's channels are untouched; the agent's list under --app.
    flatcar = await run_json(["channel", "list"], env)
    assert all(c["version"] is None for c in flatcar["channels"])
    header, *rows = table_rows(ok(await nebula(["channel", "list", "--app", "agent"], **env)))
    assert header[:3] == ["CHANNEL", "ARCH", "VERSION"]
    assert sorted(r[:3] for r in rows) == [["beta", "amd64", "1.1.0"], ["stable", "amd64", "-"]]
    shown = await run_json(["channel", "show", "beta", "--app", "agent"], env)
    assert (shown["version"], shown["groups"]) == ("1.1.0", ["agents"])
    out = ok(await nebula(["channel", "show", "beta", "--app", "agent"], **env))
    assert "groups: agents" in out and "1.1.0" in out
    packages = await run_json(["package", "list", "--app", "agent"], env)
    assert sorted(p["version"] for p in packages["packages"]) == ["1.0.0", "1.1.0"]
    # Packages have ids, not names: without --app, every app's are listed (-o wide: the app).
    assert (await run_json(["package", "list"], env)) == packages
    header, *rows = table_rows(ok(await nebula(["package", "list", "-o", "wide"], **env)))
    assert header[7] == "APP" and {r[7] for r in rows} == {AGENT}
    package = packages["packages"][0]
    out = ok(await nebula(["package", "show", package["id"]], **env))
    assert package["id"] in out and "agent.raw" in out
    assert await run_json(["package", "show", package["id"]], env) == package

    host = Host("5eed5eed5eed5eed5eed5eed5eed5eed", version="1.0.0", track="agents")
    host.app_id = AGENT.upper()
    status, body = await _post(server, host.check())
    uc = etree.fromstring(body).find("app/updatecheck")
    assert status == 200 and uc is not None and uc.get("status") == "ok", body
    assert uc.find("manifest").get("version") == "1.1.0"  # type: ignore[union-attr]
    out = ok(await nebula(["rollout", "status", "agents", "--arch", "amd64"], **env))
    assert "1.1.0" in out

    out = ok(await nebula(["app", "show", "agent"], **env))
    assert "groups: agents (amd64)" in out and "packages: 2" in out


async def _post(server: str, body: bytes) -> tuple[int, bytes]:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.post(server + "/v1/update/", data=body) as r:
        return r.status, await r.read()


async def test_refusals_and_changes(server: str, admin_token: str) -> None:
    """Catches a refused delete that exits 0 or hides the server's reason, and `group set` /
    `app delete` that do not reach the server."""
    env = {"NEBULA_URL": server, "NEBULA_TOKEN": admin_token}
    fails(
        await nebula(["channel", "delete", "stable", "--arch", "amd64"], **env),
        1,
        "server said 409",
        "stable (amd64)",
    )
    fails(await nebula(["app", "delete", "flatcar"], **env), 1, "server said 409", "groups")
    fails(await nebula(["app", "show", "nope"], **env), 1, "server said 404", "no application")
    fails(await nebula(["group", "set", "stable", "--arch", "amd64"], **env), 2, "say what")
    fails(await nebula(["app", "set", "flatcar"], **env), 2, "say what")

    ok(await nebula(["group", "create", "canary", "--arch", "amd64", "--channel", "stable"], **env))
    out = ok(
        await nebula(
            ["group", "set", "canary", "--channel", "beta", "--track", "canary-track"], **env
        )
    )
    assert "track canary-track follows beta" in out
    status, group = await api(server, admin_token, "GET", "/api/v1/groups/canary")
    assert (status, group["channel"], group["track"]) == (200, "beta", "canary-track")
    gone = await run_json(["group", "delete", "canary", "--arch", "amd64"], env)
    assert gone == {"group": "canary", "arch": "amd64", "deleted": True}
    status, _ = await api(server, admin_token, "GET", "/api/v1/groups/canary")
    assert status == 404

    ok(await nebula(["channel", "create", "edge", "--arch", "arm64"], **env))
    out = ok(await nebula(["channel", "delete", "edge"], **env))
    assert "deleted channel edge" in out
    ok(await nebula(["app", "create", "tmp"], **env))
    out = ok(await nebula(["app", "delete", "tmp", "-o", "yaml"], **env))
    assert "deleted: true" in out
    listed = await run_json(["app", "list"], env)
    assert [a["name"] for a in listed["apps"]] == ["flatcar"]


async def test_app_picks_a_group_whose_name_two_apps_have(server: str, admin_token: str) -> None:
    """Catches a policy or rollout command that does not pass --app on: the change would be
    refused as ambiguous, or land in the other app's group."""
    env = {"NEBULA_URL": server, "NEBULA_TOKEN": admin_token}
    for app in ("one", "two"):
        ok(await nebula(["app", "create", app, "--id", f"io.example.{app}"], **env))
        ok(await nebula(["channel", "create", "main", "--arch", "amd64", "--app", app], **env))
        create = ["group", "create", "fleet", "--arch", "amd64", "--channel", "main"]
        ok(await nebula([*create, "--app", app], **env))
    fails(await nebula(["rollout", "status", "fleet"], **env), 1, "one, two", "--app")
    ok(await nebula(["policy", "set", "fleet", "--app", "two", "--max-concurrent", "3"], **env))
    for app, limit in (("one", None), ("two", 3)):
        shown = await run_json(["policy", "show", "fleet", "--app", app], env)
        assert shown["policy"]["max_concurrent"] == limit, app
    ok(await nebula(["rollout", "pause", "fleet", "--app", "one", "--reason", "wait"], **env))
    out = ok(await nebula(["rollout", "activity", "fleet", "--app", "one"], **env))
    assert "pause" in out and "wait" in out
    status = await run_json(["rollout", "status", "fleet", "--app", "one"], env)
    assert status["updates_enabled"] is False
    ok(await nebula(["rollout", "history", "fleet", "--app", "two"], **env))
    shown = await run_json(["group", "show", "fleet", "--app", "two"], env)
    assert shown["policy"]["updates_enabled"] is True
