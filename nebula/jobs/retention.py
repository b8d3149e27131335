"""Retention: delete events, grants, failures and activity older than their configured ages,
in small batches, once an hour.

Every update check carries an event (contract §2), so the log grows by one row per host per
check; grants and failures grow with every rollout, activity with every operator change.
Without retention a large fleet fills the database. Each batch is a short transaction of its
own, and the loop yields to the event loop between batches, so a first prune of a large backlog
neither holds locks for long nor keeps this process from answering its update checks. What a
rollout rule still reads is never deleted, whatever the age (nebula.store.retention says which
rows those are). One process per deployment runs it, the leader (nebula.jobs.leader).
Imports nebula.store, nebula.config and nebula.durations.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nebula.config import Settings
from nebula.durations import parse_duration
from nebula.store import retention
from nebula.store.db import transaction
from nebula.store.models import Activity, Event, Failure, Grant

log = logging.getLogger(__name__)
BATCH = 5000


@dataclass(frozen=True, slots=True)
class Ages:
    """How long each kind of row is kept; None keeps it forever."""

    events: timedelta | None = None
    grants: timedelta | None = None
    failures: timedelta | None = None
    activity: timedelta | None = None


def retention_ages(settings: Settings) -> Ages:
    """The ages of the settings (an empty one keeps its rows forever)."""

    def age(value: str) -> timedelta | None:
        return timedelta(seconds=parse_duration(value)) if value else None

    return Ages(
        events=age(settings.event_retention),
        grants=age(settings.grant_retention),
        failures=age(settings.failure_retention),
        activity=age(settings.activity_retention),
    )


async def prune_events(
    sessions: async_sessionmaker[AsyncSession], older_than: datetime, batch: int = BATCH
) -> int:
    """Delete events created before `older_than`; returns how many."""
    total = 0
    while True:
        async with transaction(sessions) as session:
            ids = list(
                (
                    await session.execute(
                        select(Event.id).where(Event.created_at < older_than).limit(batch)
                    )
                ).scalars()
            )
            if ids:
                await session.execute(delete(Event).where(Event.id.in_(ids)))
        total += len(ids)
        if len(ids) < batch:
            return total
        await asyncio.sleep(0)


async def _prune(
    sessions: async_sessionmaker[AsyncSession],
    model: retention.Prunable,
    where: ColumnElement[bool],
    batch: int,
) -> int:
    """Batches of `model` rows matching `where` until a batch comes up short."""
    total = 0
    while True:
        async with transaction(sessions) as session:
            found, deleted = await retention.delete_batch(session, model, where, batch)
        total += deleted
        if found < batch:
            return total
        await asyncio.sleep(0)


async def prune_once(
    sessions: async_sessionmaker[AsyncSession], now: datetime, ages: Ages, batch: int = BATCH
) -> dict[str, int]:
    """One round of every retention; the rows deleted by kind."""
    removed: dict[str, int] = {}
    if ages.events is not None:
        removed["events"] = await prune_events(sessions, now - ages.events, batch)
    if ages.grants is not None or ages.failures is not None:
        async with transaction(sessions) as session:
            scopes = await retention.group_scopes(session)
        grants = failures = 0
        for scope in scopes:
            if ages.grants is not None:
                where = retention.old_grants(scope, now, ages.grants)
                grants += await _prune(sessions, Grant, where, batch)
            if ages.failures is not None:
                where = retention.old_failures(scope, now, ages.failures)
                failures += await _prune(sessions, Failure, where, batch)
        if ages.grants is not None:
            removed["grants"] = grants
        if ages.failures is not None:
            removed["failures"] = failures
    if ages.activity is not None:
        where = retention.old_activity(now, ages.activity)
        removed["activity"] = await _prune(sessions, Activity, where, batch)
    return removed


async def run_retention(
    sessions: async_sessionmaker[AsyncSession],
    clock: Callable[[], datetime],
    ages: Ages,
    interval: float = 3600.0,
    batch: int = BATCH,
) -> None:
    """Prune every `interval` seconds until cancelled; a failed round is tried again then."""
    while True:
        try:
            removed = await prune_once(sessions, clock(), ages, batch)
            if any(removed.values()):
                done = ", ".join(f"{n} {kind}" for kind, n in removed.items() if n)
                log.info("retention: removed %s", done)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("retention failed; trying again later")
        await asyncio.sleep(interval)
