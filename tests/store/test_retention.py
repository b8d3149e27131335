"""Event retention deletes exactly the events older than the cut-off, across batches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.config import load_settings
from nebula.errors import ConfigError
from nebula.jobs.retention import prune_events
from nebula.store import db
from nebula.store.hosts import record_event
from nebula.store.models import Event, Instance

APP = "e96281a6-d1af-4bde-9a0a-97b76e56dc57"
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


async def test_prune_removes_only_old_events(engine: AsyncEngine) -> None:
    sessions = db.session_factory(engine)
    async with db.transaction(sessions) as session:
        session.add(Instance(id="a" * 32, created_at=NOW, last_seen_at=NOW))
        await session.flush()
        for days in range(10):  # one event a day, 0..9 days old
            record_event(
                session,
                now=NOW - timedelta(days=days),
                machine_id="a" * 32,
                app_id=APP,
                group_id=None,
                event_type=3,
                event_result=2,
                error_code=None,
                version="1.0.0",
                previous_version="",
                boot_id=None,
            )
    # A batch of 3 makes the 6 old events take several rounds.
    removed = await prune_events(sessions, NOW - timedelta(days=3, hours=12), batch=3)
    assert removed == 6
    async with db.transaction(sessions) as session:
        left = (await session.execute(select(func.min(Event.created_at), func.count()))).one()
    assert left[1] == 4
    assert left[0] >= NOW - timedelta(days=3)


def test_retention_setting_is_checked() -> None:
    with pytest.raises(ConfigError, match="event_retention"):
        load_settings({"event_retention": "ninety days"}, environ={})
    assert load_settings({"event_retention": ""}, environ={}).event_retention == ""
