"""CPU time per request of the Omaha service, in-process: a profiling aid for the write paths.

    python -m nebula.loadtest.servicecpu --db postgresql://postgres@127.0.0.1/postgres \\
        --phase grant --requests 3000

Not a throughput benchmark (that is `nebula bench`, whose load comes from processes of its
own): here `--concurrency` tasks of this process hand parsed requests of one bench phase
(nebula.loadtest.workload) straight to OmahaService.handle, bypassing HTTP, and what is
reported is this process's CPU time (user + system) per request. CPU time is what the shared,
noisy machines here measure well: other jobs slow the wall clock down, not the work a request
costs. Wall-clock rate is printed too, for what it is worth. Run it under `py-spy record` to see
where that time goes. The `grant-known` phases check their hosts in once, untimed, before the
release is published, so that the timed run grants hosts the service knows (the rollout path).
The `steady` phase checks its hosts in once, untimed, after it (they are then known, current and
in the host cache), and times their next checks: the path almost every request of a fleet takes.

A database of its own (`nebula_servicecpu_<id>` on the PostgreSQL server given, or a temporary
SQLite file), migrated, with the bench's payload published through the admin API of an app
served on 127.0.0.1; dropped at the end. Imports nebula.web, nebula.store and the load tools.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aiohttp.test_utils import TestServer

from nebula import crau
from nebula.config import load_settings
from nebula.loadtest import fleet, servers, workload
from nebula.omaha.parse import parse_request
from nebula.store import db
from nebula.web.app import create_app
from nebula.web.keys import HOST_CACHE, SERVICE

PHASES = ("steady", "first-seen", "grant", "grant-limited", "grant-known", "grant-known-limited")
# Known-host grants: the grant phases' hosts check in once before the release is published
# (known, idle, cached by this process), then are granted when the channel moves.
_KNOWN = {"grant-known": "grant", "grant-known-limited": "grant-limited"}


@dataclass(frozen=True, slots=True)
class Result:
    phase: str
    requests: int
    cpu_seconds: float
    wall_seconds: float
    granted: int  # answers that offered an update
    cached: int = 0  # host cache hits during the timed run (the steady path)

    def describe(self) -> str:
        return (
            f"{self.phase}: {self.requests} requests, "
            f"{1000 * self.cpu_seconds / self.requests:.3f} ms CPU per request "
            f"({self.requests / self.wall_seconds:.0f} req/s wall clock, in-process)"
        )


@contextlib.asynccontextmanager
async def _database(server: str | None, work: Path) -> AsyncIterator[str]:
    if server is None:
        yield f"sqlite:///{work / 'servicecpu.db'}"
        return
    name = f"nebula_servicecpu_{secrets.token_hex(3)}"
    url = await fleet.create_database(server, name)
    try:
        yield url
    finally:
        await fleet.drop_database(server, name)


async def measure(server: str | None, phase: str, requests: int, concurrency: int) -> Result:
    """Run `requests` requests of `phase` through the service; CPU and wall time they took."""
    run_id = secrets.token_hex(3)
    with tempfile.TemporaryDirectory(prefix="nebula-servicecpu-") as tmp:
        work = Path(tmp)
        async with _database(server, work) as url:
            engine = db.create_engine(url)
            try:
                token = await fleet.prepare(engine, run_id)
            finally:
                await engine.dispose()
            key = crau.make_rsa_key()
            key_file = work / "key.pub.pem"
            key_file.write_bytes(crau.public_pem(key))
            payload = work / "flatcar_production_update.gz"
            payload.write_bytes(crau.build_payload(key, data=os.urandom(4096)))
            port = servers.free_port()
            settings = load_settings(
                {
                    "db": url,
                    "listen": f"127.0.0.1:{port}",
                    "public_url": f"http://127.0.0.1:{port}",
                    "payload_dir": str(work / "payloads"),
                    "trusted_key": (str(key_file),),
                },
                environ={},
            )
            app = create_app(settings)
            srv = TestServer(app, host="127.0.0.1", port=port)
            await srv.start_server()
            try:
                service = app[SERVICE]
                chosen = workload.phases(run_id, workload.pools(run_id, 1, concurrency))[
                    _KNOWN.get(phase, phase)
                ]
                requests_of = [
                    parse_request(
                        workload.fill(chosen.templates[0], workload.machine_id(chosen.prefix, n))
                    )
                    for n in range(requests)
                ]
                if phase in _KNOWN:
                    for request in requests_of:  # untimed: the hosts become known
                        await service.handle(request, "127.0.0.1", datetime.now(UTC))
                await fleet.publish(f"http://127.0.0.1:{port}", token, payload)
                if phase == "steady":
                    for request in requests_of:  # untimed: known, current and cached
                        await service.handle(request, "127.0.0.1", datetime.now(UTC))
                bodies = iter(requests_of)

                granted = 0

                async def worker() -> None:
                    nonlocal granted
                    for request in bodies:
                        answer = await service.handle(request, "127.0.0.1", datetime.now(UTC))
                        check = answer.apps[0].update_check
                        granted += check is not None and check.manifest is not None

                hits = app[HOST_CACHE].hits
                wall, cpu = time.perf_counter(), time.process_time()
                await asyncio.gather(*(worker() for _ in range(concurrency)))
                return Result(
                    phase,
                    requests,
                    time.process_time() - cpu,
                    time.perf_counter() - wall,
                    granted,
                    app[HOST_CACHE].hits - hits,
                )
            finally:
                await srv.close()


def measure_sync(server: str | None, phase: str, requests: int, concurrency: int) -> Result:
    return asyncio.run(measure(server, phase, requests, concurrency))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", help="a PostgreSQL server (default: a temporary SQLite file)")
    parser.add_argument("--phase", choices=PHASES, default="grant")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 1000:
        parser.error("--requests 1..100000, --concurrency 1..1000")
    print(measure_sync(args.db, args.phase, args.requests, args.concurrency).describe())


if __name__ == "__main__":
    main()
