"""Steady-state check-ins through the real app: answered from memory with nothing written inside
the request, last-seen times written by the batch (and at shutdown), and never a stale answer
after another process changed the host (PostgreSQL: two apps, each with its own cache, on one
database, hearing of each other's changes through the change feed)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from lxml import etree
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.store import db
from nebula.store.models import Event, Instance, InstanceApp
from nebula.web.app import create_app
from nebula.web.keys import SERVICE
from tests.conftest import FakeClock
from tests.factories import FLATCAR_APP_ID, Host, make_settings, make_token
from tests.statements import is_write, statements

OLD, NEW = "3815.2.0", "4152.2.3"
STABLE = "/api/v1/groups/stable"
AMD64 = {"arch": "amd64"}
Client = Any


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def add_version(client: Client, token: str, version: str) -> None:
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
    resp = await client.post("/api/v1/packages", json=body, headers=auth(token))
    assert resp.status == 201, await resp.text()
    resp = await client.put(
        "/api/v1/channels/stable", json={"arch": "amd64", "version": version}, headers=auth(token)
    )
    assert resp.status == 200, await resp.text()


async def check(client: Client, host: Host, **kwargs: Any) -> str | None:
    resp = await client.post("/v1/update/", data=host.check(**kwargs))
    assert resp.status == 200, await resp.text()
    uc = etree.fromstring(await resp.read()).find("app/updatecheck")
    assert uc is not None and uc.get("status") in ("ok", "noupdate")
    return None if uc.get("status") == "noupdate" else uc.find("manifest").get("version")  # type: ignore[union-attr]


def writes(engine: AsyncEngine) -> AbstractContextManager[list[str]]:
    """The INSERT/UPDATE/DELETE statements the engine runs inside the block."""
    return statements(engine, is_write)


async def started(
    aiohttp_client: Any, db_url: str, tmp_path: Path, key_file: Path, clock: FakeClock, **s: Any
) -> tuple[TestClient[Any, Any], AsyncEngine]:
    engine = db.create_engine(db_url)
    settings = make_settings(db_url, tmp_path, key_file, **s)
    client = await aiohttp_client(create_app(settings, engine=engine, clock=clock))
    return client, engine


async def last_seen(engine: AsyncEngine, machine_id: str) -> tuple[Any, ...]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(Instance.last_seen_at, Instance.ip, InstanceApp.last_check_at)
                .join(InstanceApp, InstanceApp.instance_id == Instance.id)
                .where(Instance.id == machine_id)
            )
        ).one()
    return tuple(row)


async def test_steady_check_in_writes_nothing_until_the_batch(
    db_url: str, tmp_path: Path, key_file: Path, clock: FakeClock, aiohttp_client: Any
) -> None:
    """A current host checking in again: no statement that writes runs in its request; its
    last-seen time reaches the database with the batch; the routine 3/2 is never logged, while
    a 3/2 naming a version is. Catches a hot path that writes per check (the upsert, the
    event row, last_check_at), a batch that never comes, and routine events stored."""
    client, engine = await started(
        aiohttp_client, db_url, tmp_path, key_file, clock, checkin_interval=0.2
    )
    token = await make_token(db_url)
    await add_version(client, token, NEW)
    host = Host(machine_id="5" * 32, version=NEW)
    assert await check(client, host, previous_version="0.0.0.0") is None  # first: recorded
    first = clock.now
    for _ in range(3):
        clock.advance(minutes=45)
        with writes(engine) as done:
            assert await check(client, host) is None
        assert done == [], done
    async with engine.connect() as conn:
        logged = (await conn.execute(select(Event.event_type, Event.previous_version))).all()
    # A fresh install's 3/2 is kept; the routine ones are not.
    assert [tuple(r) for r in logged] == [(3, "0.0.0.0")]

    for _ in range(100):  # the batch writes within its interval (bounded wait, not a timing)
        if (await last_seen(engine, host.machine_id))[0] == clock.now:
            break
        await asyncio.sleep(0.05)
    assert await last_seen(engine, host.machine_id) == (clock.now, "127.0.0.1", clock.now)
    assert clock.now != first
    await engine.dispose()


def _sample(text: str, line_start: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith(line_start + " ")]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


async def test_host_cache_hits_and_misses_are_in_the_metrics(
    db_url: str, tmp_path: Path, key_file: Path, clock: FakeClock, aiohttp_client: Any
) -> None:
    """Whether steady-state checks are answered from memory is visible to the operator: the
    first check of a host is a miss (read from the database), the next ones hits. Catches a
    counter never published, hits and misses swapped, or counts lost between scrapes."""
    client, engine = await started(aiohttp_client, db_url, tmp_path, key_file, clock)
    token = await make_token(db_url)
    await add_version(client, token, NEW)
    hosts = [Host(machine_id=f"{n:032x}", version=NEW) for n in (7, 8)]
    for host in hosts:
        assert await check(client, host) is None  # new host: written, then kept
    for _ in range(3):
        clock.advance(minutes=45)
        for host in hosts:
            assert await check(client, host) is None

    async def scrape() -> str:
        resp = await client.get("/metrics")
        assert resp.status == 200
        return await resp.text()

    text = await scrape()
    hits = _sample(text, 'nebula_host_cache_lookups_total{result="hit"}')
    misses = _sample(text, 'nebula_host_cache_lookups_total{result="miss"}')
    assert (hits, misses) == (6, 2), text
    assert _sample(text, "nebula_host_cache_hosts") == 2
    assert await check(client, hosts[0]) is None
    text = await scrape()  # the second scrape adds only what came since the first
    assert _sample(text, 'nebula_host_cache_lookups_total{result="hit"}') == 7, text
    await engine.dispose()


async def test_shutdown_flushes_pending_check_ins(
    aiohttp_client: Any, db_url: str, tmp_path: Path, key_file: Path, clock: FakeClock
) -> None:
    """With a batch interval longer than the test, only the shutdown can write the last-seen
    time. Catches a shutdown that drops what is pending."""
    engine = db.create_engine(db_url)
    settings = make_settings(db_url, tmp_path, key_file, checkin_interval=60)
    server = TestServer(create_app(settings, engine=engine, clock=clock))
    client: TestClient[Any, Any] = TestClient(server)
    await client.start_server()
    try:
        token = await make_token(db_url)
        await add_version(client, token, NEW)
        host = Host(machine_id="6" * 32, version=NEW)
        assert await check(client, host) is None
        clock.advance(minutes=45)
        assert await check(client, host) is None
        assert (await last_seen(engine, host.machine_id))[0] != clock.now
    finally:
        await client.close()  # SIGTERM's path: the app's cleanup runs
    assert (await last_seen(engine, host.machine_id))[0] == clock.now
    await engine.dispose()


# -- two processes on one PostgreSQL ---------------------------------------------------------------


@pytest.fixture
async def two(
    db_url: str, tmp_path: Path, key_file: Path, clock: FakeClock, aiohttp_client: Any
) -> AsyncIterator[tuple[Client, Client, str]]:
    """Two apps (as two processes would be) on one PostgreSQL database."""
    a = await aiohttp_client(create_app(make_settings(db_url, tmp_path, key_file), clock=clock))
    b = await aiohttp_client(create_app(make_settings(db_url, tmp_path, key_file), clock=clock))
    for c in (a, b):
        feed = c.server.app[SERVICE]._changes
        for _ in range(200):  # each listener connected (bounded wait)
            if feed.cache.enabled:
                break
            await asyncio.sleep(0.02)
        assert feed.cache.enabled
    yield a, b, await make_token(db_url)


async def heard(client: Client, machine_id: str) -> None:
    """Wait (bounded) until the app no longer holds a snapshot of the host."""
    cache = client.server.app[SERVICE]._hosts
    for _ in range(200):
        if cache.get(machine_id, FLATCAR_APP_ID) is None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{machine_id} still cached after another process changed it")


# Several processes share PostgreSQL only (SQLite serves one process).
ON_POSTGRES = pytest.mark.parametrize(
    "db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


@ON_POSTGRES
async def test_a_grant_made_elsewhere_is_not_answered_from_a_stale_snapshot(
    two: tuple[Client, Client, str],
) -> None:
    """A caches the host as idle (held by a pause); B grants it after a resume; the group is
    paused again; the host retries on A. A regrant is owed (a host that holds a grant keeps it
    through a pause); A's stale snapshot would say "paused". Catches a cache without the
    change feed, and a feed that does not reach other processes."""
    a, b, token = two
    await add_version(a, token, NEW)
    host = Host(machine_id="7" * 32, version=OLD)

    async def group(action: str) -> None:
        resp = await a.post(f"{STABLE}/{action}", params=AMD64, json={}, headers=auth(token))
        assert resp.status == 200

    await group("pause")
    assert await check(a, host) is None
    assert await check(a, host) is None  # answered from A's snapshot: idle, paused
    assert a.server.app[SERVICE]._hosts.get(host.machine_id, FLATCAR_APP_ID) is not None
    await group("resume")
    assert await check(b, host) == NEW  # granted by B
    await heard(a, host.machine_id)
    await group("pause")
    assert await check(a, host) == NEW  # the regrant, not a stale "paused"


@ON_POSTGRES
async def test_a_release_made_elsewhere_reaches_every_process(
    two: tuple[Client, Client, str],
) -> None:
    """A caches the host as held; B releases it; A must grant at the next check. Catches a
    hold change that only the process serving the admin call learns of."""
    a, b, token = two
    await add_version(a, token, NEW)
    host = Host(machine_id="8" * 32, version=NEW)
    assert await check(a, host) is None  # known
    resp = await b.post(f"/api/v1/instances/{host.machine_id}/hold", json={}, headers=auth(token))
    assert resp.status == 200
    host.version = OLD
    assert await check(a, host) is None  # held (and now cached by A as held)
    assert await check(a, host) is None
    resp = await b.post(
        f"/api/v1/instances/{host.machine_id}/release", json={}, headers=auth(token)
    )
    assert resp.status == 200
    await heard(a, host.machine_id)
    assert await check(a, host) == NEW


@ON_POSTGRES
async def test_a_catalog_change_reaches_other_processes_without_waiting_for_the_ttl(
    db_url: str, tmp_path: Path, key_file: Path, clock: FakeClock, aiohttp_client: Any
) -> None:
    """B keeps its catalog for an hour (cache_ttl); a release set through A must reach B at
    once, through the change feed's catalog channel. Catches a bump_stamp without NOTIFY, a
    feed that does not listen on it, and a cache that ignores it until its ttl."""
    settings = make_settings(db_url, tmp_path, key_file, cache_ttl=3600.0)
    a = await aiohttp_client(create_app(settings, clock=clock))
    b = await aiohttp_client(create_app(settings, clock=clock))
    for c in (a, b):
        feed = c.server.app[SERVICE]._changes
        for _ in range(200):
            if feed.cache.enabled:
                break
            await asyncio.sleep(0.02)
        assert feed.cache.enabled
    token = await make_token(db_url)
    assert await check(b, Host(machine_id="9" * 32, version=OLD)) is None  # B's catalog: no release
    await add_version(a, token, NEW)
    for n in range(200):  # bounded: the notification arrives at A's commit
        if await check(b, Host(machine_id=f"{n:032x}", version=OLD)) == NEW:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("B still answers from its old catalog")
