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

With `--http` the requests go through the whole HTTP path instead: raw HTTP/1.1 bytes handed
to aiohttp's protocol (its parser, the middleware, the Omaha handler, the response writer, the
access-log hook) over in-memory transports, no sockets: what Nebula and aiohttp cost a request
in Python, without the kernel's share that `nebula bench` also measures. That figure is steady
enough to compare commits by under valgrind (instruction counts do not drift with the machine's
neighbours); for the steady phase `--hosts` keeps the warm-up fixed while `--requests` grows,
and `--key` signs with a given key instead of drawing a fresh one (whose search for primes
varies), so that the difference of two runs is the requests' own:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m \
        nebula.loadtest.servicecpu --http --phase steady --hosts 200 --requests 1200 --key k.pem
    (and again with --requests 200; the "Collected" counts differ by 1,000 requests' worth)

A database of its own (`nebula_servicecpu_<id>` on the PostgreSQL server given, or a temporary
SQLite file), migrated, with the bench's payload published through the admin API of an app
served on 127.0.0.1; dropped at the end. Imports nebula.web, nebula.store and the load tools.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from nebula import crau
from nebula.config import load_settings
from nebula.loadtest import fleet, servers, workload
from nebula.omaha.parse import parse_request
from nebula.store import db
from nebula.web.app import create_app
from nebula.web.keys import HOST_CACHE, SERVICE
from nebula.web.serve import runner_options

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


def _rsa_key(pem: bytes) -> RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, None)
    if not isinstance(key, RSAPrivateKey):
        raise ValueError("--key: not an RSA private key")
    return key


class _Wire(asyncio.Transport):
    """One in-memory connection: what aiohttp writes to it is kept until a whole answer (its
    head and Content-Length bytes of body) is there, which `answer` then returns."""

    def __init__(self) -> None:
        super().__init__()
        self._out = bytearray()
        self._waiter: asyncio.Future[bytes] | None = None

    def answer(self) -> asyncio.Future[bytes]:
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._out += data
        head, sep, body = bytes(self._out).partition(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length: *([0-9]+)", head)
        if sep and length and len(body) >= int(length[1]) and self._waiter is not None:
            self._waiter.set_result(bytes(self._out))
            self._out.clear()

    def writelines(self, lines: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(lines))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 1)}.get(name, default)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass  # nothing to release: the connection ends with the measurement

    def get_write_buffer_size(self) -> int:
        return 0


async def _through_http(server: web.Server, bodies: Iterator[bytes], concurrency: int) -> int:
    """Hand every body to aiohttp as a POST on one of `concurrency` connections, each waiting
    for its answer before the next; the number of answers that offered an update."""
    granted = 0

    async def connection() -> None:
        nonlocal granted
        wire, protocol = _Wire(), server()
        protocol.connection_made(wire)
        for body in bodies:
            answer = wire.answer()
            protocol.data_received(
                b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s"
                % (workload.PATH.encode(), len(body), body)
            )
            data = await answer
            if not data.startswith(b"HTTP/1.1 200 "):
                raise RuntimeError(f"the app answered {data[:200]!r}")
            granted += workload.GRANTED.encode() in data
        protocol.connection_lost(None)

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return granted


async def measure(
    server: str | None,
    phase: str,
    requests: int,
    concurrency: int,
    *,
    http: bool = False,
    hosts: int | None = None,
    key_pem: bytes | None = None,
) -> Result:
    """Run `requests` requests of `phase` through the service (with `http`, through aiohttp's
    whole request path); CPU and wall time they took. `hosts`: how many distinct hosts the
    requests cycle over (steady phase only; default one per request). `key_pem`: a private
    key to sign the payload with instead of a fresh one."""
    run_id = secrets.token_hex(3)
    with tempfile.TemporaryDirectory(prefix="nebula-servicecpu-") as tmp:
        work = Path(tmp)
        async with _database(server, work) as url:
            engine = db.create_engine(url)
            try:
                token = await fleet.prepare(engine, run_id)
            finally:
                await engine.dispose()
            key = crau.make_rsa_key() if key_pem is None else _rsa_key(key_pem)
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
            srv = TestServer(app, host="127.0.0.1", port=port, **runner_options(settings))
            await srv.start_server()
            try:
                service = app[SERVICE]
                chosen = workload.phases(run_id, workload.pools(run_id, 1, concurrency))[
                    _KNOWN.get(phase, phase)
                ]
                distinct = requests if hosts is None or phase != "steady" else hosts
                raw = [
                    workload.fill(chosen.templates[0], workload.machine_id(chosen.prefix, n))
                    for n in range(distinct)
                ]
                requests_of = [parse_request(body) for body in raw]
                if phase in _KNOWN:
                    for request in requests_of:  # untimed: the hosts become known
                        await service.handle(request, "127.0.0.1", datetime.now(UTC))
                await fleet.publish(f"http://127.0.0.1:{port}", token, payload)
                if phase == "steady":
                    for request in requests_of:  # untimed: known, current and cached
                        await service.handle(request, "127.0.0.1", datetime.now(UTC))
                bodies = iter([requests_of[n % distinct] for n in range(requests)])
                granted = 0

                async def worker() -> None:
                    nonlocal granted
                    for request in bodies:
                        answer = await service.handle(request, "127.0.0.1", datetime.now(UTC))
                        check = answer.apps[0].update_check
                        granted += check is not None and check.manifest is not None

                hits = app[HOST_CACHE].hits
                wall, cpu = time.perf_counter(), time.process_time()
                if http:
                    assert srv.runner is not None and srv.runner.server is not None
                    posts = iter([raw[n % distinct] for n in range(requests)])
                    granted = await _through_http(srv.runner.server, posts, concurrency)
                else:
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


def measure_sync(
    server: str | None, phase: str, requests: int, concurrency: int, **options: Any
) -> Result:
    return asyncio.run(measure(server, phase, requests, concurrency, **options))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", help="a PostgreSQL server (default: a temporary SQLite file)")
    parser.add_argument("--phase", choices=PHASES, default="grant")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--http", action="store_true", help="through aiohttp's request path")
    parser.add_argument("--hosts", type=int, help="steady: distinct hosts the requests cycle over")
    parser.add_argument("--key", type=Path, help="a private key (PEM) to sign the payload with")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 1000:
        parser.error("--requests 1..100000, --concurrency 1..1000")
    if args.hosts is not None and not 1 <= args.hosts <= 100_000:
        parser.error("--hosts 1..100000")
    result = measure_sync(
        args.db,
        args.phase,
        args.requests,
        args.concurrency,
        http=args.http,
        hosts=args.hosts,
        key_pem=None if args.key is None else args.key.read_bytes(),
    )
    print(result.describe())


if __name__ == "__main__":
    main()
