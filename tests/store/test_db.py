"""Engine set-up: URL normalization, and SQLite's transaction modes (writers take the lock up
front, readers do not)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, text
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
