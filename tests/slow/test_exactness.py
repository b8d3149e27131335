"""Exactness of the rollout limits under concurrency (slow suite).

A grant is decided on counts read under the group's row lock, so however many Nebula processes
share one database and however many hosts check at once, a group never gets more grants per
period, more hosts in flight, or a second safe-mode host before the first completed, than its
policy allows; and it gets exactly that many, not fewer.

PostgreSQL: three `nebula serve` processes on one database, a few hundred hosts checking at once
spread over them, repeated over fresh groups (the servers run on the real clock, so a fresh group
is a fresh period). The policy is set through one process and the race fired at once, while the
others may still cache the group without limits: the locked row must decide. SQLite: the same
races against one in-process server.

After every wave the hosts' answers (updatecheck status "ok" = a grant) are reconciled with the
database: the grants table, and the hosts' statuses in instance_apps.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from lxml import etree
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.lifecycle import IN_PROGRESS
from nebula.store import db
from nebula.store.models import Grant, InstanceApp
from tests.factories import Host, payload_file
from tests.slow.fleet import Fleet, run_cli

pytestmark = pytest.mark.slow

OLD, NEW = "3815.2.0", "4152.2.3"
PER_PERIOD, CONCURRENT = 7, 3
LIMITS = {"max_updates_per_period": PER_PERIOD, "period": "1h", "max_concurrent": CONCURRENT}
SAFE = {"safe_mode": True}
REBOOTED = "{5d0c7c36-8f0e-4a2b-9b51-0d8f3c2a7e11}"  # the boot id after the update's reboot

PG_SERVERS = 3
PG_LIMIT_ROUNDS, PG_SAFE_ROUNDS, PG_HOSTS = 5, 2, 200
SQLITE_LIMIT_ROUNDS, SQLITE_SAFE_ROUNDS, SQLITE_HOSTS = 2, 1, 200


# -- the rig: an HTTP client, the servers, and a view of the database ---------------------------


@dataclass(frozen=True)
class Tally:
    """One group's rows, read from the database."""

    grants: int  # rows of the grants table
    granted_hosts: frozenset[str]  # distinct hosts in those rows
    in_flight: frozenset[str]  # hosts in granted/downloading/downloaded/installed
    complete: frozenset[str]
    holds: Counter[str]  # hold_reason of the hosts that have one

    def describe(self) -> str:
        return (
            f"database: {self.grants} grant rows for {len(self.granted_hosts)} hosts, "
            f"{len(self.in_flight)} in flight, {len(self.complete)} complete, "
            f"holds {dict(self.holds)}"
        )


