"""Fault injection (slow suite): lost database connections and a database that refuses them.

A host must never see a 500 or a traceback: while PostgreSQL is unreachable the Omaha endpoint
answers 503 with Retry-After (update_engine backs off on it), and once it is back every request
succeeds again, with no state lost or half-written.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from nebula.store import db
from nebula.store.models import Event, InstanceApp
from tests.conftest import PG_ADMIN_URL, _asyncpg_dsn
from tests.factories import Host

pytestmark = pytest.mark.slow


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(PG_ADMIN_URL))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _kill_connections(name: str) -> None:
    await _admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    )


async def _counts(db_url: str) -> tuple[int, int]:
    engine = db.create_engine(db_url)
    try:
        async with engine.connect() as conn:
            states = (await conn.execute(select(func.count()).select_from(InstanceApp))).scalar()
            events = (await conn.execute(select(func.count()).select_from(Event))).scalar()
            return int(states or 0), int(events or 0)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_connections_killed_under_load_recover(client: Any, db_url: str) -> None:
    name = make_url(db_url).database
    assert name is not None
    statuses: list[int] = []
    for round_ in range(5):
        for i in range(20):
            host = Host(machine_id=f"{round_:02d}{i:030d}")
            resp = await client.post("/v1/update/", data=host.check())
            statuses.append(resp.status)
            assert "Traceback" not in await resp.text()
        await _kill_connections(name)
    # pool_pre_ping replaces killed connections: nothing may fail, let alone with a 500.
    assert set(statuses) == {200}, statuses
    # A state row per host; their routine 3/2 events are counted, not stored.
    assert await _counts(db_url) == (100, 0)


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_database_refusing_connections_gives_503_then_recovers(
    client: Any, db_url: str
) -> None:
    name = make_url(db_url).database
    host = Host(machine_id="a" * 32)
    assert (await client.post("/v1/update/", data=host.check())).status == 200
    await _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        await _kill_connections(name)
        for _ in range(3):
            resp = await client.post("/v1/update/", data=host.event(13, 1))
            assert resp.status == 503
            assert resp.headers.get("Retry-After")
            assert "Traceback" not in await resp.text()
        ready = await client.get("/readyz")
        assert ready.status == 503
    finally:
        await _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    assert (await client.post("/v1/update/", data=host.check())).status == 200
    assert (await client.get("/readyz")).status == 200
    # One state row; the checks' routine 3/2 events are not stored, and the refused 13/1 events
    # left nothing behind.
    assert await _counts(db_url) == (1, 0)
