"""Hosts per group and status, maintained as statuses change (the status_counts table).

Dashboards and /metrics read these few rows instead of counting every host. Each change is an
upsert adding a delta, in the transaction that changes the status, applied in sorted key order so
that concurrent transactions lock count rows in one order (never a deadlock among themselves;
count rows are always the last rows a transaction locks). Query functions never commit.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from nebula.store.models import Group, StatusCount

Key = tuple[str | None, str]  # (group id, status)


def move(deltas: Counter[Key], before: Key | None, after: Key | None) -> None:
    """Record that one host went from `before` to `after` (None: it did not exist)."""
    if before == after:
        return
    if before is not None:
        deltas[before] -= 1
    if after is not None:
        deltas[after] += 1


async def apply(session: AsyncSession, deltas: Counter[Key]) -> None:
    changes = sorted((k, d) for k, d in deltas.items() if d != 0 and k[0] is not None)
    if not changes:
        return
    insert: Any = postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert
    for (group_id, status), delta in changes:
        stmt = insert(StatusCount).values(group_id=group_id, status=status, count=delta)
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=["group_id", "status"],
                set_={"count": StatusCount.count + stmt.excluded.count},
            )
        )


async def counts_by_group(session: AsyncSession) -> list[tuple[str, str, str, int]]:
    """(group name, arch, status, hosts) for every non-zero count."""
    stmt = (
        select(Group.name, Group.arch, StatusCount.status, StatusCount.count)
        .join(Group, Group.id == StatusCount.group_id)
        .where(StatusCount.count != 0)
    )
    return [(g, a, s, int(n)) for g, a, s, n in (await session.execute(stmt)).all()]


async def counts_of_group(session: AsyncSession, group_id: str) -> dict[str, int]:
    stmt = select(StatusCount.status, StatusCount.count).where(
        StatusCount.group_id == group_id, StatusCount.count != 0
    )
    return {s: int(n) for s, n in (await session.execute(stmt)).all()}
