"""The admin API's locks, route by route from the router's own list (issue 8, item 4): no token,
a wrong one and a revoked one are 401 everywhere, a viewer's write is 403 everywhere, every
answer carries the security headers, and an address that keeps sending bad tokens is slowed
down with 429. Routes outside /api/ are the hosts' and the probes': a new one must be added to
PUBLIC below on purpose, or this fails.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.config import Settings
from nebula.store import db
from nebula.store.tokens import revoke_token
from nebula.web.api import SECURITY_HEADERS
from nebula.web.app import create_app
from nebula.web.ratelimit import FailureLimiter
from tests.conftest import FakeClock
from tests.factories import make_settings, make_token
from tests.problem import check_problem

PUBLIC = {
    ("POST", "/v1/update/"),
    ("POST", "/v1/update"),
    ("GET", "/v1/payloads/{package_id}/{name}"),
    ("GET", "/v1/release/{board}/{version}/{name}"),  # stored extension payloads, as payloads
    ("GET", "/v1/ignition/{group}"),  # 404 unless ignition_public is on
    ("GET", "/v1/extensions/{group}/{ext}/{file}"),  # sysext images promoted to a group
    ("GET", "/metrics"),  # the admin listener's alone when admin_listen is set
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/v1/ignition/{group}"),  # host configs, only when ignition_public is on
    ("GET", "/v1/release/{board}/{version}/{name}"),  # release files for first boot
}
SAMPLE = {"machine_id": "a" * 32, "version": "4152.2.3"}
# Reads a viewer may not make either (403 like a write): listed on purpose, or the walk fails.
ADMIN_READS = {("GET", "/api/v1/tokens")}


def admin_routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, a concrete path) for every route under /api/, from the router itself."""
    found = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        template = info.get("formatter") or info.get("path") or ""
        if route.method == "HEAD" or not template.startswith("/api/"):
            continue
        path = re.sub(r"\{(\w+)(:[^}]*)?\}", lambda m: SAMPLE.get(m.group(1), "x"), template)
        found.append((route.method, path))
    return found


def other_routes(app: web.Application) -> set[tuple[str, str]]:
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        template = info.get("formatter") or info.get("path") or ""
        if route.method != "HEAD" and not template.startswith("/api/"):
            routes.add((route.method, template))
    return routes


@pytest.fixture
def settings(db_url: str, tmp_path: Path, key_file: Path) -> Settings:
    """No limit on bad tokens here: the walk sends hundreds of them from one address."""
    return make_settings(db_url, tmp_path, key_file, auth_failure_limit=0)


async def revoked(db_url: str, engine: AsyncEngine, clock: FakeClock) -> str:
    token = await make_token(db_url, "gone", "admin")
    async with db.transaction(db.session_factory(engine)) as session:
        assert await revoke_token(session, "gone", clock())
    return token


def assert_secured(resp: Any) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert resp.headers.get(name) == value, (resp.method, resp.url, name)


async def test_every_admin_route_refuses_a_missing_wrong_or_revoked_token(
    client: Any,
    db_url: str,
    engine: AsyncEngine,
    clock: FakeClock,
    admin_token: str,
    viewer_token: str,
) -> None:
    """Catches a route registered outside the token check (or a check that lets some method
    through), a viewer that may write somewhere, a revoked token still honoured, and an admin
    answer without the security headers."""
    app = client.server.app
    routes = admin_routes(app)
    assert len(routes) >= 20, routes  # the walk really walks
    gone = await revoked(db_url, engine, clock)
    for method, path in routes:
        for header in (None, "Bearer nbl_wrong", f"Bearer {gone}"):
            headers = {"Authorization": header} if header else {}
            resp = await client.request(method, path, headers=headers)
            assert resp.status == 401, (method, path, header, await resp.text())
            check_problem(resp.content_type, await resp.json(), 401, "AuthError")
            assert_secured(resp)
        resp = await client.request(
            method, path, headers={"Authorization": f"Bearer {viewer_token}"}
        )
        if method in ("GET", "HEAD") and (method, path) not in ADMIN_READS:
            assert resp.status not in (401, 403, 500), (method, path, resp.status)
        else:
            assert resp.status == 403, (method, path, await resp.text())
            check_problem(resp.content_type, await resp.json(), 403, "ForbiddenError")
        assert_secured(resp)
    # The admin's own answers (found or not) carry them too, and nothing is a 500.
    for method, path in routes:
        if method == "GET":
            resp = await client.get(path, headers={"Authorization": f"Bearer {admin_token}"})
            assert resp.status != 500, (path, await resp.text())
            assert_secured(resp)


