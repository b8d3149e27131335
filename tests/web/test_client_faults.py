"""What a host or an operator's client does wrong at the HTTP level (issue 8, found already):
each is answered or logged for what it is, and leaves nothing behind.

Real sockets: the app runs under aiohttp's AppRunner with the settings `nebula serve` uses
(a handler is not cancelled when its client hangs up: it sees the hang-up as a
ConnectionResetError from the body it reads, which is what this tests), and the misbehaving
client is a raw TCP connection that sends part of a request and hangs up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from sqlalchemy import text

from nebula.config import Settings
from nebula.store import db
from nebula.store.blobs import BlobStore
from nebula.web.app import create_app
from nebula.web.keys import BLOBS, METRICS
from tests import crau
from tests.conftest import FakeClock, free_port
from tests.factories import Host
from tests.statements import statements

BOUND = 30.0  # seconds: a liveness bound for what the server does after a hang-up


class Served:
    """The app on a real socket under AppRunner, as `nebula serve` runs it."""

    def __init__(self, app: web.Application, port: int) -> None:
        self.app, self.host, self.port = app, "127.0.0.1", port
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture
async def served(settings: Settings, clock: FakeClock) -> AsyncIterator[Served]:
    app = create_app(settings, clock=clock)
    runner = web.AppRunner(app)  # handler_cancellation off, as in web.run_app
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Served(app, port)
    finally:
        await runner.cleanup()


async def hang_up_after(served: Served, head: bytes, body: bytes) -> None:
    """Send `head` (request line and headers) and part of a body, then close the socket."""
    reader, writer = await asyncio.open_connection(served.host, served.port)
    writer.write(head + body)
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    del reader


async def until(condition: Any) -> None:
    async with asyncio.timeout(BOUND):
        while not condition():
            await asyncio.sleep(0.02)


def counter(family: Any, **labels: str) -> float:
    return float(family.labels(**labels)._value.get())


async def test_a_host_hanging_up_mid_body_is_no_database_outage(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """Catches every OSError read as "database unavailable" (a 503 logged at ERROR)."""
    metrics = served.app[METRICS]
    before = counter(metrics.omaha_requests, outcome="error")
    body = Host(machine_id="c" * 32).check()
    head = (
        "POST /v1/update/ HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with caplog.at_level(logging.INFO):
        await hang_up_after(served, head, body[: len(body) // 2])
        await until(lambda: counter(metrics.omaha_requests, outcome="error") > before)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (logging.INFO, "client closed the connection during POST /v1/update/") in messages
    assert not [m for level, m in messages if level >= logging.ERROR], messages
    # And the server serves the next host as ever.
    async with (
        aiohttp.ClientSession() as http,
        http.post(served.url + "/v1/update/", data=body) as resp,
    ):
        assert resp.status == 200


async def test_a_full_payload_disk_is_said_to_be_one(
    client: Any, admin_token: str, signing_key: RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk is the boundary faked here: incoming uploads are written to /dev/full, whose
    every write fails with ENOSPC. Catches ENOSPC answered as "service unavailable, retry
    later" (a database outage), which sends the operator to look at the wrong thing."""
    assert os.path.exists("/dev/full"), "Linux has /dev/full"
    blobs: BlobStore = client.app[BLOBS]

    def new_temp() -> tuple[Any, Path]:
        return open("/dev/full", "wb", buffering=0), blobs.incoming / "never-written"

    monkeypatch.setattr(blobs, "new_temp", new_temp)
    payload = crau.build_payload(signing_key, data=os.urandom(300_000))
    form = aiohttp.FormData()
    form.add_field("payload", payload, filename="flatcar_production_update.gz")
    resp = await client.post(
        "/api/v1/packages/upload",
        params={"version": "4152.2.3", "arch": "amd64"},
        data=form,
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert resp.status == 507, await resp.text()
    body = await resp.json()
    assert "out of space" in body["error"] and "payload disk" in body["error"]


@pytest.mark.parametrize("name", ["x%00", "a%0Ab", "..", "%2e%2e", "x%7F", "é.gz"])
async def test_a_payload_name_that_cannot_exist_is_a_404_without_a_query(
    client: Any, engine: Any, name: str
) -> None:
    """Catches names handed to the database as they come: a NUL gives a 500 on PostgreSQL."""
    path = f"/v1/payloads/{uuid.uuid4()}/{name}"
    with statements(engine, lambda s: "package_files" in s) as seen:
        resp = await client.get(path)
    assert resp.status == 404
    assert seen == []


async def test_an_upload_cut_inside_an_extension_part_leaves_nothing(
    served: Served, admin_token: str, signing_key: RSAPrivateKey, db_url: str
) -> None:
    """Catches the complete main part left in incoming/ when the connection is cut inside a
    later part (temp files were discarded only on a NebulaError, not on a reset).

    The cut comes once the server holds both parts' temp files (the main one complete): a
    connection closed earlier makes aiohttp fail every read at once, before any part is in
    (which is why an earlier attempt at this test never saw a part arrive)."""
    blobs: BlobStore = served.app[BLOBS]
    metrics = served.app[METRICS]
    failed = counter(metrics.uploads, outcome="failed")
    main = crau.build_payload(signing_key, data=os.urandom(200_000))
    ext = crau.build_payload(signing_key, data=os.urandom(300_000))
    boundary = "nebulacut"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="payload"; '
            f'filename="flatcar_production_update.gz"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + main
        + (
            f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="extension"; '
            f'filename="oem-azure.gz"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
    )
    total = len(body) + len(ext) + len(f"\r\n--{boundary}--\r\n")
    head = (
        "POST /api/v1/packages/upload?version=4152.2.3&arch=amd64 HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {admin_token}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {total}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(served.host, served.port)
    # A good part of the extension: aiohttp's multipart reader hands out a part's last chunk
    # only once it has read some way past the boundary that ends it.
    writer.write(head + body + ext[:100_000])
    await writer.drain()
    await until(lambda: len(list(blobs.incoming.iterdir())) >= 2)
    writer.close()
    await writer.wait_closed()
    del reader
    await until(lambda: counter(metrics.uploads, outcome="failed") > failed)
    assert list(blobs.incoming.iterdir()) == []
    assert not any(p.is_file() for p in blobs.root.rglob("*") if "incoming" not in p.parts)
    # Nor a package row (or a file row) for what never arrived whole.
    engine = db.create_engine(db_url)
    try:
        async with engine.connect() as conn:
            for table in ("packages", "package_files"):
                rows = (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
                assert rows == 0, table
    finally:
        await engine.dispose()
