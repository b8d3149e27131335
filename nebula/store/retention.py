"""Which old rows retention may delete: grants, failures and activity past their ages, but never
a row that a rollout rule can still read.

Who reads these tables, and for how long:

- the rate limit counts a group's grants within its period (a sliding window), and rollout
  status its grants within the last hour (the pace);
- the failure gate counts, for the version a failing host was granted, the group's failures and
  granted hosts since the group's last resume (or ever, if it was never resumed);
- nothing reads the activity log but people.

So a grant is kept while it is younger than the largest of its age, the group's rate period and
an hour; and a grant or a failure older than its age is deleted only when the failure gate can
never count it again: it predates the group's last resume (a resume only ever moves forward),
or its version is one the group can no longer grant (not its pin, not its channel's target, not
one of the channel's floors) and that no host is still updating to (a failure is recorded only
for a host in the middle of an update). A version an operator brings back after its rows went
starts its count afresh, like a version released for the first time. Completions, which safe
mode reads for as long as a version is the target, are not pruned here.

Query functions take the session first and never commit. Imports nebula.store.models and
nebula.lifecycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, false, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from nebula.lifecycle import IN_PROGRESS
from nebula.store.models import (
    Activity,
    Channel,
    ChannelFloor,
    Failure,
    Grant,
    Group,
    InstanceApp,
    Package,
)

PACE = timedelta(hours=1)  # rollout status reads the grants of the last hour


@dataclass(frozen=True, slots=True)
class GroupScope:
    """What of one group's grants and failures its rollout rules can still read."""

    group_id: str
    resumed_at: datetime | None  # the failure gate counts from here
    rate_period: timedelta  # the rate limit's window (zero without one)
    live_versions: frozenset[str]  # versions the failure gate may still be asked about

    def grant_cutoff(self, now: datetime, age: timedelta) -> datetime:
        """Grants at or after this are kept whatever else holds."""
        return now - max(age, self.rate_period, PACE)

    def gate_done(self, at: Any, version: Any) -> ColumnElement[bool]:
        """Rows (time `at`, version `version`) the failure gate will never count again."""
        dead: list[ColumnElement[bool]] = [version.not_in(sorted(self.live_versions))]
        if self.resumed_at is not None:
            dead.append(at < self.resumed_at)
        return or_(false(), *dead)


async def group_scopes(session: AsyncSession) -> list[GroupScope]:
    """Every group's scope, read now: groups, channels, floors, and the versions hosts are
    updating to (through the (group, status) index: hosts in the middle of an update only)."""
    groups = (await session.execute(select(Group))).scalars().all()
    targets: dict[int, str] = {
        channel_id: version
        for channel_id, version in (
            await session.execute(
                select(Channel.id, Package.version).join(Package, Channel.package_id == Package.id)
            )
        ).all()
    }
    floors: dict[int, set[str]] = {}
    for channel_id, version in (
        await session.execute(select(ChannelFloor.channel_id, ChannelFloor.version))
    ).all():
        floors.setdefault(channel_id, set()).add(version)
    # Any group's: a host that moves to another track mid-update fails in its new group.
    updating: set[str] = {
        version
        for version in (
            await session.execute(
                select(InstanceApp.granted_version)
                .where(
                    InstanceApp.group_id.in_([g.id for g in groups]),
                    InstanceApp.status.in_(sorted(IN_PROGRESS)),
                    InstanceApp.granted_version.is_not(None),
                )
                .distinct()
            )
        ).scalars()
        if version is not None
    }
    scopes = []
    for g in groups:
        live = set(updating)
        if g.pin_version:
            live.add(g.pin_version)
        if g.channel_id is not None:
            if g.channel_id in targets:
                live.add(targets[g.channel_id])
            live |= floors.get(g.channel_id, set())
        period = g.period_seconds if g.max_updates_per_period and g.period_seconds else 0
        scopes.append(GroupScope(g.id, g.resumed_at, timedelta(seconds=period), frozenset(live)))
    return scopes


def old_grants(scope: GroupScope, now: datetime, age: timedelta) -> ColumnElement[bool]:
    return (
        (Grant.group_id == scope.group_id)
        & (Grant.granted_at < scope.grant_cutoff(now, age))
        & scope.gate_done(Grant.granted_at, Grant.version)
    )


def old_failures(scope: GroupScope, now: datetime, age: timedelta) -> ColumnElement[bool]:
    return (
        (Failure.group_id == scope.group_id)
        & (Failure.last_at < now - age)
        & scope.gate_done(Failure.last_at, Failure.version)
    )


def old_activity(now: datetime, age: timedelta) -> ColumnElement[bool]:
    return Activity.created_at < now - age


Prunable = type[Grant] | type[Failure] | type[Activity]


async def delete_batch(
    session: AsyncSession, model: Prunable, where: ColumnElement[bool], batch: int
) -> tuple[int, int]:
    """Delete at most `batch` rows matching `where`: (rows found, rows deleted). The condition
    is checked again in the DELETE itself, so a failure that a host records again meanwhile
    (its last_at moves on) stays."""
    found = list((await session.execute(select(model.id).where(where).limit(batch))).scalars())
    if not found:
        return 0, 0
    result = await session.execute(
        delete(model).where(model.id.in_(found), where).execution_options(synchronize_session=False)
    )
    return len(found), int(result.rowcount or 0)  # type: ignore[attr-defined]
