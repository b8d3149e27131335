"""Hosts per group, status and version, maintained as those change (the status_counts table).

Dashboards, /metrics and rollout status read these few rows instead of counting every host.
Each change is an upsert adding a delta, in the transaction that changes the status, applied in
sorted key order so that concurrent transactions lock count rows in one order (never a deadlock
among themselves; count rows are always the last rows a transaction locks).
Query functions never commit.
"""

from __future__ import annotations

import zlib
from collections import Counter

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from nebula.store.models import Application, Channel, Group, StatusCount
from nebula.store.upsert import upsert

# (group id, status, version); a key without the version (older callers) counts the host
# under "no version".
Key = tuple[str | None, str, str | None] | tuple[str | None, str]
ShardKey = tuple[str | None, str, str, int]  # (group id, status, version or '', shard)
SHARDS = 8


def shard_of(machine_id: str) -> int:
    """A host's shard: stable, so its decrement and increment land on the same row."""
    return zlib.crc32(machine_id.encode()) % SHARDS


def move(deltas: Counter[ShardKey], machine_id: str, before: Key | None, after: Key | None) -> None:
    """Record that one host went from `before` to `after` (None: it did not exist)."""
    if before == after:
        return
    shard = shard_of(machine_id)
    if before is not None:
        deltas[_shard_key(before, shard)] -= 1
    if after is not None:
        deltas[_shard_key(after, shard)] += 1


def _shard_key(key: Key, shard: int) -> ShardKey:
    version = key[2] if len(key) == 3 else None
    return (key[0], key[1], version or "", shard)


# Adds a delta to a count row (created at the delta when missing).
_ADD = upsert(
    StatusCount.__table__,
    ("group_id", "status", "version", "shard", "count"),
    ("group_id", "status", "version", "shard"),
    {"count": "status_counts.count + excluded.count"},
)


async def apply(session: AsyncSession, deltas: Counter[ShardKey]) -> None:
    changes = sorted((k, d) for k, d in deltas.items() if d != 0 and k[0] is not None)
    if not changes:
        return
    # One statement per row, in sorted order: the rows are locked in that order, so two
    # transactions never wait for each other's count rows (a multi-row statement sent as an
    # executemany deadlocked under concurrent grants on PostgreSQL).
    for (group_id, status, version, shard), delta in changes:
        params = {"group_id": group_id, "status": status, "version": version, "shard": shard}
        await session.execute(_ADD, {**params, "count": delta})


async def counts_by_group(session: AsyncSession) -> list[tuple[str, str, str, int]]:
    """(group name, arch, status, hosts) for every non-zero count."""
    total = func.sum(StatusCount.count)
    stmt = (
        select(Group.name, Group.arch, StatusCount.status, total)
        .join(Group, Group.id == StatusCount.group_id)
        .group_by(Group.name, Group.arch, StatusCount.status)
        .having(total != 0)
    )
    return [(g, a, s, int(n)) for g, a, s, n in (await session.execute(stmt)).all()]


async def counts_of_group(session: AsyncSession, group_id: str) -> dict[str, int]:
    total = func.sum(StatusCount.count)
    stmt = (
        select(StatusCount.status, total)
        .where(StatusCount.group_id == group_id)
        .group_by(StatusCount.status)
        .having(total != 0)
    )
    return {s: int(n) for s, n in (await session.execute(stmt)).all()}


async def counts_by_version(
    session: AsyncSession, group_id: str
) -> dict[tuple[str, str | None], int]:
    """{(status, version or None): hosts} of one group, every non-zero count."""
    total = func.sum(StatusCount.count)
    stmt = (
        select(StatusCount.status, StatusCount.version, total)
        .where(StatusCount.group_id == group_id)
        .group_by(StatusCount.status, StatusCount.version)
        .having(total != 0)
    )
    return {(s, v or None): int(n) for s, v, n in (await session.execute(stmt)).all()}


async def fleet_counts(
    session: AsyncSession,
) -> list[tuple[str, str, str, str, str, str | None, str, int]]:
    """(application name, group id, group name, arch, channel name or '', version or None,
    status, hosts) for every non-zero count: what /metrics shows of the fleet, read from the
    count rows alone (groups x versions x statuses x shards of them), never from the hosts."""
    total = func.sum(StatusCount.count)
    stmt = (
        select(
            Application.name,
            Group.id,
            Group.name,
            Group.arch,
            func.coalesce(Channel.name, ""),
            StatusCount.version,
            StatusCount.status,
            total,
        )
        .join(Group, Group.id == StatusCount.group_id)
        .join(Application, Application.id == Group.app_id)
        .outerjoin(Channel, Channel.id == Group.channel_id)
        .group_by(
            Application.name,
            Group.id,
            Group.name,
            Group.arch,
            Channel.name,
            StatusCount.version,
            StatusCount.status,
        )
        .having(total != 0)
    )
    return [
        (app, gid, g, a, c, v or None, s, int(n))
        for app, gid, g, a, c, v, s, n in (await session.execute(stmt)).all()
    ]
