"""A Nebula killed under load, and a PostgreSQL that goes away under load (slow suite).

- SIGKILL of a real `nebula serve --workers 1` while hosts update through it (PostgreSQL):
  after a restart every event and every grant a host was answered `ok` for is in the database,
  and the maintained group counts equal a recount of the hosts.
- PostgreSQL of the test's own (tests/slow/ownpg.py) stopped while hosts check in: they get
  503 with Retry-After, never a 500; once it is started again the same Nebula process answers
  200 again by itself.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from lxml import etree
from sqlalchemy import text

from nebula.store import db
from tests.conftest import PgServer
from tests.factories import Host, assert_status_counts_match, make_token, payload_file
from tests.slow.fleet import Fleet
from tests.slow.ownpg import OwnPostgres
from tests.test_service import MAIN, NEW, OLD, point, upload

pytestmark = pytest.mark.slow

XML = {"Content-Type": "text/xml"}


@pytest.fixture
async def pg_url(pg_server: PgServer | None) -> AsyncIterator[str]:
    if pg_server is None:
        pytest.skip("PostgreSQL unavailable (set NEBULA_TEST_PG)")
    url = await pg_server.new_database()
    yield url
    await pg_server.drop(url)


@dataclass
class Acked:
    """What the hosts were told `ok` about: (machine id, event type, result) and grants."""

    events: list[tuple[str, int, int]]
    grants: list[str]
    statuses: list[int | str]


async def _post(http: aiohttp.ClientSession, base: str, body: bytes) -> tuple[int, bytes]:
    async with http.post(f"{base}/v1/update/", data=body, headers=XML) as resp:
        return resp.status, await resp.read()


async def _update_once(http: aiohttp.ClientSession, base: str, host: Host, acked: Acked) -> None:
    """One host's update as update_engine drives it; stops at the first request not answered
    (the server is gone). Only what was answered 200 counts as acknowledged."""
    try:
        status, body = await _post(http, base, host.check())
        acked.statuses.append(status)
        if status != 200:
            return
        check = etree.fromstring(body).find("app/updatecheck")
        if check is None or check.get("status") != "ok":
            return
        acked.grants.append(host.machine_id)
        for event_type, result in ((13, 1), (14, 1), (3, 1)):
            status, body = await _post(http, base, host.event(event_type, result))
            acked.statuses.append(status)
            if status != 200:
                return
            assert etree.fromstring(body).find("app/event").get("status") == "ok"
            acked.events.append((host.machine_id, event_type, result))
    except (aiohttp.ClientError, OSError) as exc:
        acked.statuses.append(type(exc).__name__)


async def test_sigkill_under_load_loses_nothing_answered_ok(
    pg_url: str, tmp_path: Path, key_file: Path, signing_key: RSAPrivateKey
) -> None:
    """A server that answered before its transaction committed (or committed grant and event
    apart, or counted outside the transaction) would lose an acknowledged event or leave the
    counts off a recount after the kill."""
    payloads = tmp_path / "payloads"
    fleet = Fleet(1, db_url=pg_url, payload_dir=payloads, key_file=key_file, workdir=tmp_path / "w")
    async with fleet:
        (base,) = fleet.bases
        token = await make_token(pg_url)
        main = payload_file(tmp_path / "up", MAIN, signing_key, size=20_000)
        async with aiohttp.ClientSession(base_url=base) as http:
            await upload(http, token, NEW, [main])
            await point(http, token, NEW)

        acked = Acked([], [], [])
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:

            async def host_loop(worker: int) -> None:
                n = 0
                while True:
                    await _update_once(http, base, Host(f"{worker:04x}{n:028x}", OLD), acked)
                    if acked.statuses and not isinstance(acked.statuses[-1], int):
                        return  # the server is gone
                    n += 1

            loops = [asyncio.create_task(host_loop(w)) for w in range(8)]
            # Kill it once it is well into the load.
            deadline = time.monotonic() + 30
            while len(acked.events) < 150 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            server = fleet.servers[0]
            os.kill(server.proc.pid, signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*loops), 30)
            assert server.proc.wait(10) == -signal.SIGKILL
        assert len(acked.events) >= 150, f"too little load before the kill: {acked.statuses[-5:]}"
        assert 500 not in acked.statuses

        # Restart on the same database: it starts, and the state is whole.
        await fleet.start()
        (base,) = fleet.bases

    engine = db.create_engine(pg_url)
    try:
        async with engine.connect() as conn:
            stored = set(
                (
                    await conn.execute(
                        text("SELECT instance_id, event_type, event_result FROM events")
                    )
                )
                .tuples()
                .all()
            )
            granted = dict(
                (await conn.execute(text("SELECT instance_id, granted_version FROM instance_apps")))
                .tuples()
                .all()
            )
            grant_rows = {
                m for (m,) in (await conn.execute(text("SELECT instance_id FROM grants"))).tuples()
            }
    finally:
        await engine.dispose()
    cut = [s for s in acked.statuses if not isinstance(s, int)]
    print(
        f"acknowledged before the kill: {len(acked.grants)} grants, {len(acked.events)} events;"
        f" requests cut by it: {len(cut)}"
    )
    lost = [e for e in acked.events if e not in stored]
    assert lost == [], f"{len(lost)} events answered ok are not in the database: {lost[:5]}"
    assert [m for m in acked.grants if granted.get(m) != NEW] == []
    assert set(acked.grants) <= grant_rows
    await assert_status_counts_match(pg_url, by_version=True)


async def test_postgres_stopping_under_load_gives_503_then_recovers_without_restart(
    tmp_path: Path, key_file: Path
) -> None:
    """A server that answered 500 (or a traceback) while the database was gone, sent no
    Retry-After, or needed a restart to reconnect, fails here."""
    pg = OwnPostgres()
    try:
        pg.init()
        fleet = Fleet(
            1,
            db_url=pg.url,
            payload_dir=tmp_path / "payloads",
            key_file=key_file,
            workdir=tmp_path / "w",
            pool_size=4,
        )
        async with fleet:
            (base,) = fleet.bases
            pid = fleet.servers[0].proc.pid
            seen: list[tuple[int, str | None]] = []
            timeout = aiohttp.ClientTimeout(total=15)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                stop = asyncio.Event()

                async def load(worker: int) -> None:
                    n = 0
                    while not stop.is_set():
                        # New hosts and events: each needs the database (no cached answer).
                        host = Host(f"{worker:04x}{n:028x}", OLD)
                        for body in (host.check(), host.event(13, 0, 9)):
                            async with http.post(f"{base}/v1/update/", data=body, headers=XML) as r:
                                text_ = await r.text()
                                seen.append((r.status, r.headers.get("Retry-After")))
                                assert "Traceback" not in text_
                        n += 1
                        await asyncio.sleep(0.01)

                loops = [asyncio.create_task(load(w)) for w in range(4)]
                await asyncio.sleep(1.0)
                assert seen and {s for s, _ in seen} == {200}, seen[-5:]
                pg.stop()
                stopped_at = len(seen)
                await asyncio.sleep(3.0)
                async with http.get(f"{base}/readyz") as r:
                    assert r.status == 503
                during = seen[stopped_at:]
                pg.start()
                # Back by itself: 200 again within a bounded number of tries, same process.
                deadline = time.monotonic() + 30
                recovered_at = None
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                    tail = seen[-8:]
                    if len(seen) > stopped_at + len(during) + 8 and all(s == 200 for s, _ in tail):
                        recovered_at = len(seen)
                        break
                stop.set()
                await asyncio.gather(*loops)
                async with http.get(f"{base}/readyz") as r:
                    assert r.status == 200
            assert fleet.servers[0].proc.pid == pid and fleet.servers[0].proc.poll() is None
        statuses = {s for s, _ in seen}
        assert statuses <= {200, 503}, f"statuses seen: {statuses}\n{fleet.logs()}"
        unavailable = [retry for s, retry in during if s == 503]
        assert unavailable, f"no 503 while PostgreSQL was down: {during[:10]}"
        assert all(retry is not None and retry.isdigit() for retry in unavailable)
        assert recovered_at is not None, f"no recovery: {seen[-10:]}\n{fleet.logs()}"
        # One line per 10 s of the outage says it; hundreds of identical ones bury the log.
        outage_lines = fleet.logs().count("database unavailable on")
        assert 1 <= outage_lines <= 3, fleet.logs()[-3000:]
        print(
            f"while stopped: {len(during)} answers, {len(unavailable)} of them 503; "
            f"{len(seen)} requests in all"
        )
    finally:
        log = pg.log()
        pg.destroy()
        print(log)
