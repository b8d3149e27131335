"""Engine set-up: URL normalization, and SQLite's transaction modes (writers take the lock up
front, readers do not)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.errors import ConfigError
from nebula.store import db


@pytest.mark.parametrize(
    ("raw", "driver"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite"),
        ("postgresql://u@h/d", "postgresql+asyncpg"),
        ("postgresql+psycopg://u@h/d", "postgresql+asyncpg"),
        ("postgres://u@h/d", "postgresql+asyncpg"),  # what many tools print
    ],
)
def test_urls_get_async_drivers(raw: str, driver: str) -> None:
    assert db.normalize_url(raw).drivername == driver


@pytest.mark.parametrize("raw", ["mysql://u@h/d", "not a url", ""])
def test_unsupported_urls_are_config_errors(raw: str) -> None:
    with pytest.raises(ConfigError):
        db.normalize_url(raw)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_sqlite_readers_begin_deferred_writers_immediate(engine: AsyncEngine) -> None:
    begins: list[str] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("BEGIN"):
            begins.append(statement)

    async with db.transaction(db.session_factory(engine)) as session:
        await session.execute(text("SELECT 1"))
    async with db.transaction(db.session_factory(engine, read_only=True)) as session:
        await session.execute(text("SELECT 1"))
    assert begins == ["BEGIN IMMEDIATE", "BEGIN"]


async def test_engine_views_are_made_once_per_engine_and_options(engine: AsyncEngine) -> None:
    """A point read's view of the engine (autocommit on PostgreSQL, read-only on SQLite) is the
    same object every time, and shares the engine's pool. Catches a view made per statement
    (an engine object and its event listeners built on the hot path) and views of different
    options, or of different engines, mixed up."""
    first = db.engine_view(engine, nebula_test_option=1)
    assert db.engine_view(engine, nebula_test_option=1) is first
    assert first.get_execution_options()["nebula_test_option"] == 1
    assert first.sync_engine.pool is engine.sync_engine.pool
    other = db.engine_view(engine, nebula_test_option=2)
    assert other is not first and other.get_execution_options()["nebula_test_option"] == 2
    reads: list[AsyncEngine] = []
    for _ in range(2):
        async with db.point_read(db.session_factory(engine)) as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
            reads.append(conn.engine)
    assert reads[0] is reads[1]


# -- run_again_if_lost: which failures get a second run, and only one ------------------------


class _DriverError(Exception):
    """What asyncpg raises, as far as run_again_if_lost looks: a SQLSTATE."""

    def __init__(self, sqlstate: str | None) -> None:
        super().__init__(f"SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate


def _failure(kind: str) -> Exception:
    if kind == "lost":  # SQLAlchemy marks the connection invalidated: the pool dropped it
        return DBAPIError("SELECT 1", None, _DriverError(None), connection_invalidated=True)
    if kind == "other":
        return RuntimeError("not the database's")
    return DBAPIError("SELECT 1", None, _DriverError(kind))  # kind: a SQLSTATE


@pytest.mark.parametrize(
    ("failures", "calls", "outcome"),
    [
        ([], 1, "done"),
        (["lost"], 2, "done"),  # a connection gone: once more, on a fresh one
        (["40P01"], 2, "done"),  # a deadlock's victim, rolled back whole
        (["40001"], 2, "done"),  # a serialization failure, rolled back whole
        (["lost", "lost"], 2, DBAPIError),  # one more run, not a loop
        (["40P01", "lost"], 2, DBAPIError),
        (["23505"], 1, DBAPIError),  # a unique violation would fail again: not retried
        (["other"], 1, RuntimeError),
    ],
)
async def test_work_is_run_again_once_when_its_connection_or_transaction_was_lost(
    failures: list[str], calls: int, outcome: Any
) -> None:
    ran: list[int] = []

    async def work() -> str:
        ran.append(1)
        if len(ran) <= len(failures):
            raise _failure(failures[len(ran) - 1])
        return "done"

    if outcome == "done":
        assert await db.run_again_if_lost(work) == "done"
    else:
        with pytest.raises(outcome):
            await db.run_again_if_lost(work)
    assert len(ran) == calls