@dataclass
class Rig:
    http: aiohttp.ClientSession
    bases: list[str]  # one per server process
    token: str
    engine: AsyncEngine
    rng: random.Random = field(default_factory=lambda: random.Random(20261127))

    async def api(
        self, method: str, path: str, *, expect: int = 200, **kwargs: Any
    ) -> dict[str, Any]:
        """An admin call through the first server."""
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.http.request(
            method, self.bases[0] + path, headers=headers, **kwargs
        ) as resp:
            body = await resp.text()
            assert resp.status == expect, f"{method} {path}: {resp.status} {body[:500]}"
            return await resp.json()  # type: ignore[no-any-return]

    async def omaha(self, server: int, body: bytes) -> str:
        """POST one request to server `server % n`; the updatecheck status it answered."""
        base = self.bases[server % len(self.bases)]
        async with self.http.post(
            f"{base}/v1/update/", data=body, headers={"Content-Type": "text/xml"}
        ) as resp:
            text = await resp.read()
            assert resp.status == 200, f"{base} answered {resp.status}: {text[:500]!r}"
        check = etree.fromstring(text).find("app/updatecheck")
        assert check is not None, f"{base} answered no updatecheck: {text[:500]!r}"
        return str(check.get("status"))

    async def at_once(self, sends: Sequence[tuple[int, bytes]]) -> list[str]:
        """Every request at the same time (as many in the air as the connector allows)."""
        started = time.monotonic()
        results = await asyncio.gather(*(self.omaha(server, body) for server, body in sends))
        # Shown with a failing test: how long each wave took, to tell a slow run from a stuck one.
        print(f"{len(sends)} requests in {time.monotonic() - started:.2f}s: {Counter(results)}")
        return list(results)

    async def tally(self, group_id: str) -> Tally:
        async with self.engine.connect() as conn:
            grants = int(
                (
                    await conn.execute(
                        select(func.count()).select_from(Grant).where(Grant.group_id == group_id)
                    )
                ).scalar_one()
            )
            granted = frozenset(
                (
                    await conn.execute(
                        select(Grant.instance_id).where(Grant.group_id == group_id).distinct()
                    )
                ).scalars()
            )
            rows = (
                await conn.execute(
                    select(
                        InstanceApp.instance_id, InstanceApp.status, InstanceApp.hold_reason
                    ).where(InstanceApp.group_id == group_id)
                )
            ).all()
        return Tally(
            grants=grants,
            granted_hosts=granted,
            in_flight=frozenset(m for m, s, _ in rows if s in IN_PROGRESS),
            complete=frozenset(m for m, s, _ in rows if s == "complete"),
            holds=Counter(h for _, _, h in rows if h is not None),
        )

    async def publish(self, payload: Path) -> None:
        """Upload a signed payload for NEW and point stable amd64 at it."""
        form = aiohttp.FormData()
        form.add_field("payload", payload.read_bytes(), filename=payload.name)
        await self.api(
            "POST",
            "/api/v1/packages/upload",
            params={"version": NEW, "arch": "amd64"},
            data=form,
            expect=201,
        )
        await self.api("PUT", "/api/v1/channels/stable", json={"arch": "amd64", "version": NEW})

    async def new_groups(self, names: Sequence[str]) -> dict[str, str]:
        """Groups (own tracks, stable amd64, no limits yet) every server knows; name -> id."""
        ids = {}
        for name in names:
            body = {"name": name, "track": name, "arch": "amd64", "channel": "stable"}
            ids[name] = (await self.api("POST", "/api/v1/groups", json=body, expect=201))["id"]
        # A check without a machine id is answered from the catalog alone and stores nothing:
        # "error-unknownTrack" until the server's cached catalog has the group.
        deadline = time.monotonic() + 20
        for name in names:
            probe = Host(machine_id="", version=OLD, track=name).check()
            for server in range(len(self.bases)):
                while (status := await self.omaha(server, probe)) != "noupdate":
                    assert time.monotonic() < deadline, (
                        f"server {server} still answers {status!r} for track {name}"
                    )
                    await asyncio.sleep(0.1)
        return ids


def fleet_of(prefix: str, count: int, track: str) -> list[Host]:
    """`count` hosts running OLD on `track`, with machine ids unique to `prefix`."""
    return [
        Host(machine_id=f"{prefix}{i:0{32 - len(prefix)}x}", version=OLD, track=track)
        for i in range(count)
    ]


def completion(host: Host) -> bytes:
    """The first check after the update's reboot: running NEW, 3/2 previousversion=OLD."""
    return replace(host, version=NEW, boot_id=REBOOTED).check(previous_version=OLD)


def _statuses(results: Sequence[str], what: str) -> None:
    unexpected = Counter(r for r in results if r not in ("ok", "noupdate"))
    assert not unexpected, f"{what}: answers other than ok/noupdate: {dict(unexpected)}"


# -- the races -----------------------------------------------------------------------------------


