"""`nebula serve --workers N` as an operator runs it (issue 7 item 3): real subprocesses on
PostgreSQL on a free port. Both workers answer on the one port, /metrics sums what they
counted, one process of the deployment runs the timeout sweep, SIGTERM drains every worker
and flushes its batched last-seen times, a killed worker is replaced (and leadership moves),
and SQLite refuses more than one worker. Waits are bounded polls; nothing is timed."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from nebula.store import db
from nebula.store.models import Instance
from tests.cli.serving import Serve, run_serve, start_serve
from tests.conftest import PgServer, free_port
from tests.factories import Host

WORKER = "X-Nebula-Worker"
LEADER_LINE = re.compile(r"leader: process (\d+) runs")


@pytest.fixture
async def pg_url(pg_server: PgServer | None) -> AsyncIterator[str]:
    if pg_server is None:
        pytest.skip("PostgreSQL unavailable (set NEBULA_TEST_PG)")
    url = await pg_server.new_database()
    yield url
    await pg_server.drop(url)


def _start(tmp_path: Path, db_url: str, *args: str, **settings: object) -> Serve:
    server = start_serve(
        tmp_path,
        free_port(),
        "--db",
        db_url,
        "--workers",
        "2",
        "--log-level",
        "info",
        *args,
        **settings,
    )
    server.wait_listening()
    return server


def _until(what: Callable[[], object], server: Serve, tries: int = 400) -> object:
    """Call `what` (one request each) until it returns something true; at most `tries` times."""
    for _ in range(tries):
        result = what()
        if result:
            return result
        if server.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"never happened in {tries} tries:\n{server.output()[-4000:]}")


def _worker_pids(server: Serve, want: int = 2) -> set[str]:
    seen: set[str] = set()

    def both() -> bool:
        status, _body, headers = server.get("/healthz")
        assert status == 200
        seen.add(headers[WORKER])
        return len(seen) >= want

    _until(both, server)
    return seen


def _metric(text: str, name: str) -> float:
    """The sum of every sample of `name` (all label sets)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _leaders(server: Serve) -> list[str]:
    return LEADER_LINE.findall(server.output())


async def _ips(db_url: str, machine_ids: list[str]) -> dict[str, str | None]:
    engine = db.create_engine(db_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(Instance.id, Instance.ip).where(Instance.id.in_(machine_ids))
            )
            return {row.id: row.ip for row in rows}
    finally:
        await engine.dispose()


def _serve_two_workers(tmp_path: Path, db_url: str) -> None:
    # A sweep five times a second, so that a second sweeper would show; a batch interval far
    # beyond the test, so that only the shutdown flush writes the steady-state check-ins.
    server = _start(
        tmp_path,
        db_url,
        sweep_interval="0.2",
        checkin_interval="60",
        trusted_proxy="127.0.0.1",
    )
    try:
        pids = _worker_pids(server)
        assert len(pids) == 2

        # Update checks spread over both workers (each on a connection of its own); the first
        # check of each host is a new host (durable), the second a steady-state check-in from
        # a new address, which only the batch writes.
        answered: dict[str, set[str]] = {"first": set(), "steady": set()}
        hosts: list[Host] = []

        def one_more_host() -> bool:
            host = Host(machine_id=f"{len(hosts):032x}")
            hosts.append(host)
            status, _b, headers = server.post("/v1/update/", host.check())
            assert status == 200
            answered["first"].add(headers[WORKER])
            status, _b, headers = server.post_from(
                "/v1/update/", host.check(), f"10.0.{len(hosts)}.1"
            )
            assert status == 200
            answered["steady"].add(headers[WORKER])
            return len(answered["first"]) == 2 and len(answered["steady"]) == 2 and len(hosts) >= 10

        _until(one_more_host, server, tries=200)
        checks = 2 * len(hosts)

        # Every scrape, whichever worker answers it, shows the totals of both.
        scraped: set[str] = set()

        def scrape_both() -> bool:
            status, body, headers = server.get("/metrics")
            assert status == 200
            text = body.decode()
            assert _metric(text, "nebula_omaha_requests_total") == checks, text
            assert _metric(text, "nebula_update_checks_total") == checks, text
            assert _metric(text, "nebula_omaha_request_duration_seconds_count") == checks
            assert _metric(text, "nebula_leader") == 1, text
            # Request durations are summed like counters; the hosts, read from the database
            # at scrape, are counted once, not once per worker.
            assert _metric(text, "nebula_http_request_duration_seconds_count") >= checks
            assert _metric(text, "nebula_instances") == len(hosts), text
            scraped.add(headers[WORKER])
            return len(scraped) == 2 and _metric(text, "nebula_timeout_sweeps_total") >= 3

        _until(scrape_both, server)
        # One process ran the sweeps: one leader, one of the workers, all along.
        leaders = _leaders(server)
        assert len(leaders) == 1 and leaders[0] in pids, server.output()

        assert server.stop(signal.SIGTERM) == 0, server.output()
        assert "Traceback" not in server.output()
        ids = [h.machine_id for h in hosts]
        ips = asyncio.run(_ips(db_url, ids))
        assert ips == {h.machine_id: f"10.0.{i + 1}.1" for i, h in enumerate(hosts)}
    finally:
        server.kill()


