"""API tokens over the admin API (nebula.web.tokens) and their last-used time.

Each test runs against a real app on a fresh database of each backend.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import FakeClock
from tests.web.test_rollout_api import auth, expect_error

Client = Any


async def tokens(client: Client, token: str) -> dict[str, dict[str, Any]]:
    resp = await client.get("/api/v1/tokens", headers=auth(token))
    assert resp.status == 200, await resp.text()
    return {t["name"]: t for t in (await resp.json())["tokens"]}


async def test_create_list_revoke(client: Client, admin_token: str, viewer_token: str) -> None:
    """Catches a secret that does not work (or is shown again in the list), a viewer that can
    list tokens, a duplicate name, bad input taken, and a revoked token still honoured."""
    await expect_error(await client.get("/api/v1/tokens", headers=auth(viewer_token)), 403)
    resp = await client.post(
        "/api/v1/tokens", json={"name": "grafana", "role": "viewer"}, headers=auth(admin_token)
    )
    assert resp.status == 201, await resp.text()
    made = await resp.json()
    assert (made["name"], made["role"]) == ("grafana", "viewer")
    secret = made["token"]
    assert secret.startswith("nbl_")
    resp = await client.get("/api/v1/whoami", headers=auth(secret))
    assert await resp.json() == {"name": "grafana", "role": "viewer"}
    listed = await tokens(client, admin_token)
    assert set(listed) == {"ops", "dashboard", "grafana"}
    assert listed["grafana"]["revoked_at"] is None and secret not in str(listed)
    for body, status, words in [
        ({"name": "grafana"}, 409, "exists already"),
        ({"name": "x", "role": "root"}, 400, "role must be one of"),
        ({"name": ""}, 400, "a token needs a name"),
        ({"name": 7}, 400, "a token needs a name"),
        ({"name": "a/b"}, 400, "'/'"),
        ({"role": "admin"}, 400, "a token needs a name"),
    ]:
        resp = await client.post("/api/v1/tokens", json=body, headers=auth(admin_token))
        assert words in await expect_error(resp, status), body
    resp = await client.delete("/api/v1/tokens/grafana", headers=auth(admin_token))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["revoked_at"] is not None
    await expect_error(await client.get("/api/v1/whoami", headers=auth(secret)), 401)
    resp = await client.delete("/api/v1/tokens/grafana", headers=auth(admin_token))
    assert "revoked at" in await expect_error(resp, 409)
    resp = await client.delete("/api/v1/tokens/nosuch", headers=auth(admin_token))
    assert "nosuch" in await expect_error(resp, 404)
    resp = await client.get(
        "/api/v1/activity", params={"action": "token"}, headers=auth(admin_token)
    )
    log = (await resp.json())["activity"]
    assert [(a["actor"], a["message"]) for a in log] == [
        ("ops", "token grafana (viewer) revoked"),
        ("ops", "token grafana (viewer) created"),
    ]


async def test_last_used_is_kept_to_the_minute(
    client: Client, admin_token: str, viewer_token: str, clock: FakeClock
) -> None:
    """Catches a last-used time that is never written (as before), one written on every
    request (it would follow the clock within the minute), and one written for the wrong
    token."""
    first = clock()
    assert (await tokens(client, admin_token))["dashboard"]["last_used_at"] is None
    assert (await tokens(client, admin_token))["ops"]["last_used_at"] == first.isoformat()
    clock.advance(seconds=30)
    assert (await tokens(client, admin_token))["ops"]["last_used_at"] == first.isoformat()
    clock.advance(seconds=31)
    later = clock()
    listed = await tokens(client, admin_token)
    assert listed["ops"]["last_used_at"] == later.isoformat()
    assert listed["dashboard"]["last_used_at"] is None
    assert (await client.get("/api/v1/whoami", headers=auth(viewer_token))).status == 200
    assert (await tokens(client, admin_token))["dashboard"]["last_used_at"] == later.isoformat()
