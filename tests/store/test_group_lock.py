"""The group's exclusive lock leaves foreign-key checks alone (PostgreSQL).

Inserting an event or a new status-count row checks its group_id with a FOR KEY SHARE lock on
the group's row. Under FOR UPDATE that check waits for the lock's holder, and a transaction that
took no group lock but holds a host's count row then deadlocked with a grant waiting for that
count row (tests/loadtest/test_simulate.py, one run in two). Under FOR NO KEY UPDATE the check
passes at once, while grants and policy changes still exclude each other.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.store import db, rollouts
from nebula.store.groups import FLATCAR_APP_ID
from nebula.store.hosts import HostFacts, record_event, upsert_instance
from nebula.store.models import Group

pytestmark = pytest.mark.parametrize(
    "db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
NOW = datetime(2026, 12, 3, tzinfo=UTC)


async def _a_group(engine: AsyncEngine) -> str:
    async with engine.connect() as conn:
        return str((await conn.execute(select(Group.id).limit(1))).scalar_one())


async def test_an_event_of_a_locked_group_is_written_without_waiting(engine: AsyncEngine) -> None:
    group_id = await _a_group(engine)
    sessions = db.session_factory(engine)
    async with db.transaction(sessions) as holder:
        await rollouts.lock_group(holder, group_id)  # exclusive, held to the end of the block
        async with db.transaction(sessions) as writer:
            await writer.execute(text("SET LOCAL lock_timeout = '3s'"))
            facts = HostFacts("e" * 32, None, None, None, None, None, None)
            await upsert_instance(writer, facts, NOW)
            record_event(
                writer,
                now=NOW,
                machine_id="e" * 32,
                app_id=FLATCAR_APP_ID,
                group_id=group_id,
                event_type=3,
                event_result=0,
                error_code=7,
                version="3815.2.0",
                previous_version=None,
                boot_id=None,
            )
            await writer.flush()  # FOR UPDATE on the group: lock timeout here


async def test_two_exclusive_locks_of_a_group_still_exclude_each_other(
    engine: AsyncEngine,
) -> None:
    """What the lock is for: a second counted grant waits (here: times out)."""
    group_id = await _a_group(engine)
    sessions = db.session_factory(engine)
    async with db.transaction(sessions) as holder:
        await rollouts.lock_group(holder, group_id)
        with pytest.raises(DBAPIError, match="lock timeout"):
            async with db.transaction(sessions) as other:
                await other.execute(text("SET LOCAL lock_timeout = '200ms'"))
                await rollouts.lock_group(other, group_id, shared=True)
        with pytest.raises(DBAPIError, match="lock timeout"):
            async with db.transaction(sessions) as other:
                await other.execute(text("SET LOCAL lock_timeout = '200ms'"))
                await rollouts.lock_group(other, group_id)
