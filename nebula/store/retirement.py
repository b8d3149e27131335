"""Hosts that leave: retiring the ones gone silent past their group's `retire_after`, and
deleting a host for good.

A retired host keeps its state and history (`instance_apps.retired_at` is set) but is in no
maintained count: the status counts of nebula.store.counts count live hosts only, so rollout
status, /metrics and group counts leave it out without scanning anything. Its next check-in
brings it back (nebula.service.transition). Deleting a host removes it, its per-app state and
everything keyed on it (events, grants, failures, completions: foreign keys cascade).

Both move the counts in the same transaction as the change. Lock order as everywhere (see
nebula.store.rollouts): a group's row before any host's, count rows last.
Query functions take the session first and never commit. Imports nebula.store only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from nebula.store import counts
from nebula.store.models import Group, Instance, InstanceApp
from nebula.store.rollouts import LIVE, lock_group

BATCH = 1000


async def groups_that_retire(session: AsyncSession) -> list[tuple[str, int]]:
    """(group id, retire_after seconds) of every group that retires silent hosts."""
    rows = await session.execute(
        select(Group.id, Group.retire_after_seconds).where(Group.retire_after_seconds.is_not(None))
    )
    return [(g, int(after)) for g, after in rows.all()]


@dataclass(frozen=True, slots=True)
class Retired:
    machine_ids: list[str]  # the hosts retired
    more: bool  # a full batch: there may be more to retire


async def retire_silent(
    session: AsyncSession, group_id: str, retire_after: int, now: datetime, batch: int = BATCH
) -> Retired:
    """Retire up to `batch` live hosts of the group not seen since `now - retire_after`."""
    cutoff = now - timedelta(seconds=retire_after)
    silent = select(Instance.id).where(Instance.last_seen_at <= cutoff)  # its own index
    candidates = list(
        (
            await session.execute(
                select(InstanceApp.instance_id)
                .where(InstanceApp.group_id == group_id, LIVE, InstanceApp.instance_id.in_(silent))
                .limit(batch)
            )
        ).scalars()
    )
    if not candidates:
        return Retired([], False)
    # The UPDATE checks again and says what it changed (RETURNING): the counts move by exactly
    # the rows it retired, whatever a check-in committed in between.
    changed = (
        await session.execute(
            update(InstanceApp)
            .where(
                InstanceApp.group_id == group_id,
                LIVE,
                InstanceApp.instance_id.in_(candidates),
                InstanceApp.instance_id.in_(silent),
            )
            .values(retired_at=now)
            .returning(InstanceApp.instance_id, InstanceApp.status, InstanceApp.version)
            .execution_options(synchronize_session=False)
        )
    ).all()
    deltas: Counter[counts.ShardKey] = Counter()
    for machine_id, status, version in changed:
        counts.move(deltas, machine_id, (group_id, status, version), None)
    await counts.apply(session, deltas)
    return Retired(sorted({m for m, _, _ in changed}), len(candidates) >= batch)


@dataclass(frozen=True, slots=True)
class Deleted:
    machine_id: str
    groups: list[str]  # the groups it belonged to (for the activity log)
    apps: int  # per-app states removed


async def delete_host(session: AsyncSession, machine_id: str) -> Deleted | None:
    """Remove a host and everything keyed on it; None if there is no such host."""
    if await session.get(Instance, machine_id) is None:
        return None
    group_ids = sorted(
        {
            g
            for g in (
                await session.execute(
                    select(InstanceApp.group_id).where(InstanceApp.instance_id == machine_id)
                )
            ).scalars()
            if g is not None
        }
    )
    # Its groups' locks first: the counts a grant is decided on change here.
    for group_id in group_ids:
        await lock_group(session, group_id)
    states = (
        await session.execute(
            select(
                InstanceApp.group_id,
                InstanceApp.status,
                InstanceApp.version,
                InstanceApp.retired_at,
            )
            .where(InstanceApp.instance_id == machine_id)
            .with_for_update()
        )
    ).all()
    deltas: Counter[counts.ShardKey] = Counter()
    for group_id, status, version, retired_at in states:
        if retired_at is None:  # a retired host is in no count
            counts.move(deltas, machine_id, (group_id, status, version), None)
    await session.execute(delete(Instance).where(Instance.id == machine_id))
    await counts.apply(session, deltas)
    return Deleted(machine_id, group_ids, len(states))
