"""The server side of the CLI says what is wrong in one line (issue 6 items 7 and 8): a token is
never written into a database the server does not use, a database URL of the wrong kind or a
database that is not there is a sentence and a non-zero exit, and "listening" is printed only
once the server serves."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from nebula.store import db
from tests.cli.runner import fails, nebula, ok
from tests.cli.serving import run_serve, start_serve
from tests.conftest import PG_ADMIN_URL, PgServer, _asyncpg_dsn, free_port


def _pg_url(database: str, password: str | None = None) -> str:
    url = make_url(PG_ADMIN_URL).set(database=database)
    if password is not None:
        url = url.set(password=password)
    return url.render_as_string(hide_password=False)


@pytest.fixture
async def empty_pg(pg_server: PgServer | None) -> AsyncIterator[str]:
    """A PostgreSQL database that exists but was never migrated."""
    if pg_server is None:
        pytest.skip("PostgreSQL unavailable (set NEBULA_TEST_PG)")
    name = f"nebula_empty_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(_asyncpg_dsn(PG_ADMIN_URL), timeout=5)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = _pg_url(name)
    yield url
    await pg_server.drop(url)


def _missing_pg(pg_server: PgServer | None) -> str:
    if pg_server is None:
        pytest.skip("PostgreSQL unavailable (set NEBULA_TEST_PG)")
    return _pg_url(f"nebula_missing_{uuid.uuid4().hex[:10]}")


def _down_pg() -> str:
    """A PostgreSQL URL on a port nothing listens on."""
    return f"postgresql://postgres@127.0.0.1:{free_port()}/nebula"


# -- item 7: token create on a database that is not the server's ------------------------------


async def test_token_create_refuses_a_sqlite_file_that_does_not_exist(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere" / "nebula.db"
    result = await nebula(["token", "create", "--name", "ops", "--db", f"sqlite:///{path}"])
    fails(result, 1, "does not exist", "nebula db upgrade", "--create")
    assert not path.exists() and not path.parent.exists()


@pytest.mark.postgres
async def test_token_create_refuses_an_unmigrated_database_unless_create(empty_pg: str) -> None:
    result = await nebula(["token", "create", "--name", "ops", "--db", empty_pg])
    fails(result, 1, f"database {empty_pg} is not migrated", "nebula db upgrade", "--create")
    fails(await nebula(["token", "list", "--db", empty_pg]), 1, "is not migrated")

    result = await nebula(["token", "create", "--name", "ops", "--db", empty_pg, "--create"])
    token = ok(result).strip()
    assert token.startswith("nbl_") and "\n" not in token
    assert f"created in database {empty_pg}" in result.stderr
    assert "ops" in ok(await nebula(["token", "list", "--db", empty_pg]))


async def test_token_create_with_create_makes_the_sqlite_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    result = await nebula(["token", "create", "--name", "ops", "--db", url, "--create"])
    assert ok(result).strip().startswith("nbl_")
    assert f"created in database {url}" in result.stderr
    assert "ops" in ok(await nebula(["token", "list", "--db", url]))


async def test_token_create_says_where_the_token_went_without_the_password(db_url: str) -> None:
    url = make_url(db_url)
    if url.get_backend_name() == "postgresql":
        db_url = url.set(password="s3cret").render_as_string(hide_password=False)  # trust auth
    result = await nebula(["token", "create", "--name", "ops", "--db", db_url])
    assert ok(result).strip().startswith("nbl_")
    assert "s3cret" not in result.output
    assert f"token 'ops' (admin) created in database {db.safe_url(db_url)}" in result.stderr


@pytest.mark.postgres
async def test_postgres_scheme_is_taken_as_postgresql(pg_server: PgServer | None) -> None:
    assert pg_server is not None
    url = await pg_server.new_database()
    try:
        alias = "postgres://" + url.split("://", 1)[1]
        result = await nebula(["token", "create", "--name", "ops", "--db", alias])
        assert ok(result).strip().startswith("nbl_")
        assert "created in database postgresql://" in result.stderr
    finally:
        await pg_server.drop(url)


# -- item 8: one line, never a traceback ------------------------------------------------------


async def test_token_create_on_an_unsupported_database_is_one_line() -> None:
    result = await nebula(["token", "create", "--name", "ops", "--db", "mysql://u@h/d"])
    fails(result, 1, "unsupported database URL scheme 'mysql'", "sqlite:///PATH", "postgresql://")


async def test_token_create_on_a_database_server_that_is_down_is_one_line() -> None:
    url = _down_pg()
    result = await nebula(["token", "create", "--name", "ops", "--db", url])
    fails(result, 1, f"cannot connect to database {url}", "connection refused")


@pytest.mark.postgres
async def test_token_create_on_a_missing_database_is_one_line(
    pg_server: PgServer | None,
) -> None:
    url = _missing_pg(pg_server)
    name = make_url(url).database
    result = await nebula(["token", "create", "--name", "ops", "--db", url])
    fails(result, 1, f"cannot connect to database {url}", f'database "{name}" does not exist')


def _assert_one_line_failure(status: int, output: str, *words: str) -> None:
    assert status == 1, output
    assert "Traceback" not in output, output
    assert "listening" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, output
    for word in words:
        assert word in errors[0], (word, output)


async def test_serve_refuses_an_unsupported_database_in_one_line(tmp_path: Path) -> None:
    status, output = await asyncio.to_thread(
        run_serve, tmp_path, free_port(), "--db", "mysql://u@h/d"
    )
    _assert_one_line_failure(status, output, "unsupported database URL scheme 'mysql'")


async def test_serve_on_a_database_server_that_is_down_is_one_line(tmp_path: Path) -> None:
    url = _down_pg()
    status, output = await asyncio.to_thread(run_serve, tmp_path, free_port(), "--db", url)
    _assert_one_line_failure(status, output, f"cannot connect to database {url}")


@pytest.mark.postgres
async def test_serve_on_a_missing_database_is_one_line(
    tmp_path: Path, pg_server: PgServer | None
) -> None:
    url = _missing_pg(pg_server)
    status, output = await asyncio.to_thread(run_serve, tmp_path, free_port(), "--db", url)
    name = make_url(url).database
    _assert_one_line_failure(status, output, f'database "{name}" does not exist')


@pytest.mark.postgres
async def test_serve_takes_a_postgres_url_and_says_listening_once_it_serves(
    tmp_path: Path, pg_server: PgServer | None
) -> None:
    assert pg_server is not None
    url = await pg_server.new_database()
    alias = "postgres://" + url.split("://", 1)[1]
    server = start_serve(tmp_path, free_port(), "--db", alias)
    try:
        await asyncio.to_thread(server.wait_listening)
        # Said only once it serves: the very next request is answered.
        assert server.get("/readyz")[0] == 200
        assert await asyncio.to_thread(server.stop) == 0
        assert "Traceback" not in server.output()
    finally:
        server.kill()
        await pg_server.drop(url)