async def limits_round(rig: Rig, group_id: str, hosts: list[Host], label: str) -> None:
    """Group limits: PER_PERIOD per hour and CONCURRENT at once. `hosts` all check at once,
    again and again, while the granted ones complete; after each wave the answers and the
    database must agree and be within the limits; at the end exactly PER_PERIOD were granted."""
    n = len(rig.bases)
    by_id = {h.machine_id: h for h in hosts}
    granted: set[str] = set()  # every host that was answered "ok"
    in_flight: set[str] = set()  # granted, not yet complete
    complete: set[str] = set()
    wave = 0

    async def expect_db(what: str) -> Tally:
        t = await rig.tally(group_id)
        state = t.describe()
        assert t.grants == len(granted), (
            f"{what}: {t.grants} rows in the grants table, but {len(granted)} hosts were "
            f"answered ok; {state}"
        )
        assert t.granted_hosts == granted, f"{what}: granted hosts differ; {state}"
        assert t.grants <= PER_PERIOD, (
            f"{what}: {t.grants} grants in the period (limit {PER_PERIOD}); {state}"
        )
        assert t.in_flight == in_flight, (
            f"{what}: hosts in flight in the database {len(t.in_flight)} != "
            f"{len(in_flight)} granted and not completed by the test; {state}"
        )
        assert len(t.in_flight) <= CONCURRENT, (
            f"{what}: {len(t.in_flight)} hosts in flight (limit {CONCURRENT}); {state}"
        )
        assert t.complete == complete, f"{what}: completed hosts differ; {state}"
        return t

    async def checks(
        waiting: list[str], completing: Sequence[str] = (), twice: bool = False
    ) -> int:
        """One wave: every waiting host checks (and `completing` ones report NEW), all at once,
        spread over the servers (each wave sends a host to another server); new grants.
        `twice`: each waiting host sends its check twice at once, to two servers."""
        nonlocal wave
        wave += 1
        copies = 2 if twice else 1
        sends: list[tuple[int, bytes, str | None]] = [
            (i + wave + c, by_id[m].check(), m)
            for i, m in enumerate(waiting)
            for c in range(copies)
        ]
        sends += [(i + wave, completion(by_id[m]), None) for i, m in enumerate(completing)]
        rig.rng.shuffle(sends)
        results = await rig.at_once([(server % n, body) for server, body, _ in sends])
        what = f"{label} wave {wave} ({len(waiting)} checks, {len(completing)} completions)"
        _statuses(results, what)
        answers: dict[str, set[str]] = {}
        for (_, _, m), r in zip(sends, results, strict=True):
            if m is not None:
                answers.setdefault(m, set()).add(r)
        split = sorted(m for m, a in answers.items() if len(a) > 1)
        assert not split, f"{what}: hosts answered both ok and noupdate at once: {split}"
        new = {m for m, a in answers.items() if a == {"ok"}}
        done = [r for (_, _, m), r in zip(sends, results, strict=True) if m is None]
        assert all(r == "noupdate" for r in done), f"{what}: a completing host was offered NEW"
        assert not new & granted, f"{what}: hosts granted a second time: {sorted(new & granted)}"
        granted.update(new)
        in_flight.difference_update(completing)
        complete.update(completing)
        in_flight.update(new)
        assert len(in_flight) <= CONCURRENT, (
            f"{what}: {len(in_flight)} hosts in flight after {len(new)} new grants "
            f"(limit {CONCURRENT})"
        )
        assert len(granted) <= PER_PERIOD, (
            f"{what}: {len(granted)} hosts granted in the period (limit {PER_PERIOD})"
        )
        await expect_db(what)
        return len(new)

    def waiting() -> list[str]:
        return [m for m in by_id if m not in granted]

    # 1. Everyone at once, each host twice (a retry racing its own check, on another server):
    #    the concurrency limit binds first, so exactly CONCURRENT hosts, each granted once.
    first = await checks(waiting(), twice=True)
    assert first == min(PER_PERIOD, CONCURRENT), (
        f"{label}: first wave of {len(hosts)} hosts at once (each checking twice): {first} "
        f"hosts granted (updatecheck ok), expected exactly {min(PER_PERIOD, CONCURRENT)}"
    )
    t = await rig.tally(group_id)
    assert t.holds["concurrency"] == len(hosts) - first, (
        f"{label}: after the first wave, hosts held for concurrency: {t.describe()}"
    )

    # 2. The granted hosts complete while all the others check again, in one mixed wave:
    #    however the two interleave, within the limits (checked in checks()).
    await checks(waiting(), sorted(in_flight))

    # 3. Settle: complete whoever is in flight, then everyone waiting checks at once; each
    #    wave grants exactly what the tighter of the two limits leaves.
    while len(granted) < PER_PERIOD:
        if in_flight:
            await checks([], sorted(in_flight))
        before = len(granted)
        new = await checks(waiting())
        expected = min(CONCURRENT, PER_PERIOD - before)
        assert new == expected, (
            f"{label} wave {wave}: {new} grants to {len(waiting()) + new} waiting hosts with "
            f"{before} granted in the period and none in flight; expected exactly {expected}"
        )

    # 4. The period's grants are used up: with nobody in flight, nobody else gets one.
    await checks([], sorted(in_flight))
    late = await checks(waiting())
    assert late == 0, (
        f"{label} wave {wave}: {late} grants after the period's {PER_PERIOD} were used up"
    )
    t = await expect_db(f"{label} end")
    assert t.grants == PER_PERIOD, (
        f"{label}: {t.grants} grants over the round, expected exactly {PER_PERIOD}"
    )
    assert t.holds["rate_limit"] == len(hosts) - PER_PERIOD, (
        f"{label}: at the end every waiting host should be held by the rate limit; {t.describe()}"
    )


