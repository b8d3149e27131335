"""The retirement job: hosts not seen for their group's `retire_after` are retired (out of every
count until they check in again; nebula.store.retirement).

One process per deployment runs it, the leader (nebula.jobs.leader), once a minute by default;
the work is idempotent (an UPDATE of live hosts only), so two runs at once while leadership
changes hands only repeat each other. Batches keep each transaction short when a whole
autoscaling group went away at once. Retired hosts are announced on `changes`, so that no
process answers one from a snapshot of before: its next check-in goes through the transaction
that brings it back. Imports nebula.store.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nebula.store.changes import HostChanges
from nebula.store.db import transaction
from nebula.store.retirement import BATCH, groups_that_retire, retire_silent

log = logging.getLogger(__name__)
INTERVAL = 60.0  # at least once a minute (the issue asks for no less)


async def retire_once(
    sessions: async_sessionmaker[AsyncSession],
    now: datetime,
    changes: HostChanges | None = None,
    batch: int = BATCH,
) -> list[str]:
    """One pass over every group; returns the machine ids retired."""
    async with transaction(sessions) as session:
        groups = await groups_that_retire(session)
    retired: list[str] = []
    for group_id, after in groups:
        more = True
        while more:
            async with transaction(sessions) as session:
                result = await retire_silent(session, group_id, after, now, batch)
                if changes is not None and result.machine_ids:
                    await changes.announce(session, result.machine_ids)
            if changes is not None and result.machine_ids:
                changes.applied(result.machine_ids)
            retired.extend(result.machine_ids)
            more = result.more and bool(result.machine_ids)
    if retired:
        log.info("retired %d hosts not seen for their group's retire_after", len(retired))
    return retired


async def run_retirement(
    sessions: async_sessionmaker[AsyncSession],
    clock: Callable[[], datetime],
    interval: float = INTERVAL,
    changes: HostChanges | None = None,
) -> None:
    """Retire silent hosts every `interval` seconds (with jitter) until cancelled."""
    while True:
        await asyncio.sleep(interval * random.uniform(0.8, 1.0))
        try:
            await retire_once(sessions, clock(), changes)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A lost database must not end the loop: the next pass tries again.
            log.exception("retirement pass failed")
