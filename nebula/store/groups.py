"""Channels and groups: list, create, find, change and delete them; point a channel at a version.

Channels are unique per (app, name, arch) and groups per (app, name or track, arch). A lookup
given no app looks in Flatcar's first (what every route meant before custom apps), then in
every app, and asks for the app when the name is in several. Query functions take the session
first and never commit. Imports nebula.store.models, nebula.store.apps, nebula.store.packages
and nebula.errors.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from nebula.errors import ConflictError, InvalidInputError, NotFoundError
from nebula.store.apps import FLATCAR_APP_ID
from nebula.store.counts import counts_of_group
from nebula.store.models import Application, Channel, ChannelFloor, Group, InstanceApp, Package
from nebula.store.packages import check_arch, find_package
from nebula.versions import parse_version

__all__ = ["FLATCAR_APP_ID"]  # re-exported: older callers import it from here
T = TypeVar("T", Channel, Group)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_name(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise InvalidInputError(f"{what} {value!r}: use letters, digits, '.', '_', '-'")
    return value


async def list_channels(
    session: AsyncSession, app_id: str = FLATCAR_APP_ID
) -> list[tuple[Channel, Package | None]]:
    stmt = (
        select(Channel, Package)
        .outerjoin(Package, Channel.package_id == Package.id)
        .where(Channel.app_id == app_id)
        .order_by(Channel.arch, Channel.name)
    )
    return [(c, p) for c, p in (await session.execute(stmt)).all()]


async def get_channel(
    session: AsyncSession, name: str, arch: str | None, app_id: str | None = None
) -> Channel:
    """A channel by name; `arch` may be left out when the name has one; `app_id` when the name
    is Flatcar's or in one app only."""
    stmt = select(Channel).where(Channel.name == name)
    if arch:
        stmt = stmt.where(Channel.arch == arch)
    found = await _in_app(session, stmt, Channel, app_id)
    if not found:
        raise NotFoundError(f"no channel {name}" + (f" for {arch}" if arch else ""))
    arches = sorted({c.arch for c in found})
    if len(arches) > 1:
        raise InvalidInputError(
            f"channel {name} exists for {', '.join(arches)}: say which with --arch"
        )
    return found[0]


async def _in_app(
    session: AsyncSession, stmt: Select[tuple[T]], model: type[T], app_id: str | None
) -> list[T]:
    """What `stmt` finds in app `app_id`; without one, in Flatcar's, else in the one app that
    has it (InvalidInputError naming the apps when several do)."""
    column: Any = model.app_id
    if app_id is not None:
        return list((await session.execute(stmt.where(column == app_id))).scalars())
    found = list((await session.execute(stmt)).scalars())
    flatcar = [x for x in found if x.app_id == FLATCAR_APP_ID]
    apps = sorted({x.app_id for x in found})
    if flatcar or len(apps) <= 1:
        return flatcar or found
    names = (
        await session.execute(select(Application.name).where(Application.id.in_(apps)))
    ).scalars()
    raise InvalidInputError(
        f"{model.__name__.lower()} {found[0].name} exists in the apps "
        f"{', '.join(sorted(names))}: say which with --app"
    )


async def set_channel(
    session: AsyncSession,
    name: str,
    arch: str,
    version: str,
    actor: str,
    now: datetime,
    app_id: str | None = None,
) -> tuple[Channel, Package]:
    """Point a channel at the full package of `version` (uploaded or registered before)."""
    check_arch(arch)
    channel = await get_channel(session, name, arch, app_id)
    package = await _full_package(session, channel, version)
    channel.package_id = package.id
    channel.updated_at = now
    channel.updated_by = actor
    return channel, package


async def _full_package(session: AsyncSession, channel: Channel, version: str) -> Package:
    package = await find_package(session, channel.app_id, channel.arch, version)
    if package is None:
        raise NotFoundError(
            f"no {channel.arch} package of version {version}: upload or add it before pointing "
            f"{channel.name} at it"
        )
    return package


