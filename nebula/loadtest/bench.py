"""`nebula bench`: measure the Omaha hot path against a baseline taken in the same run.

Starts the real application on a real socket (127.0.0.1, a free port) over a freshly migrated
database, uploads a payload signed with a throwaway key (trusted through settings.trusted_key),
points stable amd64 at it, then drives it with an aiohttp client at the given concurrency:

    baseline       GET /healthz: the same server and client, no database
    check-current  update checks from current hosts (noupdate), N new machine ids
    check-repeat   the same N hosts checking in again (the steady state of a fleet)
    check-old      update checks from hosts on an older version (grants), N new machine ids
    ping           ping-only requests from those hosts (updated, waiting for their reboot)

Each phase prints requests/s and p50/p99 latency, and a `ratio` line against the baseline:
absolute numbers drift with the machine, the ratio much less. Client and server share one
process and one event loop, so absolute rates are lower bounds; compare ratios between runs.
Everything stays on 127.0.0.1, and every request and phase has a timeout.

Imports the application (nebula.web.app), nebula.config, nebula.crau and nebula.store.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import click
from aiohttp import web
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula import crau
from nebula.config import load_settings
from nebula.errors import NebulaError
from nebula.store import db
from nebula.store.models import ApiToken, Instance, Package
from nebula.store.tokens import create_token
from nebula.web.app import create_app

APP_ID = "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}"
OLD, TARGET = "3815.2.0", "4152.2.3"
REQUEST_TIMEOUT = 30.0  # seconds, per request
PHASE_TIMEOUT = 900.0  # seconds, per phase
PAYLOAD_BYTES = 64 * 1024

_CHECK = (
    '<ping active="1"></ping><updatecheck></updatecheck>'
    '<event eventtype="3" eventresult="2" previousversion=""></event>'
)
_PING = '<ping active="1"></ping>'
_XML = {"Content-Type": "text/xml"}


def omaha_body(machine_id: str, version: str, inner: str) -> bytes:
    """A request as update_engine 0.4.10 sends it (contract §2)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<request protocol="3.0" version="update_engine-0.4.10" '
        'updaterversion="update_engine-0.4.10" installsource="scheduler" ismachine="1">\n'
        f'<os version="Chateau" platform="CoreOS" sp="{version}_x86_64"></os>\n'
        f'<app appid="{APP_ID}" version="{version}" track="stable" '
        f'bootid="{{{machine_id[:8]}-0000-4000-8000-{machine_id[-12:]}}}" oem="qemu" '
        f'oemversion="" alephversion="3510.2.1" machineid="{machine_id}" machinealias="" '
        'lang="en-US" board="amd64-usr" hardware_class="" delta_okay="false">'
        f"{inner}</app>\n</request>\n"
    ).encode()


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    title: str
    path: str
    bodies: Sequence[bytes] | None  # None: GET
    expect: bytes | None = None  # a fragment every answer must contain


