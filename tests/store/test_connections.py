"""Lost database connections on the hot path, without a ping before every transaction
(nebula.store.db: a connection is pinged only after sitting idle, a closed one is seen without a
round trip, and the Omaha service runs a read or an uncommitted transaction again on a fresh
connection). PostgreSQL only: it is the server that drops connections."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
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


# The faults injected just before a statement is sent: its backend terminated (by itself), or
# PostgreSQL raising SQLSTATE 40P01 from a DO block and rolling the transaction back, as it
# does to a deadlock's victim.
_LOST = "SELECT pg_terminate_backend(pg_backend_pid())"
_DEADLOCK = (
    "DO $$ BEGIN RAISE EXCEPTION 'injected deadlock' USING ERRCODE = 'deadlock_detected'; END $$"
)


def _fail_once_at(engine: AsyncEngine, marker: str, fault: str = _LOST) -> list[str]:
    """The first statement containing `marker` meets `fault` just before it is sent. Returns
    the log of failed statements."""
    failed: list[str] = []

    def before(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if marker in statement and not failed:
            failed.append(statement)
            conn.exec_driver_sql(fault)

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    return failed


@dataclass(frozen=True)
class _GrantPath:
    """One way a grant is written, and the statement of it a fault is injected at."""

    known: bool  # the host checked in before the release
    new_oem: bool  # it reports a new OEM at the grant, which the one statement leaves alone
    marker: str
    also: str = ""  # what else the failed statement must hold (to be the one meant)


_GRANT_PATHS = {
    # The general transaction; the fault at its group lock (a group without limits).
    "transaction": _GrantPath(known=True, new_oem=True, marker="FOR SHARE"),
    # A new host's first check-in: one statement.
    "first-check": _GrantPath(known=False, new_oem=False, marker="nebula_grant_gate"),
    # A known host's grant with the facts it had: one statement.
    "known-grant": _GrantPath(
        known=True, new_oem=False, marker="nebula_grant_gate", also="UPDATE instance_apps SET"
    ),
}


@pytest.mark.parametrize("fault", [_LOST, _DEADLOCK], ids=["connection-lost", "deadlock"])
@pytest.mark.parametrize("path", list(_GRANT_PATHS))
async def test_a_grant_whose_database_fails_once_is_made_once(
    aiohttp_client: Any, db_url: str, tmp_path: Path, key_file: Path, path: str, fault: str
) -> None:
    """Each way a grant is written meets, once, a connection that turns out to be gone, or
    PostgreSQL picking it as a deadlock's victim: run again (on a fresh connection), answered
    with the grant, one grant row, counts equal a recount. Catches no retry (a 503 or a 500 to
    the host: a lock-order slip elsewhere would show as failed update checks) and a retry that
    writes twice."""
    way = _GRANT_PATHS[path]
    client = await _app(aiohttp_client, db_url, tmp_path, key_file)
    token = await make_token(db_url)
    host = Host(machine_id="9" * 32, version=OLD)
    if way.known:
        assert (await client.post("/v1/update/", data=host.check())).status == 200
    await add_version(client, token, NEW)
    if way.new_oem:
        host = replace(host, oem="ami")
    failed = _fail_once_at(client.engine, way.marker, fault)
    resp = await client.post("/v1/update/", data=host.check())
    assert resp.status == 200, await resp.text()
    assert failed, "the injected fault never fired"
    assert way.also in failed[0], failed
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
    died = _fail_once_at(client.engine, "FROM instance_apps JOIN instances")
    resp = await client.post("/v1/update/", data=host.check())
    assert resp.status == 200, await resp.text()
    assert died, "the injected fault never fired"
