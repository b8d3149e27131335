"""Lost database connections on the hot path, without a ping before every transaction
(nebula.store.db: a connection is pinged only after sitting idle, a closed one is seen without a
round trip, and the Omaha service runs a read or an uncommitted transaction again on a fresh
connection). PostgreSQL only: it is the server that drops connections."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from lxml import etree
from sqlalchemy import event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.store import db
from nebula.store.models import Grant
from nebula.web.app import create_app
from nebula.web.keys import HOST_CACHE
from tests.conftest import PG_ADMIN_URL, FakeClock, _asyncpg_dsn
from tests.factories import Host, assert_status_counts_match, make_settings, make_token
from tests.web.test_steady_state import NEW, OLD, add_version, auth

pytestmark = pytest.mark.parametrize(
    "db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


async def _terminate_all(db_url: str) -> int:
    """Terminate every client connection to the database, and return once they are gone (so
    that the pool's sockets have seen the end): pg_terminate_backend only signals them."""
    name = make_url(db_url).database
    conn = await asyncpg.connect(_asyncpg_dsn(PG_ADMIN_URL))
    others = (
        "FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() "
        "AND backend_type = 'client backend'"
    )
    try:
        killed = len(await conn.fetch(f"SELECT pg_terminate_backend(pid) {others}", name))
        for _ in range(200):  # bounded
            if not await conn.fetchval(f"SELECT count(*) {others}", name):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)  # this event loop reads the ends of the pool's sockets
        return killed
    finally:
        await conn.close()


async def _app(aiohttp_client: Any, db_url: str, tmp_path: Path, key_file: Path) -> Any:
    engine = db.create_engine(db_url)
    settings = make_settings(db_url, tmp_path, key_file)
    client = await aiohttp_client(create_app(settings, engine=engine, clock=FakeClock()))
    client.engine = engine
    return client


async def test_connections_closed_by_the_server_are_not_handed_out(
    aiohttp_client: Any, db_url: str, tmp_path: Path, key_file: Path
) -> None:
    """Every pooled connection is terminated; the next admin read (which is not retried) must
    still succeed: the pool sees the closed connection at checkout. Catches checking out
    connections with no test at all (the read fails with a 503)."""
    client = await _app(aiohttp_client, db_url, tmp_path, key_file)
    token = await make_token(db_url)
    for _ in range(3):  # fill the pool with a few used connections
        assert (await client.get("/api/v1/groups", headers=auth(token))).status == 200
    assert await _terminate_all(db_url) >= 1
    for _ in range(3):
        resp = await client.get("/api/v1/groups", headers=auth(token))
        assert resp.status == 200, await resp.text()


def _die_once_at(engine: AsyncEngine, marker: str) -> list[str]:
    """The first statement containing `marker` finds its connection gone: the backend is
    terminated (by itself) just before the statement is sent. Returns the log of deaths."""
    died: list[str] = []

    def before(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if marker in statement and not died:
            died.append(statement)
            conn.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    return died


async def test_a_grant_whose_connection_dies_before_commit_is_made_once(
    aiohttp_client: Any, db_url: str, tmp_path: Path, key_file: Path
) -> None:
    """The connection dies at the group lock, inside the grant's transaction: the request is
    run again on a fresh connection and answered with the grant; one grant row, counts equal a
    recount. Catches no retry (503) and a retry that writes twice."""
    client = await _app(aiohttp_client, db_url, tmp_path, key_file)
    token = await make_token(db_url)
    host = Host(machine_id="c" * 32, version=OLD)
    # Known before the release, with new facts at the grant: its grant goes through the
    # transaction (a known host's grant with the facts it had is one statement, below).
    assert (await client.post("/v1/update/", data=host.check())).status == 200
    await add_version(client, token, NEW)
    died = _die_once_at(client.engine, "FOR SHARE")  # a grant in a group without limits
    resp = await client.post("/v1/update/", data=replace(host, oem="ami").check())
    assert resp.status == 200, await resp.text()
    assert died, "the injected fault never fired"
    manifest = etree.fromstring(await resp.read()).find("app/updatecheck/manifest")
    assert manifest is not None and manifest.get("version") == NEW
    async with client.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(Grant))).scalar() == 1
    await assert_status_counts_match(db_url, by_version=True)


