"""Shared fixtures: a migrated database per test on SQLite and on PostgreSQL, and a running app.

Each database test runs twice, `[sqlite]` and `[postgres]`. Migrations run once per session into
a template (a file for SQLite, a template database for PostgreSQL); each test gets a fresh copy,
so tests are isolated and still fast. PostgreSQL comes from NEBULA_TEST_PG (default: the local
server, user postgres). When it cannot be reached the PostgreSQL half is skipped, except when CI
is set: then a skip is an error, because CI must test PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.config import Settings
from nebula.store import db
from nebula.web.access import RequestLog
from nebula.web.app import create_app
from tests import crau
from tests.factories import make_settings, make_token

PG_ADMIN_URL = os.environ.get("NEBULA_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = bool(os.environ.get("CI"))
_TEMPLATE = f"nebula_tpl_{os.getpid()}"


def _asyncpg_dsn(url: str, database: str | None = None) -> str:
    u = make_url(url)
    if database:
        u = u.set(database=database)
    return u.set(drivername="postgresql").render_as_string(hide_password=False)


class PgServer:
    """Makes per-test databases from one migrated template on the test PostgreSQL server."""

    def __init__(self) -> None:
        self.created: list[str] = []

    async def _admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(_asyncpg_dsn(PG_ADMIN_URL), timeout=5)

    async def setup(self) -> None:
        conn = await self._admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{_TEMPLATE}"')
            await conn.execute(f'CREATE DATABASE "{_TEMPLATE}"')
        finally:
            await conn.close()
        engine = db.create_engine(self.url(_TEMPLATE))
        await db.upgrade(engine)
        await engine.dispose()

    def url(self, name: str) -> str:
        return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)

    async def new_database(self) -> str:
        name = f"nebula_t_{uuid.uuid4().hex[:12]}"
        conn = await self._admin()
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{_TEMPLATE}"')
        finally:
            await conn.close()
        self.created.append(name)
        return self.url(name)

    async def drop(self, url: str) -> None:
        name = make_url(url).database
        conn = await self._admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    async def teardown(self) -> None:
        conn = await self._admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{_TEMPLATE}" WITH (FORCE)')
        finally:
            await conn.close()


def _pg_unavailable_reason() -> str | None:
    async def probe() -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(PG_ADMIN_URL), timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        return f"PostgreSQL at {PG_ADMIN_URL} unreachable: {exc}"
    return None


def require_tools(*names: str) -> None:
    """Skip unless every one of the Debian tools `names` is on PATH; in CI fail instead, since
    .ci/run installs them (so a test that needs them must run there)."""
    missing = [n for n in names if shutil.which(n) is None]
    if not missing:
        return
    if IN_CI:
        pytest.fail(f"CI is set, so {', '.join(missing)} must be installed (.ci/run does it)")
    pytest.skip(f"{', '.join(missing)} not installed (apt-get install as .ci/run does)")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer | None]:
    reason = _pg_unavailable_reason()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI is set, so PostgreSQL tests must run: {reason}")
        yield None
        return
    server = PgServer()
    asyncio.run(server.setup())
    yield server
    asyncio.run(server.teardown())


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"

    async def migrate() -> None:
        engine = db.create_engine(f"sqlite:///{path}")
        await db.upgrade(engine)
        await engine.dispose()  # the last connection to close checkpoints and removes the WAL

    asyncio.run(migrate())
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    """A URL of a freshly migrated database of its own, for each backend."""
    if request.param == "sqlite":
        path = tmp_path / "nebula.db"
        shutil.copyfile(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    server: PgServer | None = request.getfixturevalue("pg_server")
    if server is None:
        pytest.skip("PostgreSQL unavailable (set NEBULA_TEST_PG); CI never skips this")
    url = asyncio.run(server.new_database())
    yield url
    asyncio.run(server.drop(url))


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = db.create_engine(db_url)
    yield eng
    await eng.dispose()


class FakeClock:
    """A clock tests move by hand (injected into the app; nothing is monkeypatched)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- the application -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def signing_key() -> RSAPrivateKey:
    """The test payload-signing key (what a custom build would sign with)."""
    return crau.make_rsa_key()


@pytest.fixture
def key_file(tmp_path: Path, signing_key: RSAPrivateKey) -> Path:
    path = tmp_path / "test-key.pub.pem"
    path.write_bytes(crau.public_pem(signing_key))
    return path


@pytest.fixture
def settings(db_url: str, tmp_path: Path, key_file: Path) -> Settings:
    return make_settings(db_url, tmp_path, key_file)


@pytest.fixture
async def client(settings: Settings, clock: FakeClock, aiohttp_client: Any) -> TestClient[Any, Any]:
    """A test client of a real aiohttp server on the per-test database. The database comes
    first (fixtures are torn down in reverse): the app's shutdown, which flushes pending
    check-ins, runs while the database still exists."""
    srv = TestServer(create_app(settings, clock=clock))
    # As `nebula serve` runs it: with Nebula's access log (the line and the duration histogram).
    await srv.start_server(access_log_class=RequestLog)
    return await aiohttp_client(srv)  # type: ignore[no-any-return]


@pytest.fixture
async def admin_token(db_url: str) -> str:
    return await make_token(db_url, "ops", "admin")


@pytest.fixture
async def viewer_token(db_url: str) -> str:
    return await make_token(db_url, "dashboard", "viewer")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI a skipped PostgreSQL test is a failure: the PostgreSQL half must really run."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped and item.get_closest_marker("postgres") is not None:
        report.outcome = "failed"
        report.longrepr = (
            f"CI is set: PostgreSQL test {item.nodeid} must not skip ({report.longrepr})"
        )


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def server(
    db_url: str, tmp_path: Path, key_file: Path, clock: FakeClock
) -> AsyncIterator[str]:
    """The app on a real 127.0.0.1 socket whose URL is also its public URL; yields that URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = make_settings(
        db_url, tmp_path, key_file, public_url=base, listen=f"127.0.0.1:{port}"
    )
    srv = TestServer(create_app(settings, clock=clock), host="127.0.0.1", port=port)
    await srv.start_server(access_log_class=RequestLog)
    try:
        yield base
    finally:
        await srv.close()
