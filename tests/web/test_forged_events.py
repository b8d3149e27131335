"""Forged, repeated and out-of-order events through the real HTTP handler, as one table.

Each row puts a host where it needs to be with real requests (a grant from an update check,
the events update_engine sends), then sends the row's requests and checks:

- every answer has the row's HTTP status (never a 500);
- the host's status and granted version, and the rows of `grants`, `failures` and
  `completions`, are what the row says (only real progress moves them);
- the maintained status counts equal a recount of the hosts (assert_status_counts_match);
- sending the row's requests again changes no state: every host, count, grant, failure and
  completion row is as before, and the event log grows by just what it grew by the first time
  (it is a log of what hosts sent, so a repeat is logged again, and moves nothing).

Runs on SQLite and PostgreSQL. A server that let a late 13/1 move a downloaded host back, counted
a repeated failure or completion twice, granted again on a second IP, or stored an error code
it cannot represent, fails a row here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.web.app import create_app
from tests.conftest import FakeClock
from tests.factories import Host, assert_status_counts_match, make_settings, payload_file
from tests.test_service import MAIN, NEW, NEW_BOOT, NEWER, OLD, SELF_HOSTED, point, upload

MACHINE = "f0" * 16
IP_A, IP_B = "192.0.2.10", "198.51.100.20"
STATE_TABLES = ("instances", "instance_apps", "status_counts", "grants", "failures", "completions")

Step = Callable[[Host], bytes]


def check(h: Host) -> bytes:
    return h.check()


def ev(event_type: int, result: int, code: int | None = None) -> Step:
    return lambda h: h.event(event_type, result, code)


def raw_event(attrs: str) -> Step:
    """An event-only request whose <event> carries `attrs` as written (absurd values)."""

    def build(h: Host) -> bytes:
        body = h.event(3, 0, 7)
        return body.replace(b'eventtype="3" eventresult="0" errorcode="7"', attrs.encode())

    return build


def reboot_into(version: str) -> Step:
    """The first check after booting into `version`: it names the old one (3/2 previousversion)."""

    def build(h: Host) -> bytes:
        h.version, h.boot_id = version, NEW_BOOT
        return h.check(previous_version=OLD)

    return build


GRANTED = [check]
# Checked once on the target already: told noupdate, never granted anything.
IDLE: Step = lambda h: Host(h.machine_id, version=NEW).check()  # noqa: E731
INSTALLED = [check, ev(13, 1), ev(14, 1), ev(3, 1)]


@dataclass
class Row:
    name: str
    setup: list[Step]
    attack: list[Step]
    statuses: list[int]  # HTTP status of each attack request
    status: str  # the host's update status after the attack
    granted: str | None
    grants: int
    failures: int
    completions: int
    # Which address each attack request comes from (default IP_A); the setup is from IP_A.
    ips: list[str] = field(default_factory=list)
    error_code: int | None = None  # the host's last_error_code after the attack


ROWS = [
    Row("13/1 from a host never granted", [], [ev(13, 1)], [200], "new", None, 0, 0, 0),
    Row("14/1 from a host never granted", [], [ev(14, 1)], [200], "new", None, 0, 0, 0),
    Row("3/1 from a host never granted", [], [ev(3, 1)], [200], "new", None, 0, 0, 0),
    Row(
        "3/0 error from a host never granted",
        [IDLE],
        [ev(3, 0, 9 | SELF_HOSTED)],
        [200],
        "idle",
        None,
        0,
        0,
        0,
    ),
    Row(
        "3/0 rollback from an idle host",
        [IDLE],
        [ev(3, 0, 44 | SELF_HOSTED)],
        [200],
        "idle",
        None,
        0,
        0,
        0,
    ),
    Row(
        "claims the new version, never granted",
        [IDLE],
        [reboot_into(NEW)],
        [200],
        "idle",
        None,
        0,
        0,
        0,
    ),
    # A 13/1 after 14/1 is what a restarted download sends: the host is downloading again.
    Row("14 before 13", GRANTED, [ev(14, 1), ev(13, 1)], [200, 200], "downloading", NEW, 1, 0, 0),
    Row("13 after 3/1", INSTALLED, [ev(13, 1), ev(14, 1)], [200, 200], "installed", NEW, 1, 0, 0),
    Row(
        "3/1 twice",
        [*GRANTED, ev(13, 1), ev(14, 1)],
        [ev(3, 1), ev(3, 1)],
        [200, 200],
        "installed",
        NEW,
        1,
        0,
        0,
    ),
    Row(
        "3/2 with previousversion twice",
        INSTALLED,
        [reboot_into(NEW), reboot_into(NEW)],
        [200, 200],
        "complete",
        NEW,
        1,
        0,
        1,
    ),
    Row(
        "completion of a version nobody granted",
        INSTALLED,
        [reboot_into(NEWER)],
        [200],
        "installed",
        NEW,
        1,
        0,
        0,
    ),
    Row(
        "error after completion",
        [*INSTALLED, reboot_into(NEW)],
        [ev(3, 0, 9 | SELF_HOSTED)],
        [200],
        "complete",
        NEW,
        1,
        0,
        1,
    ),
    Row(
        "error twice",
        GRANTED,
        [ev(13, 0, 9 | SELF_HOSTED), ev(13, 0, 10 | SELF_HOSTED)],
        [200, 200],
        "error",
        NEW,
        1,
        1,
        0,
        error_code=9,
    ),
    Row(
        "one machine id from a second IP, checking",
        GRANTED,
        [check],
        [200],
        "granted",
        NEW,
        1,
        0,
        0,
        ips=[IP_B],
    ),
    Row(
        "one machine id from two IPs, events",
        GRANTED,
        [ev(13, 1), ev(14, 1)],
        [200, 200],
        "downloaded",
        NEW,
        1,
        0,
        0,
        ips=[IP_B, IP_A],
    ),
    Row(
        "error code -1 (printed signed)",
        GRANTED,
        [ev(3, 0, -1)],
        [200],
        "error",
        NEW,
        1,
        1,
        0,
        error_code=0x0FFFFFFF,
    ),
    Row(
        "error code -2^31",
        GRANTED,
        [ev(3, 0, -(1 << 31))],
        [200],
        "error",
        NEW,
        1,
        1,
        0,
        error_code=0,
    ),
    Row("error code 2^40", GRANTED, [ev(3, 0, 1 << 40)], [400], "granted", NEW, 1, 0, 0),
    Row("error code -2^31-1", GRANTED, [ev(3, 0, -(1 << 31) - 1)], [400], "granted", NEW, 1, 0, 0),
    Row(
        "error code not a number",
        GRANTED,
        [raw_event('eventtype="3" eventresult="0" errorcode="x9"')],
        [400],
        "granted",
        NEW,
        1,
        0,
        0,
    ),
    Row(
        "error code empty",
        GRANTED,
        [raw_event('eventtype="3" eventresult="0" errorcode=""')],
        [400],
        "granted",
        NEW,
        1,
        0,
        0,
    ),
    Row(
        "error code a float",
        GRANTED,
        [raw_event('eventtype="3" eventresult="0" errorcode="9.5"')],
        [400],
        "granted",
        NEW,
        1,
        0,
        0,
    ),
    Row(
        "event type negative",
        GRANTED,
        [raw_event('eventtype="-3" eventresult="0" errorcode="9"')],
        [400],
        "granted",
        NEW,
        1,
        0,
        0,
    ),
    Row(
        "event result 2^40",
        GRANTED,
        [raw_event('eventtype="3" eventresult="1099511627776"')],
        [400],
        "granted",
        NEW,
        1,
        0,
        0,
    ),
    Row("unknown event type 999/1", GRANTED, [ev(999, 1)], [200], "granted", NEW, 1, 0, 0),
]


@pytest.fixture
async def hosts_client(
    db_url: str,
    tmp_path: Path,
    key_file: Path,
    clock: FakeClock,
    signing_key: RSAPrivateKey,
    admin_token: str,
    aiohttp_client: Any,
) -> AsyncIterator[TestClient[Any, Any]]:
    """The app behind a trusted proxy (127.0.0.1), so that a test can say which address a
    request comes from; NEW uploaded and stable amd64 pointed at it."""
    settings = make_settings(db_url, tmp_path, key_file, trusted_proxy=("127.0.0.1",))
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings, clock=clock))
    main = payload_file(tmp_path / "upload", MAIN, signing_key, size=8_000)
    await upload(client, admin_token, NEW, [main])
    await point(client, admin_token, NEW)
    yield client


async def _send(client: TestClient[Any, Any], body: bytes, ip: str) -> int:
    resp = await client.post(
        "/v1/update/", data=body, headers={"Content-Type": "text/xml", "X-Forwarded-For": ip}
    )
    await resp.read()
    return resp.status


async def _state(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the state tables (ids left out: they are the database's, not the state)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    async with engine.connect() as conn:
        for table in STATE_TABLES:
            rows = (await conn.execute(text(f"SELECT * FROM {table}"))).mappings().all()
            out[table] = sorted(
                (tuple(sorted((k, repr(v)) for k, v in r.items() if k != "id")) for r in rows),
                key=repr,
            )
        out["events"] = [
            (int((await conn.execute(text("SELECT count(*) FROM events"))).scalar_one()),)
        ]
    return out


async def _one(engine: AsyncEngine, sql: str) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), {"m": MACHINE})).one()


async def _count(engine: AsyncEngine, table: str) -> int:
    return int((await _one(engine, f"SELECT count(*) FROM {table}"))[0])


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
async def test_forged_and_out_of_order_events(
    hosts_client: TestClient[Any, Any], engine: AsyncEngine, db_url: str, row: Row
) -> None:
    host = Host(machine_id=MACHINE, version=OLD)
    for step in row.setup:
        assert await _send(hosts_client, step(host), IP_A) == 200
    ips = row.ips or [IP_A] * len(row.attack)
    # The bodies are built once: a step that reboots the host changes it, and a repeat must be
    # the very same request.
    bodies = [step(host) for step in row.attack]

    before = await _state(engine)
    statuses = [await _send(hosts_client, body, ip) for body, ip in zip(bodies, ips, strict=True)]
    assert statuses == row.statuses

    status, granted, error_code = await _one(
        engine,
        "SELECT status, granted_version, last_error_code FROM instance_apps WHERE instance_id = :m",
    )
    assert (status, granted) == (row.status, row.granted)
    if row.error_code is not None:
        assert error_code == row.error_code
    counted = (
        await _count(engine, "grants"),
        await _count(engine, "failures"),
        await _count(engine, "completions"),
    )
    assert counted == (row.grants, row.failures, row.completions)
    await assert_status_counts_match(db_url, by_version=True)
    if 400 in row.statuses:
        # A refused request writes nothing at all, not even its good parts.
        assert await _state(engine) == before

    once = await _state(engine)
    logged = once["events"][0][0] - before["events"][0][0]
    again = [await _send(hosts_client, body, ip) for body, ip in zip(bodies, ips, strict=True)]
    assert again == row.statuses
    twice = await _state(engine)
    assert twice["events"][0][0] - once["events"][0][0] == logged
    for table in STATE_TABLES:
        assert twice[table] == once[table], f"{table} changed on a repeat"
    await assert_status_counts_match(db_url, by_version=True)
