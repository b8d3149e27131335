"""The fleet's logs in the admin API (nebula.web.eventlog): events hosts sent and the activity
log across groups, filtered and in keyset pages, newest first.

Each test runs against a real app on a fresh database of each backend.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import FakeClock
from tests.factories import Host
from tests.web.test_rollout_api import (
    ERROR,
    NEW,
    OLD,
    auth,
    check,
    expect_error,
    machine,
    release,  # noqa: F401 (a fixture, used by name)
)

Client = Any


async def pages(client: Client, token: str, path: str, key: str, **params: Any) -> list[Any]:
    rows: list[Any] = []
    cursor = None
    for _ in range(100):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        resp = await client.get(path, params=query, headers=auth(token))
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        rows += body[key]
        cursor = body["next"]
        if cursor is None:
            return rows
    raise AssertionError("more than 100 pages")


@pytest.mark.usefixtures("release")
async def test_events_filtered_and_paged(
    client: Client, admin_token: str, clock: FakeClock
) -> None:
    """Catches a filter ignored, events not newest first (or a tie in time that loses or
    repeats one across pages), and a time range off by its bounds."""
    a, b = Host(machine_id=machine(1), version=OLD), Host(machine_id=machine(2), version=OLD)
    for host in (a, b):
        assert await check(client, host) == NEW
    start = clock()
    for host in (a, b):  # both at the same moment: ties broken by id
        assert (await client.post("/v1/update/", data=host.event(13, 1))).status == 200
    clock.advance(minutes=5)
    middle = clock()
    assert (await client.post("/v1/update/", data=a.event(14, 1))).status == 200
    assert (await client.post("/v1/update/", data=b.event(3, 0, ERROR))).status == 200
    every = await pages(client, admin_token, "/api/v1/events", "events", limit=1)
    assert len(every) == 4 and len({e["id"] for e in every}) == 4
    assert [e["at"] for e in every] == sorted((e["at"] for e in every), reverse=True)
    ids = [e["id"] for e in every]
    assert ids == sorted(ids, reverse=True)  # equal times: the later row first
    oldest = await pages(client, admin_token, "/api/v1/events", "events", limit=3, order="asc")
    assert [e["id"] for e in oldest] == ids[::-1]

    async def found(**params: Any) -> list[tuple[str, int, int]]:
        rows = await pages(client, admin_token, "/api/v1/events", "events", limit=2, **params)
        return [(e["machine_id"][-1], e["type"], e["result"]) for e in rows]

    assert await found(host=machine(1)) == [("1", 14, 1), ("1", 13, 1)]
    assert await found(host="{" + machine(2).upper() + "}") == [("2", 3, 0), ("2", 13, 1)]
    assert await found(type="13") == [("2", 13, 1), ("1", 13, 1)]
    assert await found(result="0") == [("2", 3, 0)]
    assert await found(group="stable", arch="amd64") == await found()
    assert await found(group="beta", arch="amd64") == []
    assert await found(since=middle.isoformat()) == [("2", 3, 0), ("1", 14, 1)]
    assert await found(until=middle.isoformat()) == [("2", 13, 1), ("1", 13, 1)]
    assert await found(since=start.isoformat(), until=middle.isoformat(), type="14") == []
    failed = (await pages(client, admin_token, "/api/v1/events", "events", result="0"))[0]
    assert failed["error"]["text"] == "payload hash mismatch"
    assert failed["group"] == "stable" and failed["what"] == "update failed"


@pytest.mark.parametrize(
    ("path", "params", "status", "words"),
    [
        ("/api/v1/events", {"type": "x"}, 400, "type must be"),
        ("/api/v1/events", {"result": "-1"}, 400, "result must be"),
        ("/api/v1/events", {"since": "soon"}, 400, "since"),
        ("/api/v1/events", {"cursor": "e30"}, 400, "cursor"),
        ("/api/v1/events", {"group": "nosuch"}, 404, "no group"),
        ("/api/v1/events", {"app": "nosuch"}, 404, "no application"),
        ("/api/v1/events", {"sort": "id"}, 400, "sort"),
        ("/api/v1/activity", {"until": "never"}, 400, "until"),
        ("/api/v1/activity", {"group": "nosuch"}, 404, "no group"),
        ("/api/v1/activity", {"limit": "0"}, 400, "limit"),
        ("/api/v1/activity", {"order": "up"}, 400, "order"),
    ],
)
async def test_bad_log_requests(
    client: Client, admin_token: str, path: str, params: dict[str, str], status: int, words: str
) -> None:
    resp = await client.get(path, params=params, headers=auth(admin_token))
    assert words in await expect_error(resp, status)


async def test_activity_across_groups(
    client: Client, admin_token: str, viewer_token: str, clock: FakeClock
) -> None:
    """Catches a fleet-wide log that shows one group only (or none of the entries that belong
    to no group), filters ignored, and pages that lose entries."""
    for group, arch in (("stable", "amd64"), ("beta", "arm64"), ("stable", "arm64")):
        resp = await client.post(
            f"/api/v1/groups/{group}/pause",
            params={"arch": arch},
            json={"reason": f"{group} {arch}"},
            headers=auth(admin_token),
        )
        assert resp.status == 200, await resp.text()
        clock.advance(seconds=1)
    resp = await client.post("/api/v1/tokens", json={"name": "ci"}, headers=auth(admin_token))
    assert resp.status == 201
    every = await pages(client, viewer_token, "/api/v1/activity", "activity", limit=1)
    assert [(a["action"], a["group"]) for a in every] == [
        ("token", None),
        ("pause", "stable"),
        ("pause", "beta"),
        ("pause", "stable"),
    ]
    assert all(a["actor"] == "ops" for a in every)
    assert "stable arm64" in every[1]["message"]
    only = await pages(
        client, viewer_token, "/api/v1/activity", "activity", group="beta", arch="arm64"
    )
    assert [a["message"] for a in only] == [every[2]["message"]]
    paused = await pages(client, viewer_token, "/api/v1/activity", "activity", action="pause")
    assert len(paused) == 3
    assert await pages(client, viewer_token, "/api/v1/activity", "activity", actor="nebula") == []
    # Pauses 3, 2 and 1 s before now, the token now: "since 2s" includes its bound.
    late = await pages(client, viewer_token, "/api/v1/activity", "activity", since="2s")
    assert [a["action"] for a in late] == ["token", "pause", "pause"]
