"""/metrics after scripted sequences of checks and events (issue 10, item 1): each family's value,
through the real HTTP app on SQLite and PostgreSQL with the injected clock. Each test's
docstring names the wrong implementations it catches.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from nebula.metrics import Metrics
from nebula.store.db import create_engine, pool_usage, session_factory, transaction
from nebula.web.keys import READ_SESSIONS
from nebula.web.payloads import PayloadFileResponse
from nebula.web.status import COUNTS, MAX_VERSIONS_PER_GROUP, version_labels
from tests.factories import Host
from tests.test_rollout import (
    ERROR_HASH,
    MID,
    NEW,
    OLD,
    STABLE,
    Client,
    check,
    complete,
    hosts,
    machine,
    omaha,
    post,
    reboot_into,
    release,  # noqa: F401 (fixture)
    set_policy,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
FLEET = {"app": "flatcar", "group": "stable", "arch": "amd64", "channel": "stable"}
GROUP = {"group": "stable", "arch": "amd64"}


async def scrape(client: Client) -> Samples:
    """Every sample of a fresh scrape (the database-read gauges read anew, the holds too)."""
    counts = client.app[COUNTS]
    counts.at = counts.holds_at = 0.0  # they are otherwise read again only every few seconds
    assert (await client.get("/metrics")).status == 200
    # That scrape started reading the holds beside it; the next one shows them.
    assert counts.holds_task is not None
    await counts.holds_task
    resp = await client.get("/metrics")
    assert resp.status == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def instances(samples: Samples) -> dict[tuple[str, str], float]:
    """{(version, status): hosts} of stable amd64; every series must carry the fleet labels."""
    found = {}
    for labels, v in series(samples, "nebula_instances").items():
        d = dict(labels)
        assert {k: d[k] for k in FLEET} == FLEET, d
        found[(d["version"], d["status"])] = v
    return found


async def test_a_rollout_as_metrics_show_it(
    client: Client,
    admin_token: str,
    release: str,  # noqa: F811
) -> None:
    """One slot (max_concurrent 1): a completes, b fails (hash mismatch), c is granted, the
    operator pauses and d is held; then a resume with a failure gate of one host, c fails and
    the gate pauses the group; e leaves its version. Catches: instances without version or
    channel, or with a label set that stays after its last host left it; grants or failures
    without group and arch, failures without their base code; a progress ratio over the wrong
    total; a pause without its kind (or both kinds 1); holds not taken from the policy in
    force; a machine id in any label."""
    await set_policy(client, admin_token, max_concurrent=1)
    a, b, c, d = hosts(4)
    (e,) = hosts(1, start=4, version=MID)
    assert await check(client, a) == NEW
    assert await check(client, b) is None  # concurrency
    assert await check(client, e) is None
    assert await complete(client, a, NEW) is None
    assert await check(client, b) == NEW
    await omaha(client, b.event(13, 1))
    await omaha(client, b.event(3, 0, ERROR_HASH))
    assert await check(client, c) == NEW  # b's failure freed the slot
    await post(client, admin_token, f"{STABLE}/pause", reason="looking at b")
    assert await check(client, d) is None

    m = await scrape(client)
    assert instances(m) == {
        (NEW, "complete"): 1,
        (OLD, "error"): 1,
        (OLD, "granted"): 1,
        (OLD, "idle"): 1,
        (MID, "idle"): 1,
    }
    assert value(m, "nebula_updates_granted_total", **GROUP) == 3
    assert value(m, "nebula_update_failures_total", **GROUP, code="10") == 1
    assert value(m, "nebula_rollout_progress_ratio", **GROUP) == 1 / 5
    assert value(m, "nebula_rollout_paused", **GROUP, kind="operator") == 1
    assert value(m, "nebula_rollout_paused", **GROUP, kind="failure_gate") == 0
    assert value(m, "nebula_group_paused", **GROUP) == 1
    # d and e are behind and the pause holds them (d was told "paused", e "concurrency").
    assert reasons(m) == {"paused": 2}
    assert value(m, "nebula_policy_holds", group="beta", arch="amd64", reason="paused") is None

    await post(client, admin_token, f"{STABLE}/resume", reason="b was the CDN")
    await set_policy(client, admin_token, pause_on_failures=["1"])
    await omaha(client, c.event(3, 0, (1 << 28) | 9))
    assert await reboot_into(client, e, NEW) is None  # updated by other means
    m = await scrape(client)
    assert instances(m) == {
        (NEW, "complete"): 1,
        (OLD, "error"): 2,
        (OLD, "idle"): 1,
        (NEW, "idle"): 1,  # the MID series is gone, not 0
    }
    assert value(m, "nebula_update_failures_total", **GROUP, code="9") == 1
    assert value(m, "nebula_update_failures_total", **GROUP, code="10") == 1
    assert value(m, "nebula_rollout_progress_ratio", **GROUP) == 2 / 5
    assert value(m, "nebula_rollout_paused", **GROUP, kind="operator") == 0
    assert value(m, "nebula_rollout_paused", **GROUP, kind="failure_gate") == 1
    assert reasons(m) == {"paused": 1}  # d; b and c failed, they are not "held"
    assert value(m, "nebula_updates_granted_total", **GROUP) == 3

    ids = {h.machine_id for h in (a, b, c, d, e)}
    for name, labels in m:
        assert not {v for _, v in labels} & ids, name


def reasons(m: Samples) -> dict[str, float]:
    found = {}
    for labels, v in series(m, "nebula_policy_holds").items():
        d = dict(labels)
        if (d["group"], d["arch"]) == ("stable", "amd64"):
            found[d["reason"]] = v
    return found


async def test_http_durations_by_route_pattern(client: Client) -> None:
    """Two payload URLs of the same route are one series under the route's pattern; a path no
    route matches is "unmatched"; the Omaha route counts every POST. Catches a raw path (or a
    package id) as a label, which grows without bound."""
    for _ in range(3):
        await omaha(client, Host(machine_id=machine(1), version=OLD).check())
    for package in ("0" * 36, "1" * 36):
        assert (await client.get(f"/v1/payloads/{package}/x.gz")).status == 404
    assert (await client.get("/no/such/path/123")).status == 404
    m = await scrape(client)
    count = "nebula_http_request_duration_seconds_count"
    routes = {dict(k)["route"]: v for k, v in series(m, count).items()}
    assert routes["/v1/update/"] == 3
    assert routes["/v1/payloads/{package_id}/{name}"] == 2
    assert routes["unmatched"] == 1
    assert not [r for r in routes if "000000" in r or "no/such" in r]


async def test_pool_in_use_and_waiting(client: Client, db_url: str) -> None:
    """A transaction holding its connection shows as in use; with every connection of the
    pool taken, one more waits and shows as waiting, and no longer once it got one. Catches a
    gauge that reads the pool's size, or a waiting count that never goes back. (An engine of
    its own: the app's background tasks use the app's pool at their own times.)"""
    engine = create_engine(db_url, pool_size=1)
    pool = engine.sync_engine.pool
    limit = pool.size() + max(pool._max_overflow, 0)  # type: ignore[attr-defined]
    sessions = session_factory(engine, read_only=True)
    go = asyncio.Event()
    holding = 0

    async def hold() -> None:
        nonlocal holding
        async with transaction(sessions):
            holding += 1
            await go.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(limit + 1)]
    try:
        for _ in range(200):
            if holding == limit:
                break
            await asyncio.sleep(0.01)
        assert holding == limit
        await asyncio.sleep(0.05)  # the last one is queued at the pool
        assert pool_usage(engine) == (limit, 1)
        metrics = Metrics()
        metrics.observe_pool(*pool_usage(engine))
        text = metrics.render().decode()
        assert f"nebula_db_pool_connections_in_use {float(limit)}" in text
        assert "nebula_db_pool_waiting 1.0" in text
    finally:
        go.set()
        await asyncio.gather(*tasks)
    assert pool_usage(engine) == (0, 0)
    await engine.dispose()

    # The app's scrape reports its own pool: the transaction held here is in use.
    async with transaction(client.app[READ_SESSIONS]):
        m = await scrape(client)
    in_use = value(m, "nebula_db_pool_connections_in_use")
    assert in_use is not None and in_use >= 1
    assert value(m, "nebula_db_pool_waiting") is not None


async def test_checkin_batches(client: Client, release: str) -> None:  # noqa: F811
    """Steady-state check-ins are written in batches: their sizes and flush times reach the
    histograms. Catches batches that are not observed, or observed per host."""
    (a, b) = hosts(2, version=NEW)
    for host in (a, b):
        assert await check(client, host) is None  # recorded: not steady yet
    for host in (a, b):
        assert await check(client, host) is None  # steady: queued for the batch
    for _ in range(100):  # the writer flushes every checkin_interval (1 s)
        m = await scrape(client)
        if value(m, "nebula_checkin_batch_size_sum") == 2:
            break
        await asyncio.sleep(0.1)
    assert value(m, "nebula_checkin_batch_size_sum") == 2
    flushes = value(m, "nebula_checkin_flush_seconds_count")
    assert flushes == value(m, "nebula_checkin_batch_size_count")
    assert flushes is not None and 1 <= flushes <= 2


async def test_aborted_download_counts_bytes_sent(tmp_path: Path) -> None:
    """A client that reads a megabyte of a 256 MiB payload and goes away: the bytes counted
    are what went out, far less than the file (socket buffers hold a few MiB). Catches counting
    the Content-Length (or the range) when the answer starts."""
    size = 256 << 20
    path = tmp_path / "payload"
    with path.open("wb") as f:
        f.truncate(size)  # sparse: no disk used
    metrics = Metrics()
    app = web.Application()

    async def download(_request: web.Request) -> web.StreamResponse:
        return PayloadFileResponse(path, "0" * 64, metrics.payload_bytes.inc)

    app.router.add_get("/p", download)
    server = TestServer(app)
    await server.start_server()
    try:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n")
        got = 0
        while got < (1 << 20):
            got += len(await reader.read(65536))
        writer.transport.abort()
        sent = 0.0
        for _ in range(200):
            sent = metrics.payload_bytes._value.get()
            if sent:
                break
            await asyncio.sleep(0.05)
    finally:
        await server.close()
    assert (1 << 20) <= sent < size / 4, sent


def test_version_labels_are_bounded() -> None:
    """Per group, the MAX_VERSIONS_PER_GROUP versions with most hosts keep their name; rarer
    ones and what does not parse as a version are "other", no version "unknown". Catches a
    label per string a host sends (unbounded series) and a cap that drops hosts."""
    rows: list[tuple[str, str | None, int]] = [
        ("idle", f"{3000 + n}.0.0", 100 + n) for n in range(MAX_VERSIONS_PER_GROUP + 5)
    ]
    rows += [("idle", "not a version; DROP TABLE", 10_000), ("error", None, 3)]
    labels = version_labels(rows)
    named = {v for v in labels.values() if v not in ("other", "unknown")}
    assert named == {f"{3000 + n}.0.0" for n in range(5, MAX_VERSIONS_PER_GROUP + 5)}
    assert labels["3000.0.0"] == labels["not a version; DROP TABLE"] == "other"
    assert labels[None] == "unknown"
    assert set(labels) == {v for _, v, _ in rows}  # every host has a label
