"""Event log retention: delete events older than the configured age, in small batches.

Every update check carries an event (contract §2), so the log grows by one row per host per
check; without retention a large fleet fills the database. Deleting in batches keeps each
transaction short, so a first prune of a large backlog does not hold locks for long.
One process per deployment runs it, the leader (nebula.jobs.leader). Imports nebula.store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nebula.store.db import transaction
from nebula.store.models import Event

log = logging.getLogger(__name__)
BATCH = 5000


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


async def run_retention(
    sessions: async_sessionmaker[AsyncSession],
    clock: Callable[[], datetime],
    keep_seconds: int,
    interval: float = 3600.0,
) -> None:
    """Prune once an hour until cancelled."""
    while True:
        try:
            removed = await prune_events(sessions, clock() - timedelta(seconds=keep_seconds))
            if removed:
                log.info("event retention: removed %d events", removed)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event retention failed; trying again later")
        await asyncio.sleep(interval)