@dataclass(frozen=True, slots=True)
class Result:
    phase: Phase
    errors: int
    seconds: float
    latencies: Sequence[float]  # sorted, seconds

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds > 0 else math.inf

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile in milliseconds."""
        if not self.latencies:
            return math.nan
        rank = max(1, math.ceil(q / 100 * len(self.latencies)))
        return self.latencies[rank - 1] * 1000


async def _run_phase(
    http: aiohttp.ClientSession, base: str, phase: Phase, count: int, concurrency: int
) -> Result:
    latencies: list[float] = []
    errors = 0
    cursor = 0
    url = base + phase.path

    async def one(i: int) -> bool:
        if phase.bodies is None:
            async with http.get(url) as resp:
                body = await resp.read()
        else:
            async with http.post(url, data=phase.bodies[i], headers=_XML) as resp:
                body = await resp.read()
        return resp.status == 200 and (phase.expect is None or phase.expect in body)

    async def worker() -> None:
        nonlocal cursor, errors
        while cursor < count:
            i = cursor
            cursor += 1
            started = time.perf_counter()
            try:
                ok = await one(i)
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += not ok

    started = time.perf_counter()
    workers = [worker() for _ in range(min(concurrency, count))]
    await asyncio.wait_for(asyncio.gather(*workers), PHASE_TIMEOUT)
    return Result(phase, errors, time.perf_counter() - started, sorted(latencies))


async def _prepare_database(engine: AsyncEngine, run_id: str) -> str:
    """Migrate, refuse a database that already serves hosts, and make a one-run admin token."""
    await db.upgrade(engine)
    async with db.transaction(db.session_factory(engine)) as session:
        used = (await session.execute(select(func.count()).select_from(Instance))).scalar_one()
        used += (await session.execute(select(func.count()).select_from(Package))).scalar_one()
        if used:
            raise click.ClickException(
                "the bench needs an empty database (it uploads a package and points stable "
                "amd64 at it): this one already has packages or hosts"
            )
        return await create_token(session, f"bench-{run_id}", "admin", datetime.now(UTC))


async def _revoke(engine: AsyncEngine, run_id: str) -> None:
    async with db.transaction(db.session_factory(engine)) as session:
        await session.execute(
            update(ApiToken)
            .where(ApiToken.name == f"bench-{run_id}")
            .values(revoked_at=datetime.now(UTC))
        )


async def _publish(http: aiohttp.ClientSession, base: str, token: str, payload: Path) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    form = aiohttp.FormData()
    form.add_field("payload", payload.read_bytes(), filename=payload.name)
    async with http.post(
        f"{base}/api/v1/packages/upload",
        params={"version": TARGET, "arch": "amd64"},
        data=form,
        headers=auth,
    ) as resp:
        if resp.status != 201:
            raise click.ClickException(f"upload failed: {resp.status} {await resp.text()}")
    async with http.put(
        f"{base}/api/v1/channels/stable",
        json={"arch": "amd64", "version": TARGET},
        headers=auth,
    ) as resp:
        if resp.status != 200:
            raise click.ClickException(f"channel update failed: {resp.status} {await resp.text()}")


def _phases(run_id: str, count: int) -> list[Phase]:
    current = [f"{run_id}c{i:023x}" for i in range(count)]
    old = [f"{run_id}o{i:023x}" for i in range(count)]
    noupdate = b'<updatecheck status="noupdate"'
    ok = b'<updatecheck status="ok"'
    return [
        Phase("baseline", "GET /healthz (no database)", "/healthz", None),
        Phase(
            "check-current",
            "check, current host, first seen",
            "/v1/update/",
            [omaha_body(m, TARGET, _CHECK) for m in current],
            noupdate,
        ),
        Phase(
            "check-repeat",
            "check, current host, known",
            "/v1/update/",
            [omaha_body(m, TARGET, _CHECK) for m in current],
            noupdate,
        ),
        Phase(
            "check-old",
            "check, old host -> grant",
            "/v1/update/",
            [omaha_body(m, OLD, _CHECK) for m in old],
            ok,
        ),
        Phase(
            "ping",
            "ping only (waiting for reboot)",
            "/v1/update/",
            [omaha_body(m, OLD, _PING) for m in old],
            b'<ping status="ok"',
        ),
    ]


def _report(results: Sequence[Result], count: int, concurrency: int, db_label: str) -> None:
    click.echo(
        f"nebula bench: {count} requests per phase, concurrency {concurrency}, database {db_label}"
    )
    click.echo(f"{'phase':<15}{'what':<34}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for r in results:
        click.echo(
            f"{r.phase.name:<15}{r.phase.title:<34}{r.rate:>10.1f}"
            f"{r.percentile(50):>9.2f}{r.percentile(99):>9.2f}{r.errors:>8}"
        )
    base = results[0]
    click.echo(
        "ratios to the baseline, measured in this run (throughput: higher is better; "
        "latency: lower is better):"
    )
    for r in results[1:]:
        click.echo(
            f"ratio {r.phase.name}/baseline: throughput {r.rate / base.rate:.3f}x, "
            f"p50 {r.percentile(50) / base.percentile(50):.2f}x, "
            f"p99 {r.percentile(99) / base.percentile(99):.2f}x"
        )


async def run_bench(count: int, concurrency: int, db_url: str | None) -> list[Result]:
    run_id = secrets.token_hex(4)
    with tempfile.TemporaryDirectory(prefix="nebula-bench-") as tmp:
        work = Path(tmp)
        key = crau.make_rsa_key()
        key_file = work / "bench-key.pub.pem"
        key_file.write_bytes(crau.public_pem(key))
        payload = work / "flatcar_production_update.gz"
        payload.write_bytes(crau.build_payload(key, data=os.urandom(PAYLOAD_BYTES)))
        url = db_url or f"sqlite:///{work / 'bench.db'}"
        try:
            settings = load_settings(
                {
                    "db": url,
                    "payload_dir": str(work / "payloads"),
                    "trusted_key": (str(key_file),),
                    "trust_flatcar_key": False,
                    "public_url": "http://127.0.0.1",  # codebase only; nothing is downloaded
                    "migrate": False,
                },
                environ={},
            )
            engine = db.create_engine(settings.db, max(settings.db_pool_size, concurrency))
        except NebulaError as exc:
            raise click.ClickException(str(exc)) from None
        try:
            token = await _prepare_database(engine, run_id)
            runner = web.AppRunner(create_app(settings, engine=engine), access_log=None)
            await runner.setup()
            try:
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                port = runner.addresses[0][1]
                base = f"http://127.0.0.1:{port}"
                connector = aiohttp.TCPConnector(limit=concurrency)
                timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
                async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
                    await _publish(http, base, token, payload)
                    phases = _phases(run_id, count)
                    # Warm up connections and caches; not measured.
                    await _run_phase(http, base, phases[0], min(count, 100), concurrency)
                    results = [
                        await _run_phase(http, base, phase, count, concurrency) for phase in phases
                    ]
            finally:
                await runner.cleanup()
            await _revoke(engine, run_id)
        finally:
            await engine.dispose()
    label = "temporary SQLite file" if db_url is None else db.normalize_url(url).get_backend_name()
    _report(results, count, concurrency, label)
    return results


@click.command("bench")
@click.option(
    "--requests",
    "count",
    type=click.IntRange(1, 1_000_000),
    default=2000,
    show_default=True,
    help="Requests per phase.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="Requests in flight at once.",
)
@click.option(
    "--db",
    "db_url",
    help="An empty database to run against (it is migrated, given a package and hosts); "
    "default: a temporary SQLite file.",
)
def bench(count: int, concurrency: int, db_url: str | None) -> None:
    """Measure update checks and pings against a /healthz baseline from the same run."""
    results = asyncio.run(run_bench(count, concurrency, db_url))
    failed = sum(r.errors for r in results)
    if failed:
        raise click.ClickException(f"{failed} requests failed or got an unexpected answer")
