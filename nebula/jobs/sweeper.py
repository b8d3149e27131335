"""The timeout sweeper: marks hosts that outlived their group's update timeout `timed_out`, and
runs the failure gate for the rollouts they belonged to. Only hosts still working on the update
(granted, downloading, downloaded): an installed host waits for its reboot, never a failure.

One process per deployment runs it, the leader (nebula.jobs.leader); the work is idempotent
(an UPDATE of rows still in progress), so two sweepers at once while leadership changes hands
only repeat each other. The grant path never waits for it: it counts a host past
its timeout as not in flight by itself. Imports nebula.store.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nebula.store import rollouts
from nebula.store.catalog import CatalogCache, bump_stamp
from nebula.store.changes import HostChanges
from nebula.store.db import transaction

log = logging.getLogger(__name__)


async def sweep_once(
    sessions: async_sessionmaker[AsyncSession],
    now: datetime,
    changes: HostChanges | None = None,
) -> list[str]:
    """One pass; returns the reasons of the pauses it caused. The hosts it marks are announced
    on `changes`, so that no process answers them from a snapshot of before."""
    async with transaction(sessions) as session:
        touched, marked = await rollouts.mark_timeouts(session, now)
        if changes is not None:
            await changes.announce(session, marked)
    if changes is not None:
        changes.applied(marked)
    paused: list[str] = []
    for group_id, version in touched:
        # One transaction per group: the group lock first, as everywhere.
        async with transaction(sessions) as session:
            group = await rollouts.lock_group(session, group_id)
            reason = await rollouts.apply_failure_gate(session, group, version, now)
            if reason is not None:
                await bump_stamp(session)
                paused.append(reason)
    return paused


async def run_sweeper(
    sessions: async_sessionmaker[AsyncSession],
    catalog: CatalogCache,
    clock: Callable[[], datetime],
    interval: float,
    changes: HostChanges | None = None,
    observe: Callable[[], None] = lambda: None,
) -> None:
    """Sweep every `interval` seconds (with jitter) until cancelled; `observe` counts a pass."""
    while True:
        await asyncio.sleep(interval * random.uniform(0.8, 1.2))
        try:
            if await sweep_once(sessions, clock(), changes):
                catalog.invalidate()
            observe()
        except asyncio.CancelledError:
            raise
        except Exception:
            # A lost database must not end the loop: the next pass tries again.
            log.exception("timeout sweep failed")
