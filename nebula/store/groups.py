"""Channels and groups: list, point a channel at a version, create and find groups.

Query functions take the session first and never commit. Imports nebula.store.models,
nebula.store.packages and nebula.errors.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from nebula.errors import ConflictError, InvalidInputError, NotFoundError
from nebula.store.counts import counts_of_group
from nebula.store.models import Channel, ChannelFloor, Group, Package
from nebula.store.packages import check_arch, find_package
from nebula.versions import parse_version

FLATCAR_APP_ID = "e96281a6-d1af-4bde-9a0a-97b76e56dc57"
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
    session: AsyncSession, name: str, arch: str, app_id: str = FLATCAR_APP_ID
) -> Channel:
    stmt = select(Channel).where(
        Channel.app_id == app_id, Channel.name == name, Channel.arch == arch
    )
    channel = (await session.execute(stmt)).scalar_one_or_none()
    if channel is None:
        raise NotFoundError(f"no channel {name} for {arch}")
    return channel


async def set_channel(
    session: AsyncSession,
    name: str,
    arch: str,
    version: str,
    actor: str,
    now: datetime,
    app_id: str = FLATCAR_APP_ID,
) -> tuple[Channel, Package]:
    """Point a channel at the full package of `version` (uploaded or registered before)."""
    check_arch(arch)
    channel = await get_channel(session, name, arch, app_id)
    package = await find_package(session, app_id, arch, version)
    if package is None:
        raise NotFoundError(
            f"no {arch} package of version {version}: upload or add it before pointing {name} at it"
        )
    channel.package_id = package.id
    channel.updated_at = now
    channel.updated_by = actor
    return channel, package


async def create_channel(
    session: AsyncSession,
    name: str,
    arch: str,
    now: datetime,
    actor: str,
    app_id: str = FLATCAR_APP_ID,
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
    session.add(channel)
    await session.flush()
    return channel


async def list_groups(session: AsyncSession, app_id: str = FLATCAR_APP_ID) -> list[Group]:
    stmt = select(Group).where(Group.app_id == app_id).order_by(Group.arch, Group.name)
    return list((await session.execute(stmt)).scalars())


async def find_group(
    session: AsyncSession, ref: str, arch: str | None = None, app_id: str = FLATCAR_APP_ID
) -> Group:
    """A group by id, name or track; `arch` picks one when the name exists for several."""
    stmt = select(Group).where(
        Group.app_id == app_id,
        or_(Group.id == ref.lower().strip("{}"), Group.name == ref, Group.track == ref),
    )
    if arch:
        stmt = stmt.where(Group.arch == arch)
    found = list((await session.execute(stmt)).scalars())
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
    clash = (
        await session.execute(
            select(Group.name).where(
                Group.app_id == app_id,
                Group.arch == arch,
                # Crossed too: `find_group` looks a ref up as name or track, so one group's name
                # equal to another's track would make that ref match two groups.
                or_(Group.name.in_((name, track)), Group.track.in_((name, track))),
            )
        )
    ).first()
    if clash is not None:
        raise ConflictError(f"a {arch} group named {name} or with track {track} exists already")
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
