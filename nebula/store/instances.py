"""Reading hosts for the admin API: the filtered, searched, sorted list in keyset pages, one
host's detail (state per app, history, recent events), and its alias.

Every sort is a total order on indexed columns (migration 0013): machine id is the primary
key; last seen is `ix_instances_last_seen_id` (last_seen_at, id); version is
`ix_instance_apps_version_key` (version, instance_id, app_id). Ties are broken by machine id
and app, so a page boundary inside a run of equal values loses and repeats nothing.
Query functions take the session first and never commit. Imports nebula.store and
nebula.errors only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from nebula.errors import NotFoundError
from nebula.store.models import (
    Application,
    Channel,
    Completion,
    Event,
    Failure,
    Grant,
    Group,
    Instance,
    InstanceApp,
)
from nebula.store.pages import Order, Page, read_page

ALNUM = "0123456789abcdefghijklmnopqrstuvwxyz"
DETAIL_EVENTS = 50  # events and history entries in a host's detail, newest first
ALIAS_MAX = 255


def _by_id(descending: bool) -> Order:
    return Order(
        f"id:{'desc' if descending else 'asc'}",
        InstanceApp.instance_id,
        (InstanceApp.app_id,),
        descending,
        bound=(Instance.id,),
    )


def _by_last_seen(descending: bool) -> Order:
    # Ties by the instance's own id: (last_seen_at, id) is one index; the app only orders the
    # few rows of one host.
    return Order(
        f"last_seen:{'desc' if descending else 'asc'}",
        Instance.last_seen_at,
        (Instance.id, InstanceApp.app_id),
        descending,
        key_is_time=True,
        bound=(Instance.last_seen_at, Instance.id),
    )


def _by_version(descending: bool) -> Order:
    return Order(
        f"version:{'desc' if descending else 'asc'}",
        InstanceApp.version,
        (InstanceApp.instance_id, InstanceApp.app_id),
        descending,
        nullable=True,
    )


SORTS: dict[str, Callable[[bool], Order]] = {
    "id": _by_id,
    "last_seen": _by_last_seen,
    "version": _by_version,
}


@dataclass(frozen=True, slots=True)
class Filters:
    """What the list keeps; None (or empty) keeps everything on that count."""

    app_id: str | None = None
    group_ids: tuple[str, ...] | None = None  # hosts in one of these groups
    version: str | None = None
    status: str | None = None
    held: bool | None = None
    seen_before: datetime | None = None
    seen_after: datetime | None = None
    retired: str = "live"  # live, retired or all
    search: str | None = None  # a machine id prefix, an alias or an IP address
    extra: list[ColumnElement[bool]] = field(default_factory=list)


def successor(prefix: str) -> str | None:
    """A string above every string that starts with `prefix` and below the next such run:
    the last letter or digit moved on by one ('9' to 'a', 'z' carried), what follows it
    dropped. Letters and digits alone, because collations that skip punctuation at first
    would put "ab:" among the "ab9..." (None: no such bound)."""
    chars = list(prefix)
    while chars:
        last = chars.pop()
        if last in ALNUM and last != "z":
            return "".join(chars) + ALNUM[ALNUM.index(last) + 1]
    return None


def search_condition(text: str) -> ColumnElement[bool]:
    """Machine id prefix, exact alias or exact IP address, each an index range (machine ids
    are kept lower-case, braces off). The id prefix is a range of the primary key, from the
    prefix to its successor; LIKE then keeps exactly the ids that start with it."""
    machine = text.strip().strip("{}").strip().lower()
    conditions: list[ColumnElement[bool]] = [Instance.alias == text, Instance.ip == text.strip()]
    if machine:
        prefix = (Instance.id >= machine) & Instance.id.startswith(machine, autoescape=True)
        upper = successor(machine)
        conditions.append(prefix if upper is None else prefix & (Instance.id < upper))
    return or_(*conditions)


def _listing(filters: Filters) -> Select[Any]:
    stmt = (
        select(InstanceApp, Instance, Group.name, Group.arch)
        .join(Instance, Instance.id == InstanceApp.instance_id)
        .outerjoin(Group, Group.id == InstanceApp.group_id)
    )
    f = filters
    if f.app_id is not None:
        stmt = stmt.where(InstanceApp.app_id == f.app_id)
    if f.group_ids is not None:
        stmt = stmt.where(InstanceApp.group_id.in_(f.group_ids))
    if f.version is not None:
        stmt = stmt.where(InstanceApp.version == f.version)
    if f.status is not None:
        stmt = stmt.where(InstanceApp.status == f.status)
    if f.held is not None:
        stmt = stmt.where(InstanceApp.held.is_(f.held))
    if f.seen_before is not None:
        stmt = stmt.where(Instance.last_seen_at < f.seen_before)
    if f.seen_after is not None:
        stmt = stmt.where(Instance.last_seen_at >= f.seen_after)
    if f.retired == "live":
        stmt = stmt.where(InstanceApp.retired_at.is_(None))
    elif f.retired == "retired":
        stmt = stmt.where(InstanceApp.retired_at.is_not(None))
    if f.search:
        stmt = stmt.where(search_condition(f.search))
    for condition in f.extra:
        stmt = stmt.where(condition)
    return stmt


async def list_instances(
    session: AsyncSession, filters: Filters, order: Order, after: list[Any] | None, limit: int
) -> Page:
    """A page of (InstanceApp, Instance, group name, group arch) rows."""
    return await read_page(session, _listing(filters), order, after, limit, tuple)


# -- resolving names -------------------------------------------------------------------------


async def find_app_id(session: AsyncSession, ref: str) -> str:
    """An application by id or name."""
    found = (
        await session.execute(
            select(Application.id).where(
                or_(Application.id == ref.strip("{}").lower(), Application.name == ref)
            )
        )
    ).scalar()
    if found is None:
        raise NotFoundError(f"no application {ref}")
    return str(found)


async def group_ids_where(session: AsyncSession, *conditions: Any) -> tuple[str, ...]:
    rows = await session.execute(select(Group.id).where(*conditions))
    return tuple(rows.scalars())


async def channel_group_ids(
    session: AsyncSession, name: str, arch: str | None, app_id: str | None
) -> tuple[str, ...]:
    """The groups following a channel (of that name, on `arch` if given)."""
    channels = select(Channel.id).where(Channel.name == name)
    if arch:
        channels = channels.where(Channel.arch == arch)
    if app_id:
        channels = channels.where(Channel.app_id == app_id)
    if (await session.execute(channels.limit(1))).first() is None:
        raise NotFoundError(f"no channel {name}" + (f" for {arch}" if arch else ""))
    return await group_ids_where(session, Group.channel_id.in_(channels))


# -- one host --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    at: datetime
    what: str  # granted, complete, error, rolled_back, timed_out
    version: str
    group_id: str | None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HostDetail:
    instance: Instance
    states: list[tuple[InstanceApp, str | None, str | None]]  # with group name and arch
    history: list[HistoryEntry]
    events: list[Event]


async def host_detail(
    session: AsyncSession, machine_id: str, limit: int = DETAIL_EVENTS
) -> HostDetail:
    instance = await session.get(Instance, machine_id)
    if instance is None:
        raise NotFoundError(f"no host {machine_id} has checked in")
    states = [
        (s, name, arch)
        for s, name, arch in (
            await session.execute(
                select(InstanceApp, Group.name, Group.arch)
                .outerjoin(Group, Group.id == InstanceApp.group_id)
                .where(InstanceApp.instance_id == machine_id)
                .order_by(InstanceApp.app_id)
            )
        ).all()
    ]
    history: list[HistoryEntry] = []
    for g in (
        await session.execute(
            select(Grant)
            .where(Grant.instance_id == machine_id)
            .order_by(Grant.granted_at.desc())
            .limit(limit)
        )
    ).scalars():
        history.append(HistoryEntry(g.granted_at, "granted", g.version, g.group_id))
    for c in (
        await session.execute(
            select(Completion)
            .where(Completion.instance_id == machine_id)
            .order_by(Completion.completed_at.desc())
            .limit(limit)
        )
    ).scalars():
        history.append(HistoryEntry(c.completed_at, "complete", c.version, c.group_id))
    for f in (
        await session.execute(
            select(Failure)
            .where(Failure.instance_id == machine_id)
            .order_by(Failure.last_at.desc())
            .limit(limit)
        )
    ).scalars():
        history.append(
            HistoryEntry(
                f.last_at,
                f.kind,
                f.version,
                f.group_id,
                {"code": f.code, "count": f.count, "first_at": f.first_at},
            )
        )
    history.sort(key=lambda h: h.at, reverse=True)
    events = list(
        (
            await session.execute(
                select(Event)
                .where(Event.instance_id == machine_id)
                .order_by(Event.created_at.desc(), Event.id.desc())
                .limit(limit)
            )
        ).scalars()
    )
    return HostDetail(instance, states, history[:limit], events)


async def set_alias(session: AsyncSession, machine_id: str, alias: str | None) -> str | None:
    """Give a host an alias (None removes it); the alias it had before."""
    instance = await session.get(Instance, machine_id, with_for_update=True)
    if instance is None:
        raise NotFoundError(f"no host {machine_id} has checked in")
    old = instance.alias or None  # hosts that send no alias send it empty
    instance.alias = alias
    return old