async def test_a_first_check_whose_connection_dies_is_granted_once(
    aiohttp_client: Any, db_url: str, tmp_path: Path, key_file: Path
) -> None:
    """A new host's first check-in is one statement; its connection dies just before it is
    sent: run again on a fresh connection, answered with the grant, one grant row, counts
    equal a recount. Catches no retry (503) and a retry that writes twice."""
    client = await _app(aiohttp_client, db_url, tmp_path, key_file)
    token = await make_token(db_url)
    await add_version(client, token, NEW)
    died = _die_once_at(client.engine, "nebula_grant_gate")
    resp = await client.post("/v1/update/", data=Host(machine_id="e" * 32, version=OLD).check())
    assert resp.status == 200, await resp.text()
    assert died, "the injected fault never fired"
    manifest = etree.fromstring(await resp.read()).find("app/updatecheck/manifest")
    assert manifest is not None and manifest.get("version") == NEW
    async with client.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(Grant))).scalar() == 1
    await assert_status_counts_match(db_url, by_version=True)


async def test_a_known_hosts_grant_whose_connection_dies_is_granted_once(
    aiohttp_client: Any, db_url: str, tmp_path: Path, key_file: Path
) -> None:
    """A known host's grant is one statement; its connection dies just before it is sent: run
    again on a fresh connection, answered with the grant, one grant row, counts equal a
    recount. Catches no retry (503) and a retry that writes twice."""
    client = await _app(aiohttp_client, db_url, tmp_path, key_file)
    token = await make_token(db_url)
    host = Host(machine_id="f" * 32, version=OLD)
    assert (await client.post("/v1/update/", data=host.check())).status == 200
    await add_version(client, token, NEW)
    died = _die_once_at(client.engine, "UPDATE instance_apps SET")
    resp = await client.post("/v1/update/", data=host.check())
    assert resp.status == 200, await resp.text()
    assert died and "nebula_grant_gate" in died[0], died
    manifest = etree.fromstring(await resp.read()).find("app/updatecheck/manifest")
    assert manifest is not None and manifest.get("version") == NEW
    async with client.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(Grant))).scalar() == 1
    await assert_status_counts_match(db_url, by_version=True)


async def test_a_host_read_whose_connection_dies_is_read_again(
    aiohttp_client: Any, db_url: str, tmp_path: Path, key_file: Path
) -> None:
    """A known host this process has no snapshot of is read from the database; that read's
    connection dies. Catches a read that is not retried (503)."""
    client = await _app(aiohttp_client, db_url, tmp_path, key_file)
    host = Host(machine_id="d" * 32, version=OLD)
    assert (await client.post("/v1/update/", data=host.check())).status == 200
    client.server.app[HOST_CACHE].evict((host.machine_id,))
    died = _die_once_at(client.engine, "FROM instance_apps JOIN instances")
    resp = await client.post("/v1/update/", data=host.check())
    assert resp.status == 200, await resp.text()
    assert died, "the injected fault never fired"


def _deadlock_once_at(engine: AsyncEngine, marker: str) -> list[str]:
    """The first statement containing `marker` fails as a deadlock's victim would: PostgreSQL
    raises SQLSTATE 40P01 (from a DO block sent just before it) and rolls the transaction back.
    Returns the log of failures."""
    failed: list[str] = []

    def before(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if marker in statement and not failed:
            failed.append(statement)
            conn.exec_driver_sql(
                "DO $$ BEGIN RAISE EXCEPTION 'injected deadlock' "
                "USING ERRCODE = 'deadlock_detected'; END $$"
            )

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    return failed


@pytest.mark.parametrize("known", [False, True], ids=["transaction", "one-statement"])
async def test_a_grant_rolled_back_as_a_deadlocks_victim_is_run_again(
    aiohttp_client: Any, db_url: str, tmp_path: Path, key_file: Path, known: bool
) -> None:
    """PostgreSQL picks the grant as a deadlock's victim and rolls it back. Catches a 500 to
    the host (a lock-order slip elsewhere would show as failed update checks) and a retry that
    writes twice: one grant row, counts equal a recount. Both ways a grant is written: the
    general transaction (the host reports a new OEM, which the one statement leaves to it) and
    the known host's one statement."""
    client = await _app(aiohttp_client, db_url, tmp_path, key_file)
    token = await make_token(db_url)
    host = Host(machine_id="9" * 32, version=OLD)
    assert (await client.post("/v1/update/", data=host.check())).status == 200
    await add_version(client, token, NEW)
    if not known:
        host = replace(host, oem="ami")
    failed = _deadlock_once_at(client.engine, "FOR SHARE" if not known else "nebula_grant_gate")
    resp = await client.post("/v1/update/", data=host.check())
    assert resp.status == 200, await resp.text()
    assert failed, "the injected fault never fired"
    manifest = etree.fromstring(await resp.read()).find("app/updatecheck/manifest")
    assert manifest is not None and manifest.get("version") == NEW
    async with client.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(Grant))).scalar() == 1
    await assert_status_counts_match(db_url, by_version=True)
