"""The million-host measurement: admin routes and update checks on a large database against a
small one, in one run (issue 7 item 4).

    python -m nebula.loadtest.million --db postgresql://postgres@127.0.0.1/postgres \\
        --hosts 1000000 --baseline 10000

For each size it creates a database `nebula_million_<size>` on that PostgreSQL server, migrates
it, fills it with nebula.loadtest.fleetsql, starts a real `nebula serve` on 127.0.0.1 against it
and times, one request at a time: the `/metrics` scrape (its first, uncached, and the rest), the
rollout status of the largest group, `group show`, its rollout history over a day and over 30
days (the loader writes 30 days of samples), the first page of `instance list` (all hosts,
one group, one status, by last seen, by version, a search by alias and by machine id prefix),
a page 90% of the way down the list in each sort (a cursor made from the row there: keyset
pages must not slow down with depth), `instance show`, the fleet's activity log, and update
checks of known current hosts (a first pass read from the
database, a second answered from the process's host snapshots). Then it prints median and p95 of
each, the ratio of the large database to the small, and the server's resident memory. The
databases are dropped at the end (`--keep` leaves them, `--reuse` measures kept ones).
`--cache-memory N` instead measures what N host snapshots cost a process (the host cache at
capacity, which a check-in run would take an hour of requests to fill).

Only 127.0.0.1; bounded by the sizes and call counts given. Imports nebula.store, nebula.config
and the load tools beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from nebula.loadtest import fleetsql
from nebula.loadtest.update_engine import Host
from nebula.store import db
from nebula.store.tokens import create_token

HOST = "127.0.0.1"
ROUTES = (
    ("metrics (first)", "/metrics", 1),
    ("metrics", "/metrics", None),
    ("rollout status", "/api/v1/groups/stable/rollout?arch=amd64", None),
    ("group show", "/api/v1/groups/stable?arch=amd64", None),
    ("rollout history 1d", "/api/v1/groups/stable/history?arch=amd64&window=1d", None),
    ("rollout history 30d", "/api/v1/groups/stable/history?arch=amd64&window=30d", None),
    ("instance list", "/api/v1/instances", None),
    ("instance list --group", "/api/v1/instances?group=stable&arch=amd64", None),
    ("instance list --status", "/api/v1/instances?group=stable&arch=amd64&status=error", None),
    ("instance list by last seen", "/api/v1/instances?sort=last_seen&order=desc", None),
    ("instance list by version", "/api/v1/instances?sort=version", None),
    ("instance search: alias", "/api/v1/instances?q=db-primary", None),
    (
        "instance search: id prefix",
        f"/api/v1/instances?q={fleetsql.machine_id(4242)[:30]}",
        None,
    ),
    ("instance show", f"/api/v1/instances/{fleetsql.machine_id(4242)}", None),
    ("activity (fleet)", "/api/v1/activity", None),
)
# Pages 90% of the way through the list, in each sort: a cursor made from the row there.
DEEP = (
    ("id:asc", "sort=id&order=asc", "a.instance_id, a.app_id", "a.instance_id, a.app_id"),
    (
        "last_seen:desc",
        "sort=last_seen&order=desc",
        "i.last_seen_at, i.id, a.app_id",
        "i.last_seen_at DESC, i.id DESC, a.app_id DESC",
    ),
    (
        "version:asc",
        "sort=version&order=asc",
        "a.version, a.instance_id, a.app_id",
        "a.version, a.instance_id, a.app_id",
    ),
)


@dataclass
class Timings:
    name: str
    ms: list[float]
    cpu_ms: float | None = None  # the server's CPU per call (its processes, not PostgreSQL's)

    @property
    def median(self) -> float:
        return statistics.median(self.ms)

    @property
    def p95(self) -> float:
        ordered = sorted(self.ms)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


@dataclass
class Run:
    hosts: int
    load_seconds: float | None
    timings: dict[str, Timings]
    rss_mb: list[float]  # each process of the server: the parent first, then its workers


def _url(server: str, name: str) -> str:
    return db.normalize_url(server).set(database=name).render_as_string(hide_password=False)


async def _admin(server: str, sql: str) -> None:
    engine = create_async_engine(db.normalize_url(server), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql(sql)
    finally:
        await engine.dispose()


def database_name(hosts: int) -> str:
    return f"nebula_million_{hosts}"


async def create_and_load(server: str, hosts: int) -> float:
    name = database_name(hosts)
    await _admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await _admin(server, f'CREATE DATABASE "{name}"')
    engine = db.create_engine(_url(server, name))
    try:
        await db.upgrade(engine)
        started = time.monotonic()
        await fleetsql.load(engine, hosts)
        return time.monotonic() - started
    finally:
        await engine.dispose()


async def _token(engine: AsyncEngine) -> str:
    async with db.transaction(db.session_factory(engine)) as session:
        await session.execute(text("DELETE FROM api_tokens WHERE name = 'million'"))
        return await create_token(session, "million", "admin", datetime.now(UTC))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _start_server(db_url: str, port: int, work: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEBULA_")}
    argv = [
        sys.executable,
        "-c",
        "from nebula.cli.main import main; main()",
        "serve",
        "--db",
        db_url,
        "--listen",
        f"{HOST}:{port}",
        "--payload-dir",
        str(work),
        "--no-migrate",
        "--log-level",
        "warning",
    ]
    with (work / "serve.log").open("wb") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(15)


def _tree(pid: int) -> list[int]:
    """The process and its children (the workers)."""
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    return pids


def _cpu_ms(pid: int) -> float:
    """CPU time (user + system) the process and its children have used, in milliseconds: what
    a request costs the server, which other jobs on a shared machine stretch far less than its
    wall time."""
    ticks = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks * 1000 / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> list[float]:
    """Resident memory of the process and of each of its children (workers), in MB: the
    target is per worker, and `nebula serve` on PostgreSQL runs one per CPU under a parent."""
    sizes = []
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]) / 1024)
    return sizes


async def _wait_ready(
    http: aiohttp.ClientSession, base: str, process: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nebula serve exited with {process.returncode}")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with http.get(base + "/healthz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError("nebula serve did not come up within 60 s")


async def _time_get(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    async with http.get(url, headers=headers) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: {resp.status}")
    return (time.perf_counter() - started) * 1000


async def _deep_pages(db_url: str, hosts: int) -> list[tuple[str, str]]:
    """(name, path) of a page 90% of the way down the list in each sort, and give one host an
    alias to search for. The row there is found with OFFSET once, here: the API never does."""
    from nebula.store import instances as host_store
    from nebula.store.pages import encode_cursor

    depth = hosts * 9 // 10
    engine = db.create_engine(db_url)
    out = []
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE instances SET alias = 'db-primary' WHERE id = :id"),
                {"id": fleetsql.machine_id(4242)},
            )
            for name, query, columns, order in DEEP:
                row = (
                    await conn.execute(
                        text(
                            f"SELECT {columns} FROM instance_apps AS a JOIN instances AS i "
                            f"ON i.id = a.instance_id WHERE a.retired_at IS NULL "
                            f"ORDER BY {order} OFFSET :n LIMIT 1"
                        ),
                        {"n": depth},
                    )
                ).one()
                sort, direction = name.split(":")
                cursor = encode_cursor(host_store.SORTS[sort](direction == "desc"), list(row))
                out.append(
                    (f"instance list {sort} deep", f"/api/v1/instances?{query}&cursor={cursor}")
                )
    finally:
        await engine.dispose()
    return out


async def _current_hosts(db_url: str, count: int) -> list[Host]:
    """Known current hosts of stable amd64 (on the target, idle or complete), picked at random."""
    stable = fleetsql.TRACKS[0]
    engine = db.create_engine(db_url)
    try:
        async with engine.connect() as conn:
            ids = (
                await conn.execute(
                    text(
                        "SELECT a.instance_id, a.boot_id FROM instance_apps AS a "
                        "JOIN groups AS g ON g.id = a.group_id "
                        "WHERE g.track = :track AND g.arch = :arch AND a.version = :target "
                        "AND a.status IN ('idle', 'complete') AND NOT a.held "
                        "ORDER BY random() LIMIT :n"
                    ),
                    {
                        "track": stable.channel,
                        "arch": stable.arch,
                        "target": stable.target,
                        "n": count,
                    },
                )
            ).all()
    finally:
        await engine.dispose()
    return [Host(machine_id=m, version=stable.target, boot_id=b) for m, b in ids]


async def _checks(http: aiohttp.ClientSession, base: str, hosts: list[Host]) -> list[float]:
    out = []
    for host in hosts:
        body = host.check()
        started = time.perf_counter()
        async with http.post(
            base + "/v1/update/", data=body, headers={"Content-Type": "text/xml"}
        ) as resp:
            answer = await resp.read()
            if resp.status != 200 or b'status="noupdate"' not in answer:
                raise RuntimeError(f"check of {host.machine_id}: {resp.status} {answer[:300]!r}")
        out.append((time.perf_counter() - started) * 1000)
    return out


async def measure(server: str, hosts: int, calls: int, checks: int) -> Run:
    db_url = _url(server, database_name(hosts))
    engine = db.create_engine(db_url)
    try:
        token = await _token(engine)
    finally:
        await engine.dispose()
    port = _free_port()
    base = f"http://{HOST}:{port}"
    with tempfile.TemporaryDirectory(prefix="nebula-million-") as work:
        process = _start_server(db_url, port, Path(work))
        try:
            timeout = aiohttp.ClientTimeout(total=120)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                await _wait_ready(http, base, process)
                auth = {"Authorization": f"Bearer {token}"}
                timings: dict[str, Timings] = {}
                deep = [(n, p, None) for n, p in await _deep_pages(db_url, hosts)]
                for name, path, n in (*ROUTES, *deep):
                    ms = [await _time_get(http, base + path, auth)]  # a warm-up, not counted
                    if n == 1:  # the first scrape: the counts are read, then cached
                        timings[name] = Timings(name, ms)
                        continue
                    cpu = _cpu_ms(process.pid)
                    ms = [await _time_get(http, base + path, auth) for _ in range(n or calls)]
                    cpu_ms = (_cpu_ms(process.pid) - cpu) / len(ms)
                    timings[name] = Timings(name, ms, cpu_ms)
                sample = await _current_hosts(db_url, checks)
                timings["check (from db)"] = Timings(
                    "check (from db)", await _checks(http, base, sample)
                )
                timings["check (cached)"] = Timings(
                    "check (cached)", await _checks(http, base, sample)
                )
                rss = _rss_mb(process.pid)
        finally:
            _stop_server(process)
    return Run(hosts, None, timings, rss)


def report(runs: list[Run]) -> str:
    small, large = runs[0], runs[-1]
    lines = [
        f"{'':30} {small.hosts:>10,} hosts               {large.hosts:>10,} hosts",
        f"{'':30} {'median':>8} {'p95':>8} {'cpu':>6}   {'median':>8} {'p95':>8} {'cpu':>6}"
        "   ratio (median)",
    ]

    def cpu(t: Timings) -> str:
        return f"{t.cpu_ms:6.1f}" if t.cpu_ms is not None else f"{'':6}"

    for name, t_small in small.timings.items():
        t_large = large.timings[name]
        ratio = t_large.median / t_small.median if t_small.median else float("nan")
        lines.append(
            f"{name:30} {t_small.median:8.1f} {t_small.p95:8.1f} {cpu(t_small)}   "
            f"{t_large.median:8.1f} {t_large.p95:8.1f} {cpu(t_large)}   {ratio:5.2f}"
        )
    lines.append(
        "(milliseconds, one request at a time; cpu: the server's processes' CPU per call, "
        "PostgreSQL's not included)"
    )
    for run in runs:
        load = f", loaded in {run.load_seconds:.0f} s" if run.load_seconds is not None else ""
        each = ", ".join(f"{mb:.0f}" for mb in run.rss_mb)
        lines.append(f"{run.hosts:,} hosts: RSS after the run, MB (parent first): {each}{load}")
    return "\n".join(lines)


def cache_memory(entries: int) -> str:
    """RSS of `entries` host snapshots as the Omaha service keeps them (the checker's own
    shape: interned versions and group ids, a machine id string per host)."""
    from nebula.store.hostcache import HostCache, snapshot

    def rss() -> float:
        return _rss_mb(os.getpid())[0]

    gc.collect()
    before = rss()
    cache = HostCache(entries)
    group = "9a2deb70-37be-4026-853f-bfdd6b347bbe"
    app = "e96281a6-d1af-4bde-9a0a-97b76e56dc57"
    for n in range(entries):
        machine = fleetsql.machine_id(n)  # a fresh string per host, as parsed from a request
        entry = snapshot(app, group, "4152.2.3", "idle", None, False, hash(machine))
        # As after this process's own commit: the entry and the record of the host's change,
        # both of the cache's maps full (the worst case, a rollout through every host).
        cache.replace(machine, entry, cache.stamp())
    gc.collect()
    after = rss()
    per = (after - before) * 1024 * 1024 / entries
    return (
        f"host cache: {entries:,} snapshots, RSS {before:.0f} -> {after:.0f} MB "
        f"(+{after - before:.0f} MB, {per:.0f} bytes per host)"
    )


async def main_async(args: argparse.Namespace) -> None:
    sizes = [args.baseline, args.hosts]
    runs = []
    try:
        for size in sizes:
            load = None
            if not args.reuse:
                load = await create_and_load(args.db, size)
                print(f"loaded {size:,} hosts in {load:.1f} s", flush=True)
            recount, stored = await _consistency(args.db, size)
            if recount != stored:
                raise RuntimeError(f"status counts of {size} hosts disagree with a recount")
            run = await measure(args.db, size, args.calls, args.checks)
            run.load_seconds = load
            runs.append(run)
            print(f"measured {size:,} hosts", flush=True)
    finally:
        if not args.keep:
            for size in sizes:
                await _admin(
                    args.db, f'DROP DATABASE IF EXISTS "{database_name(size)}" WITH (FORCE)'
                )
    print(report(runs))


async def _consistency(server: str, hosts: int) -> tuple[fleetsql.Tally, fleetsql.Tally]:
    engine = db.create_engine(_url(server, database_name(hosts)))
    try:
        return await fleetsql.consistency(engine)
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nebula.loadtest.million", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--db",
        default="postgresql://postgres@127.0.0.1/postgres",
        help="a PostgreSQL server (its databases nebula_million_<size> are made and dropped)",
    )
    parser.add_argument("--hosts", type=int, default=1_000_000)
    parser.add_argument("--baseline", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=20, help="timed calls per admin route")
    parser.add_argument("--checks", type=int, default=300, help="update checks per pass")
    parser.add_argument("--keep", action="store_true", help="leave the databases")
    parser.add_argument("--reuse", action="store_true", help="measure databases kept before")
    parser.add_argument(
        "--cache-memory", type=int, metavar="N", help="only measure N host snapshots in memory"
    )
    args = parser.parse_args(argv)
    if args.cache_memory:
        print(cache_memory(args.cache_memory))
        return
    if not db.normalize_url(args.db).get_backend_name().startswith("postgresql"):
        parser.error("--db must be a PostgreSQL server")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
