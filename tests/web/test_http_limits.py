"""Slow, oversized and malformed HTTP from outside (issue 8, found already): each is cut off or
answered for what it is, logged in one line at INFO with nothing raw in it, and leaves nothing
behind; slow clients do not starve the others; SIGTERM answers a request whose body is still
arriving and the process exits without waiting out its shutdown timeout.

Real sockets: the app runs under aiohttp's AppRunner with `runner_options(settings)`, exactly as
`nebula serve` runs it, and the misbehaving clients are raw TCP connections.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.web.app import create_app
from nebula.web.serve import runner_options
from tests.cli.serving import start_serve
from tests.conftest import FakeClock, free_port
from tests.factories import Host, make_settings

BOUND = 30.0  # seconds: a liveness bound, never a measurement
STATE_TABLES = ("instances", "instance_apps", "events")


class Served:
    """The app on a real socket under AppRunner with Nebula's runner options."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self.runner, self.host, self.port = runner, "127.0.0.1", port
        self.url = f"http://127.0.0.1:{port}"

    def connections(self) -> int:
        server = self.runner.server
        return len(server.connections) if server is not None else 0


@pytest.fixture
async def serve(
    db_url: str, tmp_path: Path, key_file: Path, clock: FakeClock
) -> AsyncIterator[Callable[..., Any]]:
    """serve(**settings) starts the app with those settings; each is stopped at the test's end."""
    runners: list[web.AppRunner] = []

    async def start(**overrides: object) -> Served:
        settings = make_settings(db_url, tmp_path, key_file, **overrides)
        runner = web.AppRunner(create_app(settings, clock=clock), **runner_options(settings))
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return Served(runner, port)

    yield start
    for runner in runners:
        await runner.cleanup()


def check_body(machine_id: str = "c" * 32) -> bytes:
    return Host(machine_id=machine_id).check()


def head(body_length: int, path: str = "/v1/update/") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
        f"Content-Length: {body_length}\r\n\r\n"
    ).encode()


