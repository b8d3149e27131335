"""Hosts in the admin API (nebula.web.instances): the list in keyset pages (every host exactly
once, whatever the sort and however many share a sort value), its filters and search, a host's
detail with error codes in words, and its alias.

Each test runs against a real app on a fresh database of each backend.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import FakeClock
from tests.factories import Host
from tests.web.test_rollout_api import (
    ERROR,
    NEW,
    OLD,
    add_version,
    auth,
    check,
    expect_error,
    machine,
    point,
    release,  # noqa: F401 (a fixture, used by name)
)

Client = Any
HOSTS = 23
APP_NAME = "flatcar"
M1, M2, M3 = ("a1" + "0" * 30, "b2c3" + "0" * 28, "b2d4" + "0" * 28)  # M2, M3 share "b2"


async def get(client: Client, token: str, path: str, **params: Any) -> Any:
    resp = await client.get(path, params=params, headers=auth(token))
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def walk(client: Client, token: str, **params: Any) -> list[dict[str, Any]]:
    """Every page of the list, following `next`."""
    rows: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        body = await get(
            client, token, "/api/v1/instances", **params, **({"cursor": cursor} if cursor else {})
        )
        assert len(body["instances"]) <= int(params.get("limit", 100))
        rows += body["instances"]
        cursor = body["next"]
        if cursor is None:
            return rows
    raise AssertionError("more than 100 pages")


async def fleet(client: Client, clock: FakeClock, engine: AsyncEngine) -> list[str]:
    """HOSTS hosts, four at a time at the same moment on one of two versions; three of them
    with no version stored (a nullable sort key)."""
    ids = []
    for n in range(HOSTS):
        if n % 4 == 0:
            clock.advance(seconds=10)
        host = Host(machine_id=machine(1000 + (n * 7919) % 997), version=(OLD, NEW)[n % 3 == 0])
        assert await check(client, host) is None
        ids.append(host.machine_id)
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE instance_apps SET version = NULL WHERE instance_id IN (:a, :b, :c)"),
            {"a": ids[1], "b": ids[5], "c": ids[6]},
        )
    return ids


@pytest.mark.parametrize(
    ("sort", "order", "key"),
    [
        ("last_seen", "asc", "last_seen_at"),
        ("last_seen", "desc", "last_seen_at"),
        ("version", "asc", "version"),
        ("version", "desc", "version"),
        ("id", "asc", "machine_id"),
        ("id", "desc", "machine_id"),
    ],
)
async def test_pages_hold_every_host_exactly_once(
    client: Client,
    admin_token: str,
    clock: FakeClock,
    engine: AsyncEngine,
    sort: str,
    order: str,
    key: str,
) -> None:
    """Catches a page boundary inside a run of equal sort values that skips or repeats hosts
    (ties not broken by id), a cursor that restarts the list, a nullable key whose NULL rows
    are lost or listed twice, and pages out of order."""
    ids = await fleet(client, clock, engine)
    for limit in (1, 4, 5, 100):
        rows = await walk(client, admin_token, sort=sort, order=order, limit=limit)
        got = [r["machine_id"] for r in rows]
        assert sorted(got) == sorted(ids), (limit, got)

        # In order: the key, NULL last ascending (first descending), ties by machine id.
        def rank(r: dict[str, Any]) -> tuple[Any, ...]:
            value = r[key]
            return (value is None, value or "", r["machine_id"])

        expected = sorted(rows, key=rank, reverse=order == "desc")
        assert got == [r["machine_id"] for r in expected], limit


@pytest.mark.usefixtures("release")
async def test_filters_and_search(client: Client, admin_token: str, clock: FakeClock) -> None:
    """Catches a filter that is ignored (the whole fleet comes back), one applied to the wrong
    column, and a search that misses a host by id prefix, alias or address."""
    start = clock()
    old = Host(machine_id=M1, version=OLD, alias="db-primary")
    assert await check(client, old) == NEW  # granted
    clock.advance(hours=3)
    current = Host(machine_id=M2, version=NEW)
    assert await check(client, current) is None
    arm = Host(machine_id=M3, version=OLD, board="arm64-usr")
    await check(client, arm)
    resp = await client.post(f"/api/v1/instances/{M2}/hold", json={}, headers=auth(admin_token))
    assert resp.status == 200

    async def ids(**params: Any) -> set[str]:
        return {r["machine_id"] for r in await walk(client, admin_token, **params)}

    everyone = {M1, M2, M3}
    assert await ids() == everyone
    assert await ids(status="granted") == {M1}
    assert await ids(version=NEW) == {M2}
    assert await ids(held="true") == {M2}
    assert await ids(held="false") == {M1, M3}
    assert await ids(arch="arm64") == {M3}
    assert await ids(group="stable", arch="amd64") == {M1, M2}
    assert await ids(channel="stable") == everyone
    assert await ids(channel="stable", arch="arm64") == {M3}
    assert await ids(channel="alpha") == set()
    assert await ids(app="e96281a6-d1af-4bde-9a0a-97b76e56dc57") == everyone
    assert await ids(app=APP_NAME) == everyone
    assert await ids(seen_before=(start + (clock() - start) / 2).isoformat()) == {M1}
    assert await ids(seen_after="1h") == {M2, M3}
    assert await ids(q=M2[:5]) == {M2}  # a prefix of the machine id
    assert await ids(q="{" + M3.upper() + "}") == {M3}
    assert await ids(q="db-primary") == {M1}  # the alias the host sent
    assert await ids(q="127.0.0.1") == everyone  # the address they came from
    assert await ids(q="nosuch") == set()
    row = (await walk(client, admin_token, q=M1))[0]
    assert (row["arch"], row["group"], row["granted_version"]) == ("amd64", "stable", NEW)


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"sort": "alias"}, 400, "sort must be one of"),
        ({"order": "sideways"}, 400, "order must be asc or desc"),
        ({"limit": "0"}, 400, "limit"),
        ({"limit": "1001"}, 400, "limit"),
        ({"limit": "many"}, 400, "limit"),
        ({"offset": "100"}, 400, "cursor"),
        ({"cursor": "not-a-cursor"}, 400, "cursor"),
        ({"status": "bogus"}, 400, "unknown status"),
        ({"held": "maybe"}, 400, "held must be true or false"),
        ({"seen_before": "yesterday"}, 400, "seen_before"),
        ({"arch": "sparc"}, 400, "arch"),
        ({"group": "nosuch"}, 404, "no group nosuch"),
        ({"channel": "nosuch"}, 404, "no channel nosuch"),
        ({"app": "nosuch"}, 404, "no application nosuch"),
    ],
)
async def test_bad_list_requests(
    client: Client, admin_token: str, params: dict[str, str], status: int, words: str
) -> None:
    resp = await client.get("/api/v1/instances", params=params, headers=auth(admin_token))
    assert words in await expect_error(resp, status)


async def test_a_cursor_only_serves_its_own_sort(
    client: Client, admin_token: str, clock: FakeClock, engine: AsyncEngine
) -> None:
    """Catches a cursor of one sort replayed against another (it would start mid-list)."""
    await fleet(client, clock, engine)
    body = await get(client, admin_token, "/api/v1/instances", sort="last_seen", limit=2)
    assert body["next"]
    resp = await client.get(
        "/api/v1/instances",
        params={"sort": "version", "cursor": body["next"]},
        headers=auth(admin_token),
    )
    assert "cursor" in await expect_error(resp, 400)


async def test_detail_history_events_and_error_words(
    client: Client, admin_token: str, clock: FakeClock
) -> None:
    """Catches a detail without the host's per-app state, events not newest first, an error
    code shown as a bare number (or with its flag bits taken for the code), and a history
    that misses the grant or the failure."""
    await add_version(client, admin_token, NEW)
    await point(client, admin_token, NEW)
    mid = machine(42)
    await expect_error(await client.get(f"/api/v1/instances/{mid}", headers=auth(admin_token)), 404)
    host = Host(machine_id=mid, version=OLD)
    assert await check(client, host) == NEW
    clock.advance(minutes=1)
    assert (await client.post("/v1/update/", data=host.event(13, 1))).status == 200
    clock.advance(minutes=1)
    assert (await client.post("/v1/update/", data=host.event(3, 0, ERROR))).status == 200
    body = await get(client, admin_token, f"/api/v1/instances/{{{mid.upper()}}}")
    assert body["machine_id"] == mid
    (app,) = body["apps"]
    assert (app["status"], app["group"], app["granted_version"]) == ("error", "stable", NEW)
    assert app["last_error"] == {
        "code": 10,
        "base": 10,
        "text": "payload hash mismatch",
        "flags": [],
    }
    first, second = body["events"]
    assert (first["type"], first["result"], second["type"]) == (3, 0, 13)
    assert first["what"] == "update failed" and second["what"] == "download started"
    assert first["error"]["text"] == "payload hash mismatch"
    assert first["error"]["flags"] == ["non-official update server"]
    whats = [h["what"] for h in body["history"]]
    assert whats == ["error", "granted"], body["history"]
    assert body["history"][0]["error"]["base"] == 10


async def test_set_alias_then_find_the_host_by_it(client: Client, admin_token: str) -> None:
    """Catches an alias that is not stored, not searchable, or not in the activity log with
    its old and new values; and bad input that is stored anyway."""
    mid = machine(9)
    path = f"/api/v1/instances/{mid}"
    resp = await client.patch(path, json={"alias": "web-1"}, headers=auth(admin_token))
    await expect_error(resp, 404)
    assert await check(client, Host(machine_id=mid, version=NEW)) is None
    for bad, words in [
        ({"alias": 5}, "alias must be a string"),
        ({"name": "x"}, "unknown field 'name'"),
        ({}, "alias is required"),
        ({"alias": "x" * 256}, "at most 255"),
        ({"alias": "a\nb"}, "printable"),
    ]:
        resp = await client.patch(path, json=bad, headers=auth(admin_token))
        assert words in await expect_error(resp, 400)
    resp = await client.patch(path, json={"alias": " web-1 "}, headers=auth(admin_token))
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"machine_id": mid, "alias": "web-1", "previous": None}
    found = await walk(client, admin_token, q="web-1")
    assert [r["machine_id"] for r in found] == [mid]
    resp = await client.patch(path, json={"alias": None}, headers=auth(admin_token))
    assert (await resp.json())["previous"] == "web-1"
    assert await walk(client, admin_token, q="web-1") == []
    log = (await get(client, admin_token, "/api/v1/activity", action="alias"))["activity"]
    assert [(a["actor"], a["detail"]["old"], a["detail"]["new"]) for a in log] == [
        ("ops", {"alias": "web-1"}, {"alias": None}),
        ("ops", {"alias": None}, {"alias": "web-1"}),
    ]
    assert log[0]["group"] == "stable"
