"""The rollout-history job: a sample of every group's status counts every `interval` seconds
(nebula.store.history), then the thinning and pruning of old samples, each in a short
transaction of its own. One process per deployment runs it, the leader (nebula.jobs.leader).
Imports nebula.store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nebula.store import history
from nebula.store.db import transaction

log = logging.getLogger(__name__)


async def sample_once(
    sessions: async_sessionmaker[AsyncSession], now: datetime, interval: int, keep_seconds: int
) -> int:
    """Take this slot's sample (if not taken yet), thin and prune; the sample's rows."""
    async with transaction(sessions) as session:
        written = await history.take_sample(session, history.stamp(now, interval))
    async with transaction(sessions) as session:
        await history.thin(session, now)
        await history.prune(session, now - timedelta(seconds=keep_seconds))
    return written


async def run_history(
    sessions: async_sessionmaker[AsyncSession],
    clock: Callable[[], datetime],
    interval: int,
    keep_seconds: int,
    tick: float = 30.0,
) -> None:
    """Sample every `interval` seconds (checked every `tick`) until cancelled."""
    while True:
        try:
            await sample_once(sessions, clock(), interval, keep_seconds)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("rollout history sample failed; trying again later")
        await asyncio.sleep(min(tick, interval))
