"""The app starts on each backend, answers health checks, and refuses the admin API without a
token."""

from __future__ import annotations

from typing import Any


async def test_health_and_auth(client: Any, admin_token: str) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    assert (await client.get("/api/v1/channels")).status == 401
    resp = await client.get("/api/v1/channels", headers={"Authorization": f"Bearer {admin_token}"})
    assert resp.status == 200
    body = await resp.json()
    assert {(c["name"], c["arch"]) for c in body["channels"]} == {
        (n, a) for n in ("alpha", "beta", "stable", "lts") for a in ("amd64", "arm64")
    }