async def create_channel(
    session: AsyncSession,
    name: str,
    arch: str,
    now: datetime,
    actor: str,
    app_id: str = FLATCAR_APP_ID,
    version: str | None = None,
) -> Channel:
    check_name(name, "channel")
    check_arch(arch)
    exists = (
        await session.execute(
            select(Channel.id).where(
                Channel.app_id == app_id, Channel.name == name, Channel.arch == arch
            )
        )
    ).first()
    if exists is not None:
        raise ConflictError(f"channel {name} ({arch}) exists already")
    channel = Channel(app_id=app_id, name=name, arch=arch, updated_at=now, updated_by=actor)
    if version is not None:
        channel.package_id = (await _full_package(session, channel, version)).id
    session.add(channel)
    await session.flush()
    return channel


async def followers(session: AsyncSession, channel_id: int) -> list[Group]:
    """The groups that follow a channel."""
    stmt = select(Group).where(Group.channel_id == channel_id).order_by(Group.name, Group.arch)
    return list((await session.execute(stmt)).scalars())


async def delete_channel(session: AsyncSession, channel: Channel) -> None:
    """Delete a channel no group follows (its floors go with it); ConflictError naming them."""
    groups = await followers(session, channel.id)
    if groups:
        names = ", ".join(f"{g.name} ({g.arch})" for g in groups)
        raise ConflictError(
            f"channel {channel.name} ({channel.arch}) is followed by the groups {names}: "
            "point them at another channel or delete them first"
        )
    await session.delete(channel)


async def list_groups(session: AsyncSession, app_id: str = FLATCAR_APP_ID) -> list[Group]:
    stmt = select(Group).where(Group.app_id == app_id).order_by(Group.arch, Group.name)
    return list((await session.execute(stmt)).scalars())


async def find_group(
    session: AsyncSession, ref: str, arch: str | None = None, app_id: str | None = None
) -> Group:
    """A group by id, name or track; `arch` picks one when the name exists for several, and
    `app_id` when the name is in several apps but not Flatcar's."""
    stmt = select(Group).where(
        or_(Group.id == ref.lower().strip("{}"), Group.name == ref, Group.track == ref),
    )
    if arch:
        stmt = stmt.where(Group.arch == arch)
    found = await _in_app(session, stmt, Group, app_id)
    if not found:
        raise NotFoundError(f"no group {ref}" + (f" for {arch}" if arch else ""))
    if len({g.id for g in found}) > 1:
        arches = sorted({g.arch for g in found})
        raise InvalidInputError(
            f"group {ref} exists for {', '.join(arches)}: say which with --arch"
        )
    return found[0]


async def create_group(
    session: AsyncSession,
    *,
    name: str,
    track: str | None,
    arch: str,
    channel: str,
    description: str,
    now: datetime,
    app_id: str = FLATCAR_APP_ID,
) -> Group:
    check_name(name, "group name")
    track = track or name
    check_name(track, "track")
    check_arch(arch)
    chan = await get_channel(session, channel, arch, app_id)
    await _refuse_clash(session, app_id, arch, name, track, None)
    group = Group(
        id=str(uuid.uuid4()),
        app_id=app_id,
        name=name,
        track=track,
        arch=arch,
        channel_id=chan.id,
        description=description,
        created_at=now,
        updates_enabled=True,
        safe_mode=False,
        windows=[],
        percentage=100.0,
        allow_downgrade=False,
    )
    session.add(group)
    await session.flush()
    return group


async def _refuse_clash(
    session: AsyncSession, app_id: str, arch: str, name: str, track: str, other_than: str | None
) -> None:
    stmt = select(Group.name).where(
        Group.app_id == app_id,
        Group.arch == arch,
        # Crossed too: `find_group` looks a ref up as name or track, so one group's name
        # equal to another's track would make that ref match two groups.
        or_(Group.name.in_((name, track)), Group.track.in_((name, track))),
    )
    if other_than is not None:
        stmt = stmt.where(Group.id != other_than)
    if (await session.execute(stmt)).first() is not None:
        raise ConflictError(f"a {arch} group named {name} or with track {track} exists already")


