"""Hostile input to the Omaha endpoint, from outside, as one table (issue 8, item 1).

Each row is sent as raw bytes on a real socket to the running app (headers, chunking and
encodings exactly as written, nothing a client library would fix up), and asserts three things:
the status (a clear 4xx, or a bounded correct answer), that the database holds no more hosts
or events than the row may add (none for a refusal), and that a normal check is answered right
after. The parser's own refusals (which message for which input) are tests/omaha/test_parse.py;
the bodies shared with it come from there. Slow clients are tests/web/test_http_limits.py.
"""

from __future__ import annotations

import asyncio
import gzip
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.config import Settings
from nebula.omaha.parse import MAX_APPS, MAX_BODY
from tests.factories import Host, make_settings
from tests.omaha.test_parse import BILLION_LAUGHS, XXE, XXE_PARAMETER
from tests.web.test_http_limits import BOUND, state_counts

CHECK = Host(machine_id="e" * 32).check()
_BODY_XML = CHECK.split(b"?>", 1)[1]  # the request without its XML declaration

QUADRATIC_BLOWUP = (
    b'<?xml version="1.0"?><!DOCTYPE request [<!ENTITY a "'
    + b"x" * 20_000
    + b'">]><request protocol="3.0"><app appid="'
    + b"&a;" * 10_000
    + b'"/></request>'
)


@pytest.fixture
def settings(db_url: str, tmp_path: Path, key_file: Path) -> Settings:
    """The `client` fixture's settings, with a body timeout short enough for a table row."""
    return make_settings(db_url, tmp_path, key_file, body_timeout=1)


@dataclass(frozen=True)
class Row:
    name: str
    body: bytes
    status: int
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "text/xml"),)
    chunked: bool = False
    declared_length: int | None = None  # a Content-Length that lies (the body is cut short)
    hosts: int = 0  # hosts the row may add: 0 for a refusal, 1 for a check answered as one


def request_bytes(row: Row) -> bytes:
    head = ["POST /v1/update/ HTTP/1.1", "Host: nebula.test", "Connection: close"]
    head += [f"{k}: {v}" for k, v in row.headers]
    if row.chunked:
        head.append("Transfer-Encoding: chunked")
        step = 4096
        payload = b"".join(
            b"%x\r\n%s\r\n" % (len(row.body[i : i + step]), row.body[i : i + step])
            for i in range(0, len(row.body), step)
        )
        payload += b"0\r\n\r\n"
    else:
        length = row.declared_length if row.declared_length is not None else len(row.body)
        head.append(f"Content-Length: {length}")
        payload = row.body
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


def _many_apps(count: int) -> bytes:
    apps = "".join(
        f'<app appid="{{e96281a6-d1af-4bde-9a0a-97b76e56dc5{i % 10}}}"/>' for i in range(count)
    )
    return f'<request protocol="3.0">{apps}</request>'.encode()


ROWS = [
    Row("billion laughs", BILLION_LAUGHS, 400),
    Row("quadratic blowup", QUADRATIC_BLOWUP, 400),
    Row("external entity file://", XXE, 400),
    Row("external entity http://", XXE_PARAMETER, 400),
    Row("DTD", b"<!DOCTYPE request>" + _BODY_XML, 400),
    Row("10,000-deep nesting", b'<request protocol="3.0">' + b"<x>" * 10_000, 400),
    Row(
        "8,000-deep nesting, closed",
        b'<request><app appid="a">' + b"<x>" * 8000 + b"</x>" * 8000 + b"</app></request>",
        400,
    ),
    Row("megabyte attribute", b'<request><app appid="' + b"a" * (1 << 20) + b'"/></request>', 413),
    Row("invalid UTF-8", CHECK.replace(b'track="stable"', b'track="\xff\xfe"'), 400),
    Row(
        "declares UTF-16, is UTF-8",
        b'<?xml version="1.0" encoding="UTF-16"?>' + _BODY_XML,
        400,
    ),
    # Read as the declaration says: the track is mojibake, which no group has; answered as an
    # unknown track is (200), and a host of no group is not stored.
    Row(
        "declares Latin-1, is UTF-8",
        b'<?xml version="1.0" encoding="ISO-8859-1"?>'
        + _BODY_XML.replace(b'track="stable"', 'track="st\u00e4ble"'.encode()),
        200,
    ),
    Row("not XML (JSON)", b'{"request": {"app": "x"}}', 400),
    Row("binary garbage", bytes(range(256)) * 16, 400),
    Row("empty body", b"", 400),
    Row("wrong content type", CHECK, 200, headers=(("Content-Type", "application/json"),), hosts=1),
    Row("no content type", CHECK, 200, headers=(), hosts=1),
    Row("truncated XML", CHECK[:-40], 400),
    # The rest never comes: the body timeout (1 s here) answers.
    Row("body shorter than its Content-Length", CHECK[:100], 408, declared_length=len(CHECK)),
    Row("chunked over the limit", b" " * (MAX_BODY + 10_000) + CHECK, 413, chunked=True),
    Row("chunked within the limit", CHECK, 200, chunked=True, hosts=1),
    Row(f"a thousand apps (limit {MAX_APPS})", _many_apps(1000), 400),
    Row(
        "gzip bomb (10 MB of zeros, 10 KB sent)",
        gzip.compress(b"\0" * 10_000_000),
        413,
        headers=(("Content-Type", "text/xml"), ("Content-Encoding", "gzip")),
    ),
    Row(
        "gzip that is not",
        b"not gzip at all",
        400,
        headers=(("Content-Type", "text/xml"), ("Content-Encoding", "gzip")),
    ),
    Row(
        "oversized headers (100 of 1 KB)",
        CHECK,
        431,
        headers=tuple((f"X-Pad-{i}", "p" * 1000) for i in range(100)),
    ),
    Row(
        "one header line over 8 KB",
        CHECK,
        400,
        headers=(("X-Long", "p" * 9000),),
    ),
]


async def send(host: str, port: int, raw: bytes) -> tuple[int, bytes]:
    """Send `raw` and read the answer: its status and body (by its Content-Length, not to the
    close, which may come only after aiohttp's lingering read of an unread body)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(BOUND):
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\nContent-Length: (\d+)", head)
            body = await reader.readexactly(int(length.group(1))) if length else await reader.read()
    finally:
        writer.close()
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    assert match, head[:200]
    return int(match.group(1)), body


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
async def test_hostile_input_to_the_omaha_endpoint(
    client: Any, engine: AsyncEngine, row: Row
) -> None:
    """Catches, per row: a DTD or entity expanded (a 200, or memory), an input that crashes the
    handler (a 500), a limit not enforced (a 200 for the oversized rows), a refusal that still
    wrote a host or an event, and a server left unable to answer."""
    server = client.server
    before = await state_counts(engine)
    status, body = await send(server.host, server.port, request_bytes(row))
    assert status == row.status, body[:300]
    if status == 200:
        assert body.startswith(b"<?xml") and b"<response" in body
    else:
        assert b"Traceback" not in body and len(body) < 1000
    after = await state_counts(engine)
    assert after["instances"] == before["instances"] + row.hosts
    if not row.hosts:
        assert after == before
    # And the server answers a normal check right after.
    status, body = await send(
        server.host,
        server.port,
        request_bytes(Row("normal", Host(machine_id="f" * 32).check(), 200)),
    )
    assert status == 200 and b'status="ok"' in body