async def status_of(reader: asyncio.StreamReader) -> int:
    """The status of the answer on `reader` (waited for within BOUND)."""
    async with asyncio.timeout(BOUND):
        line = await reader.readline()
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", line)
    assert match, line
    return int(match.group(1))


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Whether the server closed the connection (EOF or reset) within BOUND, without answering."""
    async with asyncio.timeout(BOUND):
        try:
            return await reader.read(1) == b""
        except ConnectionResetError:
            return True


async def state_counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        return {
            t: int((await conn.execute(text(f"SELECT count(*) FROM {t}"))).scalar_one())
            for t in STATE_TABLES
        }


async def normal_check(served: Served) -> int:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=BOUND)) as http,
        http.post(served.url + "/v1/update/", data=check_body("d" * 32)) as resp,
    ):
        await resp.read()
        return resp.status


# -- slow bodies and heads ----------------------------------------------------------------------


async def test_a_body_that_stalls_half_way_is_answered_408(
    serve: Callable[..., Any], engine: AsyncEngine
) -> None:
    """Catches a body read with no deadline: the answer never comes (BOUND trips)."""
    served = await serve(body_timeout=1)
    body = check_body()
    reader, writer = await asyncio.open_connection(served.host, served.port)
    writer.write(head(len(body)) + body[: len(body) // 2])
    await writer.drain()
    assert await status_of(reader) == 408
    writer.close()
    assert await state_counts(engine) == dict.fromkeys(STATE_TABLES, 0)
    assert await normal_check(served) == 200


async def test_a_body_trickled_byte_by_byte_is_answered_408(serve: Callable[..., Any]) -> None:
    """Catches a timeout per read instead of one deadline for the whole body: a byte every
    0.2 s would keep each read alive forever."""
    served = await serve(body_timeout=1)
    body = check_body()
    reader, writer = await asyncio.open_connection(served.host, served.port)
    writer.write(head(len(body)))
    answer = asyncio.ensure_future(status_of(reader))
    for byte in body:
        if answer.done():
            break
        writer.write(bytes([byte]))
        await asyncio.sleep(0.2)
    assert await answer == 408
    writer.close()


async def test_a_head_trickled_byte_by_byte_is_cut_off(serve: Callable[..., Any]) -> None:
    """Catches aiohttp's default keep-alive timer (an hour): a head trickled in at one byte
    per 0.2 s is cut off once header_timeout has passed since the connection started."""
    served = await serve(header_timeout=1)
    reader, writer = await asyncio.open_connection(served.host, served.port)
    cut = asyncio.ensure_future(closed_by_server(reader))
    for byte in b"POST /v1/update/ HTTP/1.1\r\n" + b"X-Slow: " + b"a" * 1000:
        if cut.done():
            break
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            break
        await asyncio.sleep(0.2)
    assert await cut
    writer.close()


async def test_headers_over_the_budget_are_refused_431(serve: Callable[..., Any]) -> None:
    """100 headers of 1 KB (100 KB, each line and their count within aiohttp's own limits) were
    answered 200; the budget refuses them, while 20 of them (20 KB) still pass."""
    served = await serve()
    body = check_body()

    async def post_with(count: int) -> int:
        extra = "".join(f"X-Pad-{i}: {'p' * 1000}\r\n" for i in range(count))
        reader, writer = await asyncio.open_connection(served.host, served.port)
        writer.write(head(len(body)).replace(b"\r\n\r\n", f"\r\n{extra}\r\n".encode()) + body)
        await writer.drain()
        try:
            return await status_of(reader)
        finally:
            writer.close()

    assert await post_with(100) == 431
    assert await post_with(20) == 200


# -- what reaches the log ------------------------------------------------------------------------

MALFORMED = [
    b"GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n",  # a control character in the request line
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: \x00\r\n\r\n",  # a NUL in a header
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Long: " + b"a" * 9000 + b"\r\n\r\n",  # line too long
    # A chunk size that is no number.
    b"POST /v1/update/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"ZZ\r\nab\r\n0\r\n\r\n",
    # A gzip body that is not one: aiohttp fails to decode it while the handler reads it.
    b"POST /v1/update/ HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nContent-Encoding: gzip\r\n"
    b"\r\n0123456789",
]


def unprintable(record: logging.LogRecord) -> bool:
    return re.search("[\x00-\x1f\x7f]", record.getMessage()) is not None


@pytest.mark.parametrize("raw", MALFORMED, ids=["url", "header-nul", "long", "chunk", "gzip"])
async def test_a_malformed_request_is_one_info_line(
    serve: Callable[..., Any], caplog: pytest.LogCaptureFixture, raw: bytes
) -> None:
    """Catches aiohttp's own logging (a traceback at ERROR for each) and a body aiohttp cannot
    decode reaching the error middleware as an unexpected error (a 500)."""
    served = await serve()
    with caplog.at_level(logging.DEBUG):
        # A first request on the connection: aiohttp logs a bad method there at DEBUG only.
        reader, writer = await asyncio.open_connection(served.host, served.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await status_of(reader) == 200
        writer.close()
        reader, writer = await asyncio.open_connection(served.host, served.port)
        writer.write(raw)
        await writer.drain()
        assert await status_of(reader) == 400
        writer.close()
        await asyncio.sleep(0.1)  # the lingering read of an unread body logs after the answer
    records = [r for r in caplog.records if not r.name.startswith("asyncio")]
    loud = [(r.name, r.levelname, r.getMessage()) for r in records if r.levelno >= logging.WARNING]
    assert loud == []
    assert not [r for r in records if r.exc_info], "no traceback for a client's mistake"
    lines = [r for r in records if r.levelno == logging.INFO and "malformed" in r.getMessage()]
    assert lines, [r.getMessage() for r in records]
    assert not [r for r in records if unprintable(r)]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/payloads/{id}/x%00",
        "/api/v1/groups/x%00",
        "/api/v1/groups/x%00/rollout",
        "/api/v1/packages/x%1B%5B31m",
        "/api/v1/instances?group=x%00",
        "/v1/update%0A",
    ],
)
async def test_no_control_character_reaches_the_database_or_the_log(
    serve: Callable[..., Any], caplog: pytest.LogCaptureFixture, admin_token: str, path: str
) -> None:
    """Catches a NUL handed to PostgreSQL (a 500, and the decoded path with its raw NUL in the
    'unexpected error' line): a path with control characters names nothing (404), a query with
    them is refused (400)."""
    served = await serve()
    url = served.url + path.format(id=uuid.uuid4())
    with caplog.at_level(logging.INFO):
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                aiohttp.client.URL(url, encoded=True),
                headers={"Authorization": f"Bearer {admin_token}"},
            ) as resp,
        ):
            status = resp.status
    assert status in (400, 404)
    assert caplog.records, "the access log has the request"
    assert not [r.getMessage() for r in caplog.records if unprintable(r)]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- many slow clients at once --------------------------------------------------------------------


async def test_two_hundred_slow_connections_do_not_starve_a_normal_check(
    serve: Callable[..., Any],
) -> None:
    """100 connections trickle a head, 100 stall half-way through a body (timeouts long enough
    that all of them are still open): a normal check is answered meanwhile. Catches a server
    that serves one connection at a time, or a global lock held while a body arrives."""
    served = await serve(header_timeout=120, body_timeout=120)
    body = check_body()
    writers: list[asyncio.StreamWriter] = []
    try:
        for i in range(200):
            _, writer = await asyncio.open_connection(served.host, served.port)
            if i % 2:
                writer.write(b"POST /v1/update/ HTTP/1.1\r\nHost: x\r\nX-Sl")
            else:
                writer.write(head(len(body)) + body[:100])
            await writer.drain()
            writers.append(writer)
        async with asyncio.timeout(BOUND):
            while served.connections() < 200:
                await asyncio.sleep(0.05)
        assert await normal_check(served) == 200
        assert served.connections() >= 200, "the slow ones were still open during the check"
    finally:
        for writer in writers:
            writer.close()


# -- SIGTERM with a body still arriving ----------------------------------------------------------


async def test_sigterm_answers_requests_whose_body_is_arriving_and_exits_promptly(
    tmp_path: Path, key_file: Path
) -> None:
    """A real `nebula serve`, a real SIGTERM. One client finishes its body after the signal and
    gets its answer; one has stalled and gets 408 from the body timeout; the process exits 0
    well before its shutdown timeout (120 s; the wait is bounded at 60). Catches a drain that
    cuts connections with a body in flight (no answer), and one that waits out the shutdown
    timeout for a stalled body."""
    port = free_port()
    server = start_serve(
        tmp_path,
        port,
        "--shutdown-timeout",
        "120",
        "--trusted-key",
        str(key_file),
        db=f"sqlite:///{tmp_path / 'nebula.db'}",
        body_timeout=5,
        workers=1,
    )
    try:
        server.wait_listening()
        body = check_body()
        finishing = await asyncio.open_connection("127.0.0.1", port)
        stalled = await asyncio.open_connection("127.0.0.1", port)
        for _, writer in (finishing, stalled):
            writer.write(head(len(body)) + body[:50])
            await writer.drain()
        await asyncio.sleep(0.5)  # both heads are in, both handlers are reading their bodies
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        finishing[1].write(body[50:])
        await finishing[1].drain()
        assert await status_of(finishing[0]) == 200, server.output()
        assert await status_of(stalled[0]) == 408
        for _, writer in (finishing, stalled):
            writer.close()
        assert await asyncio.to_thread(server.proc.wait, 60) == 0
    finally:
        server.kill()
    assert "Traceback" not in server.output()


@pytest.mark.parametrize(
    "body",
    [b'{"name": "a\\u0000b", "track": "stable", "arch": "amd64"}', b"[" * 100_000],
    ids=["nul", "deep"],
)
async def test_an_admin_json_body_postgres_or_python_cannot_take_is_a_400(
    client: Any, admin_token: str, engine: AsyncEngine, body: bytes
) -> None:
    """Catches a NUL in a JSON string handed to PostgreSQL, and json's RecursionError on deep
    nesting: both were 500s."""
    before = await state_counts(engine)
    resp = await client.post(
        "/api/v1/groups",
        data=body,
        headers={"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"},
    )
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["kind"] == "InvalidInputError"
    assert await state_counts(engine) == before
