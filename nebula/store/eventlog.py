"""Reading the fleet's logs for the admin API: the events hosts sent and the activity log of
operators' and Nebula's own changes, filtered, newest first, in keyset pages.

Both order by (created_at, id): `ix_events_time_id` and `ix_activity_time_id` (migration
0013) answer the fleet-wide pages; one host's events come from `ix_events_instance_time`, one
group's from `ix_events_group_time` and `ix_activity_group_time`.
Query functions take the session first and never commit. Imports nebula.store only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from nebula.store.models import Activity, Event
from nebula.store.pages import Order, Page, read_page


def event_order(descending: bool = True) -> Order:
    return Order(
        f"time:{'desc' if descending else 'asc'}",
        Event.created_at,
        (Event.id,),
        descending,
        key_is_time=True,
    )


def activity_order(descending: bool = True) -> Order:
    return Order(
        f"time:{'desc' if descending else 'asc'}",
        Activity.created_at,
        (Activity.id,),
        descending,
        key_is_time=True,
    )


@dataclass(frozen=True, slots=True)
class EventFilters:
    machine_id: str | None = None
    group_id: str | None = None
    app_id: str | None = None
    event_type: int | None = None
    result: int | None = None
    since: datetime | None = None  # at or after
    until: datetime | None = None  # before


async def list_events(
    session: AsyncSession, f: EventFilters, order: Order, after: list[Any] | None, limit: int
) -> Page:
    stmt = _filtered(
        select(Event),
        [
            (Event.instance_id, f.machine_id),
            (Event.group_id, f.group_id),
            (Event.app_id, f.app_id),
            (Event.event_type, f.event_type),
            (Event.event_result, f.result),
        ],
        Event.created_at,
        f.since,
        f.until,
    )
    return await read_page(session, stmt, order, after, limit, lambda row: row[0])


@dataclass(frozen=True, slots=True)
class ActivityFilters:
    group_id: str | None = None
    actor: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None


async def list_activity(
    session: AsyncSession, f: ActivityFilters, order: Order, after: list[Any] | None, limit: int
) -> Page:
    stmt = _filtered(
        select(Activity),
        [(Activity.group_id, f.group_id), (Activity.actor, f.actor), (Activity.action, f.action)],
        Activity.created_at,
        f.since,
        f.until,
    )
    return await read_page(session, stmt, order, after, limit, lambda row: row[0])


def _filtered(
    stmt: Select[Any],
    equal: list[tuple[InstrumentedAttribute[Any], Any]],
    created_at: InstrumentedAttribute[datetime],
    since: datetime | None,
    until: datetime | None,
) -> Select[Any]:
    """`stmt` with each column equal to its value (a filter left out where the value is None)
    and created in [since, until)."""
    for column, value in equal:
        if value is not None:
            stmt = stmt.where(column == value)
    if since is not None:
        stmt = stmt.where(created_at >= since)
    if until is not None:
        stmt = stmt.where(created_at < until)
    return stmt
