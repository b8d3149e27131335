"""Writes and reads of host state: instances, their per-application state, and the event log.

Query functions take the session first and never commit: the caller owns the transaction.
Imports only nebula.store.models and nebula.store.upsert.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from nebula.store.models import Base, Event, Instance, InstanceApp
from nebula.store.upsert import upsert


def _lengths(model: type[Base]) -> dict[str, int]:
    return {
        c.name: c.type.length
        for c in model.__table__.columns
        if isinstance(c.type, String) and c.type.length
    }


# Column sizes, read from the models. Hosts fill every attribute themselves (MACHINE_ALIAS is
# free text): PostgreSQL refuses an over-long value where SQLite stores it, so values that are
# only recorded are clipped, and identifiers that cannot be clipped are checked by the caller.
INSTANCE_LIMITS = _lengths(Instance)
STATE_LIMITS = _lengths(InstanceApp)
EVENT_LIMITS = _lengths(Event)
MACHINE_ID_MAX = INSTANCE_LIMITS["id"]
VERSION_MAX = min(STATE_LIMITS["version"], EVENT_LIMITS["version"])


def clip(value: str | None, limit: int) -> str | None:
    return value if value is None or len(value) <= limit else value[:limit]


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What a host says about itself in a request."""

    machine_id: str
    alias: str | None
    ip: str | None
    oem: str | None
    oem_version: str | None
    aleph_version: str | None
    board: str | None


_OPTIONAL_FACTS = ("alias", "oem", "oem_version", "aleph_version", "board")
# Hosts that omit an attribute (old clients, the stub) must not erase what others reported:
# a NULL keeps the stored value.
_UPSERT = upsert(
    Instance.__table__,
    ("id", "ip", "created_at", "last_seen_at", *_OPTIONAL_FACTS),
    ("id",),
    {
        "ip": "excluded.ip",
        "last_seen_at": "excluded.last_seen_at",
        **{c: f"coalesce(excluded.{c}, instances.{c})" for c in _OPTIONAL_FACTS},
    },
)


async def upsert_instance(session: AsyncSession, facts: HostFacts, now: datetime) -> None:
    """Insert the host or refresh what it reports, in one statement on either database."""
    params: dict[str, Any] = {
        "id": facts.machine_id,
        "ip": clip(facts.ip, INSTANCE_LIMITS["ip"]),
        "created_at": now,
        "last_seen_at": now,
    }
    for name in _OPTIONAL_FACTS:
        value = getattr(facts, name)
        params[name] = None if value is None else clip(value, INSTANCE_LIMITS[name])
    await session.execute(_UPSERT, params)


async def lock_instance_app(
    session: AsyncSession, machine_id: str, app_id: str
) -> InstanceApp | None:
    """The host's state row, locked until the transaction ends (PostgreSQL; SQLite locks all)."""
    stmt = (
        select(InstanceApp)
        .where(InstanceApp.instance_id == machine_id, InstanceApp.app_id == app_id)
        .with_for_update()
    )
    return (await session.execute(stmt)).scalar_one_or_none()


@dataclass(frozen=True, slots=True)
class StoredHost:
    """A host's state for one app and the facts it last reported, as stored."""

    group_id: str | None
    track: str | None
    version: str | None
    status: str
    granted_version: str | None
    held: bool
    alias: str | None
    oem: str | None
    oem_version: str | None
    aleph_version: str | None
    board: str | None
    retired: bool

    def same_facts(self, facts: HostFacts, track: str | None) -> bool:
        """Whether recording `facts` and `track` would change nothing (a value not sent keeps
        the stored one, as upsert_instance does)."""
        if clip(track, STATE_LIMITS["track"]) != self.track:
            return False
        for name in _OPTIONAL_FACTS:
            sent = getattr(facts, name)
            if sent is not None and clip(sent, INSTANCE_LIMITS[name]) != getattr(self, name):
                return False
        return True


_READ_HOST = (
    select(
        InstanceApp.group_id,
        InstanceApp.track,
        InstanceApp.version,
        InstanceApp.status,
        InstanceApp.granted_version,
        InstanceApp.held,
        *(getattr(Instance, name) for name in _OPTIONAL_FACTS),
        InstanceApp.retired_at.is_not(None),
    )
    .join(Instance, Instance.id == InstanceApp.instance_id)
    .where(InstanceApp.instance_id == bindparam("machine_id"))
    .where(InstanceApp.app_id == bindparam("app_id"))
)


async def read_host(
    session: AsyncSession | AsyncConnection, machine_id: str, app_id: str
) -> StoredHost | None:
    """One indexed read, no lock: what a steady-state check-in is judged on when this process
    has no snapshot of the host."""
    row = (await session.execute(_READ_HOST, {"machine_id": machine_id, "app_id": app_id})).first()
    return None if row is None else StoredHost(*row)


def new_instance_app(machine_id: str, app_id: str, now: datetime) -> InstanceApp:
    return InstanceApp(
        instance_id=machine_id,
        app_id=app_id,
        status="new",
        status_changed_at=now,
        created_at=now,
        held=False,
    )


def record_event(
    session: AsyncSession,
    *,
    now: datetime,
    machine_id: str,
    app_id: str,
    group_id: str | None,
    event_type: int,
    event_result: int,
    error_code: int | None,
    version: str | None,
    previous_version: str | None,
    boot_id: str | None,
) -> None:
    session.add(
        Event(
            created_at=now,
            instance_id=machine_id,
            app_id=app_id,
            group_id=group_id,
            event_type=event_type,
            event_result=event_result,
            error_code=error_code,
            base_code=None if error_code is None else error_code & 0x0FFFFFFF,
            flags=None if error_code is None else error_code & ~0x0FFFFFFF & 0xFFFFFFFF,
            version=clip(version, EVENT_LIMITS["version"]),
            previous_version=clip(previous_version, EVENT_LIMITS["previous_version"]),
            boot_id=clip(boot_id, EVENT_LIMITS["boot_id"]),
        )
    )
