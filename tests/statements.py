"""The SQL statements an engine runs inside a block, for tests that prove a path queries or
writes nothing (SQLAlchemy's own cursor event: the statements really sent, nothing mocked)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


@contextmanager
def statements(engine: AsyncEngine, keep: Callable[[str], bool]) -> Iterator[list[str]]:
    """The statements `engine` runs inside the block for which `keep` is true."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if keep(statement):
            seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


def is_write(statement: str) -> bool:
    return statement.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE")
