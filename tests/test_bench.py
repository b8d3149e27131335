"""`nebula bench` and its parts: the generators send what the workload says, the ceiling answers
what Nebula answers, the host pools are the hosts the phases address, and the whole bench runs
end to end with tiny numbers on both databases and with both generators.

No timing is asserted: machines are noisy. What is checked is that every phase ran without a
failed or unexpected answer (a grant phase answer must be `ok`, a steady-state one `noupdate`)
and that the report has the lines a reader compares between runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import urllib.request
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner
from sqlalchemy import func, insert, make_url, select

from nebula.cli.bench import PHASES, bench
from nebula.loadtest import ceiling, fleet, pygen, servers, wrk
from nebula.loadtest.bench import Options, report, serve_has_workers, serve_workers
from nebula.loadtest.bench import run as run_bench
from nebula.loadtest.workload import (
    OLD,
    PHASE_NAMES,
    TARGET,
    Phase,
    body_of,
    boot_id,
    fill,
    machine_id,
    phases,
    pools,
    template,
)
from nebula.store import db
from nebula.store.counts import counts_of_group
from nebula.store.models import Grant, Group, InstanceApp, Package
from tests.conftest import PG_ADMIN_URL, PgServer, _asyncpg_dsn, require_tools
from tests.factories import assert_status_counts_match

HAVE_WRK = wrk.available() is not None
_NUMBER = r"[0-9.]+|inf|nan"
_MID = re.compile(rb'machineid="([0-9a-f]{32})"')
_EVENT = re.compile(rb'eventtype="(\d+)"')


def _check_report(output: str, names: tuple[str, ...] = PHASE_NAMES) -> None:
    for phase in names:
        for server in ("ceiling", "nebula"):
            row = re.search(rf"^{phase} .*? {server} +(\S+) +(\S+) +(\S+) +(\d+)$", output, re.M)
            assert row is not None, f"no {server} row for {phase}:\n{output}"
            assert row.group(4) == "0", f"{phase} on {server} had errors:\n{output}"
        ratio = rf"^ratio {phase}: throughput ({_NUMBER})x, p50 ({_NUMBER})x, p99 ({_NUMBER})x$"
        assert re.search(ratio, output, re.M), f"no ratio line for {phase}:\n{output}"
        cpu = re.search(
            rf"^cpu {phase}: nebula (\d+) us/request, ceiling (\d+) us/request, "
            rf"ratio ({_NUMBER})x$",
            output,
            re.M,
        )
        assert cpu is not None, f"no cpu line for {phase}:\n{output}"
        # Both servers did work for their answers: a CPU reading of the wrong processes (the
        # bench's own, or none) gives 0.
        assert int(cpu.group(1)) > 0 and int(cpu.group(2)) > 0, output
    for phase in set(PHASE_NAMES) - set(names):
        assert not re.search(rf"^(ratio )?{phase}[ :]", output, re.M), f"{phase} ran:\n{output}"
    assert re.search(r"^nebula bench: \d+ CPUs \(.+\), generator ", output, re.M), output


# A second of load per phase and server (and a second of warm-up), 40 hosts: a bench test
# takes seconds. The default runs split the phases between them; every phase on every
# database with both generators is the slow test below.
_TINY = ["--duration", "1", "--connections", "4", "--hosts", "40"]


def test_bench_with_the_python_generator_on_sqlite() -> None:
    result = CliRunner().invoke(
        bench, [*_TINY, "--generator", "python", "--phases", "steady,grant"]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    _check_report(result.output, ("steady", "grant"))
    assert "generator python aiohttp" in result.output
    # Steady state is measured warm, as a server that has been up a while answers: one worker
    # whose cache holds all 40 hosts after the warm pass answers every measured check from it.
    assert re.search(r"^host cache warmed: 1 pass over 40 known hosts", result.output, re.M)
    share = re.search(
        r"^steady: ([0-9.]+)% of nebula's checks answered from its host cache", result.output, re.M
    )
    assert share is not None and float(share.group(1)) == 100.0, result.output
    assert "temporary SQLite file" in result.output


def test_bench_with_wrk_on_sqlite() -> None:
    require_tools("wrk")
    phases_ = ("events", "ping")
    result = CliRunner().invoke(
        bench, [*_TINY, "--generator", "wrk", "--phases", ",".join(phases_)]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    _check_report(result.output, phases_)
    assert "generator wrk" in result.output


async def _database_names() -> set[str]:
    conn = await asyncpg.connect(_asyncpg_dsn(PG_ADMIN_URL), timeout=5)
    try:
        return {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")}
    finally:
        await conn.close()


def _options(names: tuple[str, ...], generator: str, db: str | None = None) -> Options:
    return Options(
        db=db,
        workers=1,
        connections=4,
        duration=1,
        hosts=40,
        phases=names,
        generator=generator,
    )


@pytest.mark.postgres
def test_bench_on_postgresql_makes_and_drops_its_own_database(
    pg_server: PgServer | None,
) -> None:
    if pg_server is None:
        pytest.skip("PostgreSQL unavailable (set NEBULA_TEST_PG); CI never skips this")
    # Other tests and benches create and drop databases on this server meanwhile: only this
    # run's own database is looked at. Its name is in the header; when the set-up line comes,
    # the hosts are written, so the database must exist then, and be gone after the run.
    lines: list[str] = []
    seen_during_run: list[bool] = []

    def echo(line: str) -> None:
        lines.append(line)
        if line.startswith("set up in"):
            name = re.search(
                r"temporary PostgreSQL database (nebula_bench_[0-9a-f]{6})\b", lines[0]
            )
            assert name is not None, lines[0]
            seen_during_run.append(name.group(1) in asyncio.run(_database_names()))

    generator = "wrk" if HAVE_WRK else "python"
    # grant-limited: every answer must be a grant decided on counts (limits that never bind).
    names = ("steady", "grant", "grant-limited")
    rows = run_bench(_options(names, generator, PG_ADMIN_URL), echo)
    output = "\n".join([*lines, *report(rows)])
    _check_report(output, names)
    used = re.search(r"temporary PostgreSQL database (nebula_bench_[0-9a-f]{6})\b", output)
    assert used is not None, output
    assert seen_during_run == [True]
    after = asyncio.run(_database_names())
    assert used.group(1) not in after
    assert make_url(PG_ADMIN_URL).database in after  # the one in --db is only connected to


# Idle hosts on the old version per grant-known phase: more than a second of grants takes.
_KNOWN_HOSTS = 3000
_KNOWN_NOTE = re.compile(
    r"^(grant-known(?:-limited)?): (\d+) grants written to (\d+) of (\d+) known hosts on "
    r"3815\.2\.0; (\d+) checks from hosts past the pool",
    re.M,
)


def _nebula_requests(output: str, phase: str) -> int:
    row = re.search(rf"^{phase} .*? nebula +(\S+) ", output, re.M)
    assert row is not None, output
    return round(float(row.group(1)))  # a second of load: req/s is the count


@pytest.mark.parametrize(
    ("generator", "database"),
    [
        # wrk on PostgreSQL: each grant is the known host's one statement (knowngrant.py)
        pytest.param("wrk", "postgres", marks=pytest.mark.postgres),
        ("python", "sqlite"),  # the transaction
    ],
)
def test_known_hosts_are_granted_once_each(
    generator: str, database: str, pg_server: PgServer | None
) -> None:
    if generator == "wrk":
        require_tools("wrk")
    if database == "postgres" and pg_server is None:
        pytest.skip("PostgreSQL unavailable (set NEBULA_TEST_PG); CI never skips this")
    names = ("grant-known", "grant-known-limited")
    args = [*_TINY, "--hosts", str(_KNOWN_HOSTS), "--generator", generator]
    args += ["--phases", ",".join(names)]
    if database == "postgres":
        args += ["--db", PG_ADMIN_URL]
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    # No errors: every answer was an update offered (a noupdate is an unexpected answer).
    _check_report(result.output, names)
    notes = {m.group(1): m.groups()[1:] for m in _KNOWN_NOTE.finditer(result.output)}
    assert set(notes) == set(names), result.output
    for phase, (grants, hosts, size, strangers) in notes.items():
        # What the database says: a grant row per answer (more for requests still in flight
        # when the generator stopped), each to another host of the pool, and no new host.
        assert int(grants) == int(hosts) >= _nebula_requests(result.output, phase) > 0, phase
        assert (int(size), int(strangers)) == (_KNOWN_HOSTS, 0), phase


def test_a_known_pool_used_up_is_an_error() -> None:
    # Three hosts and a second of load: the checks past them come from new hosts, whose first
    # check is not what the phase measures. A phase that cycled through its pool instead
    # would check a granted host again, which is granted again: only the count tells.
    args = [*_TINY, "--hosts", "3", "--generator", "python", "--phases", "grant-known"]
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 1, result.output
    note = _KNOWN_NOTE.search(result.output)
    assert note is not None, result.output
    assert note.group(2, 3, 4) == ("3", "3", "3")
    assert int(note.group(5)) > 0
    assert "(give more --hosts than 3)" in result.output
    assert "requests failed or got an unexpected answer" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("generator", ["wrk", "python"])
@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_bench_runs_every_phase(generator: str, database: str, pg_server: PgServer | None) -> None:
    if generator == "wrk":
        require_tools("wrk")
    if database == "postgres" and pg_server is None:
        pytest.skip("PostgreSQL unavailable (set NEBULA_TEST_PG); CI never skips this")
    # The grant-known phases grant each host of their pools once: more than a second takes.
    args = [*_TINY, "--hosts", str(_KNOWN_HOSTS), "--generator", generator]
    if database == "postgres":
        args += ["--db", PG_ADMIN_URL]
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    _check_report(result.output)


@pytest.mark.parametrize(
    "args",
    [
        ["--connections", "0"],
        ["--duration", "0"],
        ["--duration", "601"],
        ["--hosts", "0"],
        ["--phases", "steady,bogus"],
        ["--phases", ""],
        ["--db", "sqlite:///somebody-elses.db"],
        ["--generator", "ab"],
    ],
)
def test_bench_refuses_options_out_of_bounds(args: list[str]) -> None:
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 2, result.output


@pytest.mark.parametrize(
    ("workers", "supported", "given"),
    [
        (1, True, 1),  # serve's own default is a process per CPU: 1 must be said
        (3, True, 3),
        (1, False, None),  # a serve without --workers is one process
    ],
)
def test_serve_gets_the_workers_asked_for(workers: int, supported: bool, given: int | None) -> None:
    assert serve_workers(workers, supported) == given


def test_a_serve_without_workers_is_not_run_with_several() -> None:
    with pytest.raises(RuntimeError, match="no --workers"):
        serve_workers(2, supported=False)


def test_bench_says_when_serve_has_no_workers_yet() -> None:
    if serve_has_workers():
        pytest.skip("nebula serve has --workers")
    result = CliRunner().invoke(bench, [*_TINY, "--workers", "2"])
    assert result.exit_code == 1
    assert "no --workers" in result.output


def test_the_light_cli_module_knows_every_phase() -> None:
    assert PHASES == PHASE_NAMES


def test_templates_are_update_engine_bytes() -> None:
    golden = Path(__file__).parent / "data/omaha/update_check.xml"
    body = fill(
        template(
            "3815.2.0",
            '        <ping active="1"></ping>\n'
            "        <updatecheck></updatecheck>\n"
            '        <event eventtype="3" eventresult="2" previousversion=""></event>\n',
        ),
        "dbff85b41ae14f41bde761eefbdafaac",
    )
    expected = golden.read_bytes().replace(
        b"{0c288430-2504-4db4-913a-8c3de52afd07}",
        boot_id("dbff85b41ae14f41bde761eefbdafaac").encode(),
    )
    assert body == expected
    assert phases("abcdef", pools("abcdef", 10, 4))["steady"].templates[0] == template(
        TARGET,
        '        <ping active="1"></ping>\n'
        "        <updatecheck></updatecheck>\n"
        '        <event eventtype="3" eventresult="2" previousversion=""></event>\n',
    )


# -- the generators send what the workload says ----------------------------------------------


async def _recorder(answer: bytes) -> tuple[TestServer, list[bytes]]:
    received: list[bytes] = []

    async def record(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(body=answer, content_type="text/xml")

    app = web.Application()
    app.router.add_post("/v1/update/", record)
    server = TestServer(app, host="127.0.0.1", port=servers.free_port())
    await server.start_server()
    return server, received


def _check_sent(phase: Phase, received: list[bytes], connections: int, threads: int = 1) -> None:
    assert received, "nothing was sent"
    # Request k of thread t is body_of(phase, t, threads, connections, k). Requests in flight
    # at the stop may be missing, so compare with a few more than arrived.
    expected = {
        body_of(phase, t, threads, connections, k)
        for t in range(threads)
        for k in range(len(received) + connections)
    }
    assert set(received) <= expected
    # The first request of every thread went out (wrk's check of the script took none of them).
    assert {body_of(phase, t, threads, connections, 0) for t in range(threads)} <= set(received)
    assert len(set(received)) >= len(received) - connections  # distinct requests, not repeats
    # Each host's events arrive in update_engine's order: 13, 14, 3, (then again after a wrap).
    seen: dict[bytes, list[int]] = defaultdict(list)
    for body in received:
        mid, event = _MID.search(body), _EVENT.search(body)
        assert mid is not None and event is not None
        seen[mid.group(1)].append(int(event.group(1)))
    for events in seen.values():
        assert events == [13, 14, 3][: len(events)], events


def _events_phase() -> Phase:
    return phases("abcdef", pools("abcdef", 100_000, 4))["events"]


async def test_wrk_sends_the_workload_and_checks_every_answer(tmp_path: Path) -> None:
    require_tools("wrk")
    phase = _events_phase()
    server, received = await _recorder(b'<event status="ok"></event>')
    try:
        url = str(server.make_url("")).rstrip("/")
        run = wrk.run
        measured = await asyncio.to_thread(
            run,
            wrk.available() or "wrk",
            url,
            phase,
            connections=4,
            threads=1,
            duration=1,
            timeout=5,
            work=tmp_path,
        )
        assert measured.errors == 0
        assert 0 < measured.requests <= len(received)
        _check_sent(phase, received, 4)
        # A server of its own for the next run: a request of this run that wrk sent just
        # before it stopped can still be read here after wrk exits (a loaded machine), and it
        # would land among the next run's requests as a stray event of another host.
        first = server
        server, received = await _recorder(b'<event status="ok"></event>')
        await first.close()
        two = await asyncio.to_thread(
            run,
            wrk.available() or "wrk",
            str(server.make_url("")).rstrip("/"),
            phase,
            connections=4,
            threads=2,
            duration=1,
            timeout=5,
            work=tmp_path,
        )
        assert two.errors == 0
        _check_sent(phase, received, 4, threads=2)
        # An answer without the expected fragment is an error.
        wrong = dataclasses.replace(phase, expect="<nothing-like-this")
        bad = await asyncio.to_thread(
            run,
            wrk.available() or "wrk",
            str(server.make_url("")).rstrip("/"),
            wrong,
            connections=2,
            threads=1,
            duration=1,
            timeout=5,
            work=tmp_path,
        )
        assert bad.errors == bad.requests > 0
    finally:
        await server.close()


async def test_the_python_generator_sends_the_workload_and_checks_every_answer(
    tmp_path: Path,
) -> None:
    phase = _events_phase()
    server, received = await _recorder(b'<event status="ok"></event>')
    try:
        url = str(server.make_url("")).rstrip("/")
        spec = pygen.Spec(url, phase, processes=1, connections=4, duration=1, timeout=5)
        measured = await asyncio.to_thread(pygen.run, spec, tmp_path)
        assert measured.errors == 0
        assert measured.requests == len(received) > 0
        _check_sent(phase, received, 4)
        wrong = pygen.Spec(
            url,
            dataclasses.replace(phase, expect="<nothing-like-this"),
            processes=2,
            connections=2,
            duration=1,
            timeout=5,
        )
        received.clear()
        bad = await asyncio.to_thread(pygen.run, wrong, tmp_path)
        assert bad.errors == bad.requests > 0
        _check_sent(phase, received, 2, threads=2)
    finally:
        await server.close()


def test_wrk_output_is_parsed_without_counting_a_bad_status_twice() -> None:
    line = (
        "noise\nNEBULA_WRK requests=1000 duration_us=2000000 p50_us=1500 p99_us=9000 "
        "unexpected=3 connect=1 read=0 write=0 timeout=2 status=3\n"
    )
    m = wrk.parse(line)
    assert (m.requests, m.seconds, m.p50_ms, m.p99_ms, m.errors) == (1000, 2.0, 1.5, 9.0, 6)
    assert m.rate == 500.0
    with pytest.raises(ValueError):
        wrk.parse("Running 1s test @ http://127.0.0.1:1/\n")


# -- the ceiling ------------------------------------------------------------------------------


async def test_the_ceiling_answers_what_nebula_answers_a_current_host(
    client: TestClient[web.Request, web.Application],
) -> None:
    phase = phases("abcdef", pools("abcdef", 10, 4))["first-seen"]
    resp = await client.post("/v1/update/", data=body_of(phase, 0, 1, 4, 0))
    assert resp.status == 200
    assert await resp.read() == ceiling.noupdate_document()


def test_the_ceiling_runs_workers_on_one_port_and_stops_with_them(tmp_path: Path) -> None:
    port = servers.free_port()
    server = servers.start("ceiling", servers.ceiling_argv(port, 2), port, tmp_path)
    try:
        servers.wait_ready(server)
        for _ in range(5):
            with urllib.request.urlopen(
                urllib.request.Request(server.url + "/v1/update/", data=b"<x/>"), timeout=5
            ) as resp:
                assert resp.read() == ceiling.noupdate_document()
    finally:
        servers.stop(server)
    assert server.process.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(server.process.pid, 0)  # nobody left in its process group


# -- the host pools ---------------------------------------------------------------------------


async def test_pool_hosts_are_the_hosts_the_phases_address(db_url: str) -> None:
    engine = db.create_engine(db_url)
    try:
        async with db.transaction(db.session_factory(engine)) as session:
            await session.execute(
                insert(Package).values(
                    id="bench-package",
                    app_id="e96281a6-d1af-4bde-9a0a-97b76e56dc57",
                    version=TARGET,
                    arch="amd64",
                    kind="full",
                    created_at=datetime.now(UTC),
                    created_by="test",
                )
            )
        # 30 known, 30 granted (4*4 < 30), 20 on the old version in each of stable and beta
        host_pools = pools("abcdef", 30, 4, 20)
        await fleet.insert_pools(engine, host_pools)
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        InstanceApp.instance_id,
                        InstanceApp.boot_id,
                        InstanceApp.status,
                        InstanceApp.version,
                        InstanceApp.track,
                        InstanceApp.granted_package_id,
                    )
                )
            ).all()
            group_ids = dict(
                (
                    await conn.execute(select(Group.track, Group.id).where(Group.arch == "amd64"))
                ).all()
            )
        async with db.transaction(db.session_factory(engine)) as session:
            counted = await counts_of_group(session, group_ids["stable"])
            counted_beta = await counts_of_group(session, group_ids["beta"])
            grants = (await session.execute(select(func.count()).select_from(Grant))).scalar_one()
        tally = await fleet.tally(engine, host_pools.old, 20)
    finally:
        await engine.dispose()
    known = {machine_id(host_pools.known, n) for n in range(30)}
    granted = {machine_id(host_pools.granted, n) for n in range(30)}
    old = {machine_id(host_pools.old, n) for n in range(20)}
    old_beta = {machine_id(host_pools.old_limited, n) for n in range(20)}
    by_id = {r.instance_id: r for r in rows}
    assert set(by_id) == known | granted | old | old_beta
    for mid, row in by_id.items():
        assert row.boot_id == boot_id(mid)
        assert (row.status, row.version, row.track, row.granted_package_id) == (
            ("idle", TARGET, "stable", None)
            if mid in known
            else ("granted", OLD, "stable", "bench-package")
            if mid in granted
            else ("idle", OLD, "stable" if mid in old else "beta", None)
        )
    assert counted == {"idle": 30 + 20, "granted": 30}
    assert counted_beta == {"idle": 20}
    assert grants == 30
    assert tally == fleet.Tally(0, 0, 0)  # nothing granted yet, no host past the pool
    await assert_status_counts_match(db_url, by_version=True)
    # What the phases send addresses exactly these hosts.
    all_phases = phases("abcdef", host_pools)
    sent = {
        _machine_id_in(body_of(all_phases[name], t, 2, 4, k))
        for name in ("steady", "events", "ping")
        for t in range(2)
        for k in range(200)
    }
    assert sent == known | granted
    # A grant-known phase addresses its pool in order, and never a host twice.
    for name, pool in (("grant-known", old), ("grant-known-limited", old_beta)):
        first = [
            _machine_id_in(body_of(all_phases[name], t, 2, 4, k)) for k in range(10) for t in (0, 1)
        ]
        assert set(first) == pool
        many = [
            _machine_id_in(body_of(all_phases[name], t, 2, 4, k))
            for k in range(500)
            for t in (0, 1)
        ]
        assert len(set(many)) == len(many)


def _machine_id_in(body: bytes) -> str:
    found = _MID.search(body)
    assert found is not None, body
    return found.group(1).decode()
