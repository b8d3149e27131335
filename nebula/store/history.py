"""Rollout history: samples of the maintained status counts, and reads of them for a window.

`take_sample` copies every group's counts (status x version, summed over shards; retired hosts
are in none) into `count_samples` in one INSERT ... SELECT: O(groups x versions x statuses),
never a scan of hosts. Samples are stamped on a grid of the sampling interval, and each carries
the coarsest of the grids in `GRIDS` its stamp lies on (UTC). As samples age they thin out:
every sample is kept for a day, those on the hour for a week, those on a four-hour boundary
until `prune` drops them after the retention. Each window reads the finest grid it still has
in full: the last hour and day every sample (12 and 288 time stamps at the default 5
minutes), 7 days the hourly ones (168), 30 days the four-hourly ones (180). A thinned sample is
the counts as they were at its own time, exactly, never an average.
Query functions take the session first and never commit. Imports nebula.store.models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import DateTime, delete, func, insert, literal, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession

from nebula.store.models import CountSample, StatusCount

WINDOWS = {"1h": 3600, "1d": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
HOUR = 3600
# (grid, how long the samples off every coarser grid are kept): a sample on no grid for a
# day, one on the hour for a week; one on the coarsest grid (COARSE) for the retention.
KEPT = ((0, timedelta(days=1)), (HOUR, timedelta(days=7)))
COARSE = 4 * HOUR
GRIDS = (COARSE, HOUR)  # coarsest first


def grid_of(at: datetime) -> int:
    """The coarsest grid `at` lies on (seconds since the epoch, UTC), 0 for none."""
    seconds = int(at.timestamp())
    return next((grid for grid in GRIDS if seconds % grid == 0), 0)


def grid_for(window_seconds: int) -> int:
    """The finest grid a window of this length still has in full."""
    window = timedelta(seconds=window_seconds)
    return next((grid for grid, kept in KEPT if window <= kept), COARSE)


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
            literal(grid_of(at)).label("grid"),
        )
        .group_by(StatusCount.group_id, StatusCount.status, StatusCount.version)
        .having(total != 0)
    )
    columns = ["group_id", "at", "status", "version", "hosts", "grid"]
    result = await session.execute(insert(CountSample).from_select(columns, rows))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def thin(session: AsyncSession, now: datetime) -> int:
    """Drop the samples past the age at which their grid is no longer kept: those off the hour
    older than a day, those off the four-hour grid older than a week."""
    removed = 0
    coarser = [grid for grid, _ in KEPT[1:]] + [COARSE]
    for (_, kept), next_grid in zip(KEPT, coarser, strict=True):
        result = await session.execute(
            delete(CountSample).where(CountSample.at < now - kept, CountSample.grid < next_grid)
        )
        removed += int(result.rowcount or 0)  # type: ignore[attr-defined]
    return removed


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
    """The group's samples within the window on the window's grid (`grid_for`), oldest first."""
    since = now - timedelta(seconds=window_seconds)
    # The stamp as the driver hands it over, made aware once per point rather than once per
    # row; and run on the connection: the ORM's row handling cost more than the rest here.
    at_column = type_coerce(CountSample.at, DateTime(timezone=True))
    stmt = select(at_column, CountSample.status, CountSample.version, CountSample.hosts).where(
        CountSample.group_id == group_id, CountSample.at >= since
    )
    if grid := grid_for(window_seconds):
        stmt = stmt.where(CountSample.grid >= grid)
    connection = await session.connection()
    points: list[Point] = []
    last: datetime | None = None
    statuses: dict[str, int] = {}
    versions: dict[str, int] = {}
    # Rows come ordered by time: one pass, each time stamp's rows folded into its point.
    for at, status, version, hosts in (
        await connection.execute(stmt.order_by(CountSample.at))
    ).all():
        if at != last:
            last = at
            point = Point(at if at.tzinfo is not None else at.replace(tzinfo=UTC))
            statuses, versions = point.statuses, point.versions
            points.append(point)
        statuses[status] = statuses.get(status, 0) + hosts
        versions[version] = versions.get(version, 0) + hosts
    return points