async def safe_mode_round(rig: Rig, group_id: str, hosts: list[Host], label: str) -> None:
    """Safe mode, no other limits: of `hosts` checking at once exactly one (the canary) is
    granted; nobody else while it is in flight; everyone once it completed."""
    n = len(rig.bases)
    results = await rig.at_once([(i % n, h.check()) for i, h in enumerate(hosts)])
    _statuses(results, f"{label} first wave")
    canaries = [h for h, r in zip(hosts, results, strict=True) if r == "ok"]
    t = await rig.tally(group_id)
    assert len(canaries) == 1, (
        f"{label}: {len(canaries)} of {len(hosts)} hosts checking at once were granted "
        f"(updatecheck ok) in safe mode, expected exactly 1; {t.describe()}"
    )
    (canary,) = canaries
    assert t.grants == 1, f"{label}: grant rows after the first wave; {t.describe()}"
    assert t.in_flight == {canary.machine_id}, f"{label}: hosts in flight; {t.describe()}"

    others = [h for h in hosts if h is not canary]
    results = await rig.at_once([(i + 1, h.check()) for i, h in enumerate(others)])
    _statuses(results, f"{label} second wave")
    t = await rig.tally(group_id)
    assert results.count("ok") == 0 and t.grants == 1, (
        f"{label}: {results.count('ok')} hosts granted while the canary was still in flight; "
        f"{t.describe()}"
    )
    assert t.holds["canary"] == len(others), f"{label}: hosts held for the canary; {t.describe()}"

    assert await rig.omaha(0, completion(canary)) == "noupdate"
    results = await rig.at_once([(i + 2, h.check()) for i, h in enumerate(others)])
    _statuses(results, f"{label} third wave")
    t = await rig.tally(group_id)
    assert results.count("ok") == len(others) and t.grants == len(hosts), (
        f"{label}: after the canary completed, {results.count('ok')} of {len(others)} waiting "
        f"hosts were granted (no other limits); {t.describe()}"
    )
    assert t.complete == {canary.machine_id}, f"{label}: completed hosts; {t.describe()}"


async def run_races(
    rig: Rig, payload: Path, limit_rounds: int, safe_rounds: int, hosts: int
) -> None:
    await rig.publish(payload)
    limit_names = [f"limits-{r}" for r in range(limit_rounds)]
    safe_names = [f"safe-{r}" for r in range(safe_rounds)]
    ids = await rig.new_groups(limit_names + safe_names)
    for r, name in enumerate(limit_names):
        # Set through the first server and raced at once: the others may still cache the group
        # without limits, and must decide on the locked row anyway.
        await rig.api("PATCH", f"/api/v1/groups/{name}/policy", json=LIMITS)
        await limits_round(rig, ids[name], fleet_of(f"a{r:02x}", hosts, name), name)
    for r, name in enumerate(safe_names):
        await rig.api("PATCH", f"/api/v1/groups/{name}/policy", json=SAFE)
        await safe_mode_round(rig, ids[name], fleet_of(f"b{r:02x}", hosts, name), name)


# -- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_limits_exact_across_processes_on_postgres(
    db_url: str, tmp_path: Path, key_file: Path, signing_key: RSAPrivateKey
) -> None:
    payload = payload_file(tmp_path / "up", "flatcar_production_update.gz", signing_key)
    token = run_cli("token", "create", "--db", db_url, "--name", "exactness").strip()
    engine = db.create_engine(db_url)
    fleet = Fleet(
        PG_SERVERS,
        db_url=db_url,
        payload_dir=tmp_path / "payloads",
        key_file=key_file,
        workdir=tmp_path / "servers",
        # Up to 12 connections each (pool + overflow), all queueing on the group's row lock at
        # once; well inside PostgreSQL's default 100 connections, shared with other suites.
        pool_size=6,
    )
    try:
        async with (
            fleet,
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100),
                timeout=aiohttp.ClientTimeout(total=60),
            ) as http,
        ):
            rig = Rig(http, fleet.bases, token, engine)
            await run_races(rig, payload, PG_LIMIT_ROUNDS, PG_SAFE_ROUNDS, PG_HOSTS)
            fleet.assert_alive()
            assert "Traceback" not in fleet.logs(), "a server logged a traceback"
    finally:
        await engine.dispose()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_limits_exact_in_one_process_on_sqlite(
    client: TestClient[Any, Any],
    db_url: str,
    admin_token: str,
    tmp_path: Path,
    signing_key: RSAPrivateKey,
) -> None:
    payload = payload_file(tmp_path / "up", "flatcar_production_update.gz", signing_key)
    # Read the way the servers' own reports do: plain (deferred) transactions, which never
    # take SQLite's write lock.
    engine = db.create_engine(db_url)
    readers = engine.execution_options(nebula_read_only=True)
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=SQLITE_HOSTS),
            timeout=aiohttp.ClientTimeout(total=60),
        ) as http:
            rig = Rig(http, [str(client.make_url("")).rstrip("/")], admin_token, readers)
            await run_races(rig, payload, SQLITE_LIMIT_ROUNDS, SQLITE_SAFE_ROUNDS, SQLITE_HOSTS)
    finally:
        await engine.dispose()