async def test_every_route_outside_the_api_is_a_known_public_one(client: Any) -> None:
    """Catches an admin route mounted outside /api/ (where no token is asked)."""
    assert other_routes(client.server.app) == PUBLIC


# -- bad tokens per address ------------------------------------------------------------------


@pytest.fixture
async def limited(
    db_url: str, tmp_path: Path, key_file: Path, clock: FakeClock, aiohttp_client: Any
) -> Any:
    """An app that allows 3 bad tokens per 60 s and believes 127.0.0.1's X-Forwarded-For (so
    one test can speak for two addresses)."""
    settings = make_settings(
        db_url,
        tmp_path,
        key_file,
        auth_failure_limit=3,
        auth_failure_window=60,
        trusted_proxy=("127.0.0.1",),
    )
    return await aiohttp_client(create_app(settings, clock=clock))


def from_(address: str, token: str | None = None) -> dict[str, str]:
    headers = {"X-Forwarded-For": address}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


async def test_bad_tokens_from_one_address_are_slowed_down(
    limited: Any, admin_token: str, clock: FakeClock
) -> None:
    """Catches no limit (a fourth guess is another 401), a limit a right guess passes (the
    admin token is let through while blocked), one that blocks every address, one that counts
    missing tokens, and one that never lifts."""
    attacker, other = "203.0.113.7", "198.51.100.1"
    for _ in range(5):  # no token at all is no guess
        assert (await limited.get("/api/v1/whoami", headers=from_(attacker))).status == 401
    for _ in range(3):
        resp = await limited.get("/api/v1/whoami", headers=from_(attacker, "nbl_wrong"))
        assert resp.status == 401
    for token in ("nbl_wrong", admin_token):
        resp = await limited.get("/api/v1/whoami", headers=from_(attacker, token))
        assert resp.status == 429, await resp.text()
        assert resp.headers["Retry-After"] == "60"
        assert (await resp.json())["kind"] == "TooManyAttempts"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    # Another address is not held back by it.
    resp = await limited.get("/api/v1/whoami", headers=from_(other, admin_token))
    assert resp.status == 200
    clock.advance(seconds=30)
    resp = await limited.get("/api/v1/whoami", headers=from_(attacker, admin_token))
    assert resp.status == 429 and resp.headers["Retry-After"] == "30"
    clock.advance(seconds=31)
    resp = await limited.get("/api/v1/whoami", headers=from_(attacker, admin_token))
    assert resp.status == 200


async def test_the_hosts_routes_are_not_limited(limited: Any) -> None:
    """Bad admin tokens do not stop the same address from checking for updates."""
    for _ in range(5):
        await limited.get("/api/v1/whoami", headers={"Authorization": "Bearer nbl_wrong"})
    assert (await limited.get("/healthz")).status == 200


@pytest.mark.parametrize(
    ("events", "at", "expected"),
    [
        ([], 0.0, None),
        ([0.0, 1.0], 2.0, None),  # under the limit
        ([0.0, 1.0, 2.0], 3.0, 57),  # blocked until the oldest is 60 s old
        ([0.0, 1.0, 2.0], 59.5, 1),  # never "0": Retry-After of at least a second
        ([0.0, 1.0, 2.0], 60.0, None),  # the oldest left the window
        ([0.0, 1.0, 2.0, 3.0], 60.5, 1),  # only the last 3 count: 1, 2, 3
    ],
)
def test_failure_limiter_window(events: list[float], at: float, expected: int | None) -> None:
    limiter = FailureLimiter(limit=3, window=60)
    for t in events:
        limiter.fail("a", t)
    assert limiter.retry_after("a", at) == expected


def test_failure_limiter_forgets_the_oldest_address_past_its_bound() -> None:
    limiter = FailureLimiter(limit=1, window=60, max_addresses=2)
    for address in ("a", "b", "c"):
        limiter.fail(address, 0.0)
    assert len(limiter) == 2
    assert limiter.retry_after("a", 1.0) is None
    assert limiter.retry_after("c", 1.0) == 59
    assert FailureLimiter(limit=0, window=60).retry_after("a", 0.0) is None