@pytest.mark.postgres
async def test_two_workers_share_the_port_count_together_and_flush_at_sigterm(
    tmp_path: Path, pg_url: str
) -> None:
    await asyncio.to_thread(_serve_two_workers, tmp_path, pg_url)


def _kill_the_leader(tmp_path: Path, db_url: str) -> None:
    server = _start(tmp_path, db_url, sweep_interval="0.2")
    try:
        pids = _worker_pids(server)
        server.wait_for(lambda: len(_leaders(server)) == 1)
        (leader,) = _leaders(server)
        assert leader in pids

        server.kill_worker(int(leader))
        server.wait_for(lambda: "died (killed by SIGKILL): starting a new one" in server.output())
        # The other worker (or the new one) takes over once PostgreSQL let go of the lock.
        server.wait_for(lambda: len(_leaders(server)) == 2)
        assert _leaders(server)[1] != leader
        # Both workers serve again, the new one in place of the killed one.
        now = _worker_pids(server)
        assert leader not in now and len(now & pids) == 1

        assert server.stop(signal.SIGTERM) == 0, server.output()
    finally:
        server.kill()


@pytest.mark.postgres
async def test_a_killed_worker_is_replaced_and_leadership_moves(
    tmp_path: Path, pg_url: str
) -> None:
    await asyncio.to_thread(_kill_the_leader, tmp_path, pg_url)


def _assert_refused(status: int, output: str, *words: str) -> None:
    assert status == 1, output
    assert "Traceback" not in output and "listening" not in output, output
    for word in words:
        assert word in output, (word, output)


@pytest.mark.postgres
async def test_a_worker_that_cannot_start_stops_the_server_in_one_line(
    tmp_path: Path, pg_url: str
) -> None:
    missing = tmp_path / "no-such-key.pem"
    status, output = await asyncio.to_thread(
        run_serve,
        tmp_path,
        free_port(),
        "--db",
        pg_url,
        "--workers",
        "2",
        "--trusted-key",
        str(missing),
    )
    _assert_refused(status, output, f"Error: trusted key {missing}")


@pytest.mark.parametrize("workers", ["2", "3"])
async def test_more_than_one_worker_on_sqlite_is_refused(tmp_path: Path, workers: str) -> None:
    status, output = await asyncio.to_thread(
        run_serve,
        tmp_path,
        free_port(),
        "--db",
        f"sqlite:///{tmp_path / 'nebula.db'}",
        "--workers",
        workers,
    )
    _assert_refused(status, output, "SQLite has one writer", f"not {workers}")
    assert not (tmp_path / "nebula.db").exists()