async def update_group(
    session: AsyncSession,
    group: Group,
    *,
    name: str | None,
    track: str | None,
    channel: str | None,
    description: str | None,
) -> dict[str, list[Any]]:
    """Rename a group, change its track, channel or description; {field: [old, new]}."""
    diff: dict[str, list[Any]] = {}
    new_name = check_name(name, "group name") if name is not None else group.name
    new_track = check_name(track, "track") if track is not None else group.track
    if (new_name, new_track) != (group.name, group.track):
        await _refuse_clash(session, group.app_id, group.arch, new_name, new_track, group.id)
    for field, value in (("name", new_name), ("track", new_track)):
        if getattr(group, field) != value:
            diff[field] = [getattr(group, field), value]
            setattr(group, field, value)
    if channel is not None:
        chan = await get_channel(session, channel, group.arch, group.app_id)
        if chan.id != group.channel_id:
            old = await session.get(Channel, group.channel_id) if group.channel_id else None
            diff["channel"] = [old.name if old else None, chan.name]
            group.channel_id = chan.id
    if description is not None and description != group.description:
        diff["description"] = [group.description, description]
        group.description = description
    return diff


async def hosts_in(session: AsyncSession, group_id: str) -> tuple[int, int]:
    """How many hosts are in a group, and how many of those are retired (an indexed count)."""
    row = (
        await session.execute(
            select(func.count(), func.count(InstanceApp.retired_at)).where(
                InstanceApp.group_id == group_id
            )
        )
    ).one()
    return int(row[0]), int(row[1])


async def delete_group(session: AsyncSession, group: Group) -> None:
    """Delete a group no host is in; ConflictError with the count otherwise.

    Refused rather than forced: the hosts would keep their state but lose the group's rollout
    history, failures and counts with it, and would join it again by track at their next check.
    """
    hosts, retired = await hosts_in(session, group.id)
    if hosts:
        some_retired = f", {retired} of them retired" if retired else ""
        raise ConflictError(
            f"group {group.name} ({group.arch}) has {hosts} hosts{some_retired}: move them to "
            "another track (GROUP= in update.conf) or delete them (nebula instance delete) first"
        )
    await session.delete(group)


async def status_counts(session: AsyncSession, group_id: str) -> dict[str, int]:
    return await counts_of_group(session, group_id)


async def channel_floors(session: AsyncSession, channel_id: int) -> list[str]:
    stmt = select(ChannelFloor.version).where(ChannelFloor.channel_id == channel_id)
    return sorted((await session.execute(stmt)).scalars(), key=parse_version)


async def add_floor(
    session: AsyncSession, channel: Channel, version: str, actor: str, now: datetime
) -> None:
    """Mark `version` a floor of `channel`: hosts below it pass through it first."""
    if await find_package(session, channel.app_id, channel.arch, version) is None:
        raise NotFoundError(
            f"no {channel.arch} package of version {version}: a floor must be a version hosts "
            "can be given"
        )
    exists = (
        await session.execute(
            select(ChannelFloor.id).where(
                ChannelFloor.channel_id == channel.id, ChannelFloor.version == version
            )
        )
    ).first()
    if exists is None:
        session.add(
            ChannelFloor(channel_id=channel.id, version=version, created_at=now, created_by=actor)
        )


async def remove_floor(session: AsyncSession, channel: Channel, version: str) -> None:
    floor = (
        await session.execute(
            select(ChannelFloor).where(
                ChannelFloor.channel_id == channel.id, ChannelFloor.version == version
            )
        )
    ).scalar_one_or_none()
    if floor is None:
        raise NotFoundError(f"{version} is not a floor of channel {channel.name} ({channel.arch})")
    await session.delete(floor)
