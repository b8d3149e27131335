"""Rollout history: samples of the maintained status counts, and reads of them for a window.

`take_sample` copies every group's counts (status x version, summed over shards; retired hosts
are in none) into `count_samples` in one INSERT ... SELECT: O(groups x versions x statuses),
never a scan of hosts. Samples are stamped on a grid of the sampling interval, so a sample on
the hour is recognisable (`hourly`); `thin` drops the others once they are older than a day, and
`prune` drops everything older than the retention. A window of a day or less reads every
sample, a longer one the hourly ones: at most a few hundred time stamps either way.
Query functions take the session first and never commit. Imports nebula.store.models.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, insert, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from nebula.store.models import CountSample, StatusCount

WINDOWS = {"1h": 3600, "1d": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
FINE_FOR = timedelta(days=1)  # samples younger than this are all kept; older, hourly ones


def stamp(now: datetime, interval_seconds: int) -> datetime:
    """`now` rounded down to the sampling grid (seconds since the epoch, UTC)."""
    seconds = int(now.timestamp()) // interval_seconds * interval_seconds
    return datetime.fromtimestamp(seconds, UTC)


async def take_sample(session: AsyncSession, at: datetime) -> int:
    """Copy the current counts of every group, stamped `at`; the rows written. A sample already
    taken at `at` (another leader, a restart in the same slot) is left as it is."""
    if (
        await session.execute(select(CountSample.at).where(CountSample.at == at).limit(1))
    ).first() is not None:
        return 0
    total = func.sum(StatusCount.count)
    rows = (
        select(
            StatusCount.group_id,
            literal(at, CountSample.at.type).label("at"),
            StatusCount.status,
            StatusCount.version,
            total.label("hosts"),
            literal(at.minute == 0 and at.second == 0).label("hourly"),
        )
        .group_by(StatusCount.group_id, StatusCount.status, StatusCount.version)
        .having(total != 0)
    )
    columns = ["group_id", "at", "status", "version", "hosts", "hourly"]
    result = await session.execute(insert(CountSample).from_select(columns, rows))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def thin(session: AsyncSession, now: datetime) -> int:
    """Drop the samples older than a day that are not on the hour."""
    result = await session.execute(
        delete(CountSample).where(CountSample.at < now - FINE_FOR, CountSample.hourly.is_(False))
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def prune(session: AsyncSession, older_than: datetime) -> int:
    result = await session.execute(delete(CountSample).where(CountSample.at < older_than))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


@dataclass
class Point:
    """One sample of one group: hosts by status and by version at `at`."""

    at: datetime
    statuses: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())


async def read_history(
    session: AsyncSession, group_id: str, window_seconds: int, now: datetime
) -> list[Point]:
    """The group's samples within the window, oldest first (hourly ones beyond a day)."""
    since = now - timedelta(seconds=window_seconds)
    stmt = select(CountSample.at, CountSample.status, CountSample.version, CountSample.hosts).where(
        CountSample.group_id == group_id, CountSample.at >= since
    )
    if timedelta(seconds=window_seconds) > FINE_FOR:
        stmt = stmt.where(CountSample.hourly.is_(True))
    points: dict[datetime, Point] = {}
    statuses: defaultdict[datetime, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))
    versions: defaultdict[datetime, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))
    for at, status, version, hosts in (await session.execute(stmt.order_by(CountSample.at))).all():
        points.setdefault(at, Point(at))
        statuses[at][status] += hosts
        versions[at][version or ""] += hosts
    for at, point in points.items():
        point.statuses = dict(statuses[at])
        point.versions = dict(versions[at])
    return list(points.values())
