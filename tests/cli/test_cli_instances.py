"""`nebula instance list|show|set`, `nebula event list`, `nebula activity list` and `nebula
token` over the API, against a real server on a real socket, in table and JSON output."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.cli.runner import fails, nebula, ok
from tests.cli.test_cli import api, table_rows
from tests.factories import Host

ERROR = 268435466  # 10 | 1<<28: payload hash mismatch, from a self-hosted server


async def post(server: str, body: bytes) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{server}/v1/update/", data=body) as r:
        assert r.status == 200


async def test_instance_pages_alias_search_and_show(server: str, admin_token: str) -> None:
    """Catches a list that ignores --limit or gives no way to the next page, a cursor that
    does not lead on, an alias not set or not searchable, and a detail without its events'
    error codes in words."""
    env = {"NEBULA_URL": server, "NEBULA_TOKEN": admin_token}
    ids = [c * 32 for c in "abc"]
    for mid in ids:
        await post(server, Host(machine_id=mid).check())
    await post(server, Host(machine_id=ids[1]).event(3, 0, ERROR))

    result = await nebula(["instance", "list", "--limit", "2", "--sort", "id", "--desc"], **env)
    header, *rows = table_rows(ok(result))
    assert header[:2] == ["MACHINE ID", "ALIAS"] or header[0] == "MACHINE ID"
    assert [r[0] for r in rows] == [ids[2], ids[1]]
    hint = result.stderr.strip()
    assert hint.startswith("more: nebula instance list ... --cursor ")
    cursor = hint.split()[-1]
    args = ["instance", "list", "--limit", "2", "--sort", "id", "--desc", "--cursor", cursor]
    result = await nebula([*args, "-o", "json"], **env)
    page = json.loads(ok(result))
    assert [i["machine_id"] for i in page["instances"]] == [ids[0]]
    assert page["next"] is None and result.stderr == ""

    out = ok(await nebula(["instance", "set", ids[0], "--alias", "db-primary"], **env))
    assert out.strip() == f"{ids[0]} alias db-primary"
    _, *rows = table_rows(ok(await nebula(["instance", "list", "-q", "db-primary"], **env)))
    assert [(r[0], r[1]) for r in rows] == [(ids[0], "db-primary")]
    fails(await nebula(["instance", "set", "f" * 32, "--alias", "x"], **env), 1, "404")

    out = ok(await nebula(["instance", "show", ids[1]], **env))
    assert f"host {ids[1]}" in out
    assert "3/0  update failed  (10: payload hash mismatch [non-official update server])" in out
    shown = json.loads(ok(await nebula(["instance", "show", ids[1], "--json"], **env)))
    assert shown["events"][0]["error"]["text"] == "payload hash mismatch"
    fails(await nebula(["instance", "show", "f" * 32], **env), 1, "404", "f" * 32)


async def test_event_and_activity_lists(server: str, admin_token: str) -> None:
    """Catches a filter not passed on, and logs that do not print (or print as other JSON)."""
    env = {"NEBULA_URL": server, "NEBULA_TOKEN": admin_token}
    host = Host(machine_id="e" * 32)
    await post(server, host.check())
    await post(server, host.event(3, 0, ERROR))
    _, *rows = table_rows(ok(await nebula(["event", "list", "--host", "e" * 32], **env)))
    assert [r[3:6] for r in rows] == [["3/0", "update failed", "10: payload hash mismatch"]]
    listed = json.loads(ok(await nebula(["event", "list", "--result", "1", "-o", "json"], **env)))
    assert listed["events"] == []
    fails(await nebula(["event", "list", "--group", "nosuch"], **env), 1, "404", "nosuch")

    ok(await nebula(["instance", "set", "e" * 32, "--alias", "edge"], **env))
    ok(await nebula(["rollout", "pause", "beta", "--arch", "amd64", "--reason", "bad"], **env))
    _, *rows = table_rows(ok(await nebula(["activity", "list"], **env)))
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("ops", "pause", "beta"),
        ("ops", "alias", "stable"),
    ]
    only = json.loads(ok(await nebula(["activity", "list", "--action", "alias", "--json"], **env)))
    assert [a["detail"]["new"] for a in only["activity"]] == [{"alias": "edge"}]


async def test_tokens_over_the_api(
    server: str, admin_token: str, viewer_token: str, db_url: str
) -> None:
    """Catches token commands that ignore the API when it is configured, a secret that is not
    printed alone, a viewer allowed to list tokens, and both ways asked at once."""
    env = {"NEBULA_URL": server, "NEBULA_TOKEN": admin_token}
    result = await nebula(["token", "create", "--name", "ci", "--role", "viewer"], **env)
    secret = ok(result).strip()
    assert secret.startswith("nbl_") and "\n" not in secret
    assert server in result.stderr
    status, body = await api(server, secret, "GET", "/api/v1/whoami")
    assert (status, body) == (200, {"name": "ci", "role": "viewer"})

    header, *rows = table_rows(ok(await nebula(["token", "list"], **env)))
    assert header == ["NAME", "ROLE", "CREATED", "LAST USED", "STATE"]
    by_name = {r[0]: r for r in rows}
    assert by_name["ci"][3] != "never" and by_name["dashboard"][3] == "never"
    assert secret not in str(rows)
    listed: dict[str, Any] = json.loads(ok(await nebula(["token", "list", "--json"], **env)))
    assert {t["name"] for t in listed["tokens"]} == {"ops", "dashboard", "ci"}

    viewer = {"NEBULA_URL": server, "NEBULA_TOKEN": viewer_token}
    fails(await nebula(["token", "list"], **viewer), 1, "403")
    ok(await nebula(["token", "revoke", "--name", "ci"], **env))
    status, _ = await api(server, secret, "GET", "/api/v1/whoami")
    assert status == 401
    fails(await nebula(["token", "revoke", "--name", "ci"], **env), 1, "409")
    fails(await nebula(["token", "list", "--db", db_url, "--server", server], **env), 2, "say one")

    # On the database (--db wins over the environment): written to the activity log too.
    ok(await nebula(["token", "create", "--db", db_url, "--name", "local"], **env))
    log = json.loads(ok(await nebula(["activity", "list", "--action", "token", "--json"], **env)))
    assert [(a["message"], a["actor"].endswith("(database)")) for a in log["activity"]] == [
        ("token local (admin) created", True),
        ("token ci (viewer) revoked", False),
        ("token ci (viewer) created", False),
    ]
