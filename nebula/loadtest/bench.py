"""`nebula bench`: the Omaha hot path against a ceiling measured in the same run.

One run, everything on 127.0.0.1:

1. a database of its own (a temporary SQLite file, or a temporary database on the PostgreSQL
   server given with --db), migrated, with an admin token (nebula.loadtest.fleet);
2. two servers as subprocesses (nebula.loadtest.servers): the real `nebula serve` trusting a
   throwaway payload key, and the ceiling (nebula.loadtest.ceiling), a bare aiohttp process
   that answers every POST with the `noupdate` document Nebula sends a current host, each with
   the same number of processes;
3. a payload signed with the throwaway key uploaded through the admin API, stable amd64 pointed
   at it, and the host pools written into the tables (known current hosts, granted hosts, and
   for the grant-known phases idle hosts on the old version); then one check of a known host
   sent to both, whose answers must be the same bytes;
4. a warm-up of both, then for each phase (nebula.loadtest.workload) the same load on the
   ceiling and then on Nebula, from a generator in processes of its own: wrk
   (nebula.loadtest.wrk) or the Python one (nebula.loadtest.pygen);
5. a report: req/s, p50, p99 and errors (non-200, unexpected answer, timeout, socket error)
   per phase and server, the ratios of Nebula to the ceiling, and on Linux each server's CPU
   time per request (its processes' user and system time over the phase, from /proc). A
   grant-known phase grants each host of its pool at most once (a check past the pool's end
   would come from a new host: counted as an error), and the report says how many grants it
   wrote in the database.
   Absolute numbers drift with the machine and its neighbours; ratios taken minutes apart on
   one machine much less.

Every step has a time limit: servers must come up within a minute, each generator run is
killed well after its duration, servers get SIGTERM and then SIGKILL. Imports the rest of
nebula.loadtest, nebula.crau and nebula.store; runs the application only as a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from nebula import crau
from nebula.loadtest import fleet, pygen, servers, warm, wrk
from nebula.loadtest.workload import (
    KNOWN_GRANT_PHASES,
    NOUPDATE,
    PATH,
    PHASE_NAMES,
    Measurement,
    Phase,
    Pools,
    body_of,
    old_pool,
    phases,
    pools,
)
from nebula.store import db

REQUEST_TIMEOUT = 10  # seconds, per request
WARMUP = 2  # seconds of load on each server before the first phase, not reported
PAYLOAD_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Options:
    db: str | None  # a PostgreSQL server URL; None: a temporary SQLite file
    workers: int
    connections: int
    duration: int  # seconds per phase and server
    hosts: int
    phases: tuple[str, ...]
    generator: str  # "wrk" or "python"


@dataclass(frozen=True, slots=True)
class Row:
    phase: Phase
    ceiling: Measurement
    nebula: Measurement
    note: str = ""  # what else the report says of this phase
    # CPU seconds per answered request of each server's processes (None: not measured).
    ceiling_cpu: float | None = None
    nebula_cpu: float | None = None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def generator_threads(connections: int) -> int:
    """Generator threads (wrk) or processes (Python): half the CPUs, the rest for the server."""
    return max(1, min(connections, (os.cpu_count() or 1) // 2))


def serve_has_workers() -> bool:
    from nebula.cli.server import serve

    return any(p.name == "workers" for p in serve.params)


def serve_workers(workers: int, supported: bool) -> int | None:
    """The `--workers` to give nebula serve, or None to give none.

    Where serve has the option it is always given, 1 included: its default is a process per
    CPU, and a 1-worker bench must measure one. Where it has none yet, a serve without it is
    one process, so only more than one is refused.
    """
    if supported:
        return workers
    if workers > 1:
        raise RuntimeError("this nebula serve has no --workers yet: run the bench with 1 worker")
    return None


class _Load:
    """Runs one phase against one server with the chosen generator."""

    def __init__(self, options: Options, work: Path) -> None:
        self.options = options
        self.work = work
        self.threads = generator_threads(options.connections)
        self.wrk = wrk.available() if options.generator == "wrk" else None
        if options.generator == "wrk" and self.wrk is None:
            raise RuntimeError("--generator wrk: wrk is not installed (apt-get install wrk)")

    def describe(self) -> str:
        if self.wrk is not None:
            n = self.threads
            return f"{wrk.version(self.wrk)} ({n} thread{'s' * (n != 1)})"
        n = self.threads
        return f"python aiohttp ({n} process{'es' * (n != 1)})"

    def __call__(self, url: str, phase: Phase, duration: int) -> Measurement:
        o = self.options
        if self.wrk is not None:
            return wrk.run(
                self.wrk,
                url,
                phase,
                connections=o.connections,
                threads=self.threads,
                duration=duration,
                timeout=REQUEST_TIMEOUT,
                work=self.work,
            )
        spec = pygen.Spec(url, phase, self.threads, o.connections, duration, REQUEST_TIMEOUT)
        return pygen.run(spec, self.work)


@contextlib.contextmanager
def _database(options: Options, run_id: str, work: Path) -> Iterator[str]:
    """The URL of a database for this run only, removed afterwards."""
    if options.db is None:
        yield f"sqlite:///{work / 'bench.db'}"  # removed with `work`
        return
    name = fleet.bench_database_name(run_id)
    url = asyncio.run(fleet.create_database(options.db, name))
    try:
        yield url
    finally:
        asyncio.run(fleet.drop_database(options.db, name))


async def _setup_database(url: str, run_id: str) -> str:
    engine = db.create_engine(url)
    try:
        return await fleet.prepare(engine, run_id)
    finally:
        await engine.dispose()


def run(options: Options, echo: Callable[[str], None]) -> list[Row]:
    """The whole bench; `echo` gets the header and progress lines (the caller prints `report`)."""
    workers = serve_workers(options.workers, serve_has_workers())
    run_id = secrets.token_hex(3)
    # The pools on OLD are used up as their phases run: written only when one of them runs.
    old = options.hosts if set(KNOWN_GRANT_PHASES) & set(options.phases) else 0
    host_pools = pools(run_id, options.hosts, options.connections, old)
    all_phases = phases(run_id, host_pools)
    chosen = [all_phases[name] for name in options.phases]
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nebula-bench-")))
        load = _Load(options, work)
        echo(_header(options, load, run_id))
        started = time.monotonic()
        key = crau.make_rsa_key()
        key_file = work / "bench-key.pub.pem"
        key_file.write_bytes(crau.public_pem(key))
        payload = work / "flatcar_production_update.gz"
        payload.write_bytes(crau.build_payload(key, data=os.urandom(PAYLOAD_BYTES)))
        url = stack.enter_context(_database(options, run_id, work))
        token = asyncio.run(_setup_database(url, run_id))
        port, ceiling_port = servers.free_port(), servers.free_port()
        # Registered in order, stopped in reverse: both before the database goes.
        nebula_argv = servers.nebula_argv(port, url, work / "payloads", key_file, workers)
        nebula = servers.start("nebula", nebula_argv, port, work)
        stack.callback(servers.stop, nebula)
        ceiling_argv = servers.ceiling_argv(ceiling_port, options.workers)
        ceiling = servers.start("ceiling", ceiling_argv, ceiling_port, work)
        stack.callback(servers.stop, ceiling)
        servers.wait_ready(nebula)
        servers.wait_ready(ceiling)
        ready = time.monotonic()
        asyncio.run(_fill(url, nebula.url, token, payload, host_pools))
        _check_same_answer(all_phases["steady"], nebula, ceiling)
        hosts = host_pools.known_size + host_pools.granted_size + 2 * host_pools.old_size
        done = time.monotonic()
        echo(
            f"set up in {done - started:.1f} s (servers up in {ready - started:.1f} s, "
            f"payload and {hosts} hosts in {done - ready:.1f} s)"
        )
        servers_ = _Servers(nebula, ceiling, url, host_pools)
        return _measure(load, chosen, all_phases["steady"], servers_, options, echo)


def _check_same_answer(steady: Phase, nebula: servers.Server, ceiling: servers.Server) -> None:
    """The ceiling must send the very bytes Nebula sends a current host, or the ratio compares
    different work (a longer document, another header): checked on a known host every run."""
    body = body_of(steady, 0, 1, 1, 0)
    got, top = servers.post(nebula, PATH, body), servers.post(ceiling, PATH, body)
    if got != top:
        raise RuntimeError(
            "the ceiling does not answer what Nebula answers a current host:\n"
            f"nebula  {got[0]}: {got[1]!r}\nceiling {top[0]}: {top[1]!r}"
        )


async def _fill(url: str, base: str, token: str, payload: Path, host_pools: Pools) -> None:
    await fleet.publish(base, token, payload)
    engine = db.create_engine(url)
    try:
        await fleet.insert_pools(engine, host_pools)
    finally:
        await engine.dispose()


@dataclass(frozen=True, slots=True)
class _Servers:
    nebula: servers.Server
    ceiling: servers.Server
    db_url: str  # Nebula's database
    pools: Pools


async def _tally(url: str, prefix: str, size: int) -> fleet.Tally:
    engine = db.create_engine(url)
    try:
        return await fleet.tally(engine, prefix, size)
    finally:
        await engine.dispose()


def _measure(
    load: _Load,
    chosen: Sequence[Phase],
    warmup: Phase,
    at: _Servers,
    options: Options,
    echo: Callable[[str], None],
) -> list[Row]:
    # The ceiling answers everything with its noupdate document: that is what its answers are
    # checked for, with the same check (and so the same generator work) as Nebula's.
    def as_ceiling(phase: Phase) -> Phase:
        return dataclasses.replace(phase, expect=NOUPDATE)

    nebula, ceiling = at.nebula, at.ceiling
    load(ceiling.url, as_ceiling(warmup), min(WARMUP, options.duration))
    load(nebula.url, warmup, min(WARMUP, options.duration))
    rows = []
    for phase in chosen:
        note = ""
        if phase.name == "steady":
            # Measured as in production: with the hosts in the server's memory (warm.py).
            echo(asyncio.run(warm.warm(nebula.url, phase, options.workers)).describe())
            before = asyncio.run(warm.lookups(nebula.url))
        # Side by side, ceiling first: whatever else the machine does then touches both.
        top, top_cpu = _loaded(load, ceiling, as_ceiling(phase), options.duration)
        got, got_cpu = _loaded(load, nebula, phase, options.duration)
        if phase.name == "steady":
            share = asyncio.run(warm.lookups(nebula.url)).since(before).hit_share
            note = f"{100 * share:.1f}% of nebula's checks answered from its host cache"
        if phase.name in KNOWN_GRANT_PHASES:
            size = at.pools.old_size
            tally = asyncio.run(_tally(at.db_url, old_pool(phase.name, at.pools), size))
            note = tally.describe(size)
            if tally.strangers:
                # Not the known-host grant this phase measures: the pool was too small.
                note += f" (give more --hosts than {size})"
                got = dataclasses.replace(got, errors=got.errors + tally.strangers)
        rows.append(Row(phase, top, got, note, top_cpu, got_cpu))
    return rows


def _loaded(
    load: _Load, server: servers.Server, phase: Phase, duration: int
) -> tuple[Measurement, float | None]:
    """One phase's load on one server, and the server's CPU seconds per answered request."""
    before = servers.cpu_seconds(server)
    measured = load(server.url, phase, duration)
    after = servers.cpu_seconds(server)
    if before is None or after is None or measured.requests == 0:
        return measured, None
    return measured, (after - before) / measured.requests


def _header(options: Options, load: _Load, run_id: str) -> str:
    database = (
        "temporary SQLite file"
        if options.db is None
        else f"temporary PostgreSQL database {fleet.bench_database_name(run_id)}"
    )
    w = options.workers
    return (
        f"nebula bench: {os.cpu_count()} CPUs ({cpu_model()}), generator {load.describe()}, "
        f"{options.connections} connections, {options.duration} s per phase and server\n"
        f"servers: nebula serve and the ceiling (bare aiohttp, constant noupdate), "
        f"{w} process{'es' * (w != 1)} each; database {database}, {options.hosts} known hosts"
    )


def report(rows: Sequence[Row]) -> list[str]:
    lines = [
        f"{'phase':<21}{'what':<37}{'server':<9}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}"
    ]
    for row in rows:
        for name, m in (("ceiling", row.ceiling), ("nebula", row.nebula)):
            lines.append(
                f"{row.phase.name:<21}{row.phase.title:<37}{name:<9}{m.rate:>10.1f}"
                f"{m.p50_ms:>9.2f}{m.p99_ms:>9.2f}{m.errors:>8}"
            )
    lines.append(
        "ratios of nebula to the ceiling of this run (throughput: higher is better, at most 1; "
        "latency: lower is better):"
    )
    for row in rows:
        lines.append(
            f"ratio {row.phase.name}: throughput {_ratio(row.nebula.rate, row.ceiling.rate):.3f}x, "
            f"p50 {_ratio(row.nebula.p50_ms, row.ceiling.p50_ms):.2f}x, "
            f"p99 {_ratio(row.nebula.p99_ms, row.ceiling.p99_ms):.2f}x"
        )
    for row in rows:
        if row.ceiling_cpu is not None and row.nebula_cpu is not None:
            # The work per request, which other jobs on the machine disturb far less than
            # the rates: the steadier figure to compare between runs and commits.
            lines.append(
                f"cpu {row.phase.name}: nebula {row.nebula_cpu * 1e6:.0f} us/request, "
                f"ceiling {row.ceiling_cpu * 1e6:.0f} us/request, "
                f"ratio {_ratio(row.ceiling_cpu, row.nebula_cpu):.3f}x"
            )
    lines.extend(f"{row.phase.name}: {row.note}" for row in rows if row.note)
    return lines


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


__all__ = ["PHASE_NAMES", "Options", "Row", "report", "run"]
