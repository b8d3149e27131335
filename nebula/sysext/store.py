"""Queries on sysext images and their promotions: session first, never commit.

The caller's transaction (nebula.web.api.change for admin writes) decides when a change is
durable. Imports SQLAlchemy, nebula.store.models, nebula.store.groups (the Flatcar app id),
nebula.errors and nebula.sysext.names; no web or CLI code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nebula.errors import ConflictError, InvalidInputError, NotFoundError
from nebula.store.groups import FLATCAR_APP_ID
from nebula.store.models import Group, SysextImage, SysextPromotion
from nebula.sysext.names import ImageName


@dataclass(frozen=True, slots=True)
class ImageRow:
    image: SysextImage
    tracks: tuple[str, ...]  # where it is promoted, sorted

    @property
    def file_name(self) -> str:
        i = self.image
        return ImageName(i.name, i.version, i.arch).file_name


async def _flush(session: AsyncSession, clash: str) -> None:
    """Flush; a unique key that another transaction took since our check is a ConflictError
    (the whole change rolls back), not a 500."""
    try:
        await session.flush()
    except IntegrityError:
        raise ConflictError(clash) from None


async def check_new_image(session: AsyncSession, image: ImageName) -> None:
    """ConflictError when the name, version and arch are taken: an image never changes under
    a host that already has it (its hash is in indexes and host configs)."""
    found = await session.execute(
        select(SysextImage.id).where(
            SysextImage.name == image.name,
            SysextImage.version == image.version,
            SysextImage.arch == image.arch,
        )
    )
    if found.first() is not None:
        raise ConflictError(
            f"{image.file_name} is already stored; delete it first to replace it "
            "(hosts that have it would not notice the change)"
        )


async def add_image(
    session: AsyncSession, image: ImageName, sha256: str, size: int, actor: str, now: datetime
) -> SysextImage:
    await check_new_image(session, image)
    row = SysextImage(
        name=image.name,
        version=image.version,
        arch=image.arch,
        sha256=sha256,
        size=size,
        created_at=now,
        created_by=actor,
    )
    session.add(row)
    await _flush(session, f"{image.file_name} was stored at the same moment; it is there now")
    return row


async def list_images(session: AsyncSession, name: str | None = None) -> list[ImageRow]:
    stmt = select(SysextImage).order_by(SysextImage.name, SysextImage.version, SysextImage.arch)
    if name is not None:
        stmt = stmt.where(SysextImage.name == name)
    images = list((await session.execute(stmt)).scalars())
    tracks: dict[int, list[str]] = {}
    if images:
        promoted = await session.execute(
            select(SysextPromotion.image_id, SysextPromotion.track)
            .where(SysextPromotion.image_id.in_([i.id for i in images]))
            .order_by(SysextPromotion.track)
        )
        for image_id, track in promoted:
            tracks.setdefault(image_id, []).append(track)
    return [ImageRow(i, tuple(tracks.get(i.id, ()))) for i in images]


async def _images(
    session: AsyncSession, name: str, version: str, arch: str | None
) -> Sequence[SysextImage]:
    stmt = select(SysextImage).where(SysextImage.name == name, SysextImage.version == version)
    if arch is not None:
        stmt = stmt.where(SysextImage.arch == arch)
    found = (await session.execute(stmt.order_by(SysextImage.arch))).scalars().all()
    if not found:
        which = f"{name} {version}" + (f" ({arch})" if arch else "")
        raise NotFoundError(f"no sysext image {which}: see `nebula sysext list`")
    return found


async def resolve_track(session: AsyncSession, ref: str) -> str:
    """The track of Flatcar's group named `ref` by track, name or id (hosts send the track)."""
    found = await session.execute(
        select(Group.track)
        .where(
            Group.app_id == FLATCAR_APP_ID,
            or_(Group.track == ref, Group.name == ref, Group.id == ref),
        )
        .distinct()
    )
    tracks = sorted(found.scalars())
    if not tracks:
        raise NotFoundError(f"no group {ref!r}: see `nebula group list`")
    if len(tracks) > 1:
        raise InvalidInputError(f"{ref!r} names groups of tracks {', '.join(tracks)}: give a track")
    return tracks[0]


async def promote(
    session: AsyncSession,
    name: str,
    version: str,
    group: str,
    arch: str | None,
    actor: str,
    now: datetime,
) -> tuple[str, list[SysextImage]]:
    """Offer the images of `name` `version` (all arches, or `arch`) to `group`'s track; the
    track and the images. Promoting again changes nothing."""
    track = await resolve_track(session, group)
    images = await _images(session, name, version, arch)
    have = set(
        (
            await session.execute(
                select(SysextPromotion.image_id).where(
                    SysextPromotion.track == track,
                    SysextPromotion.image_id.in_([i.id for i in images]),
                )
            )
        ).scalars()
    )
    for image in images:
        if image.id not in have:
            session.add(
                SysextPromotion(track=track, image_id=image.id, promoted_at=now, promoted_by=actor)
            )
    await _flush(session, f"{name} {version} was promoted to {track} at the same moment")
    return track, list(images)


async def demote(
    session: AsyncSession, name: str, version: str, group: str, arch: str | None
) -> tuple[str, int]:
    """Take `name` `version` out of `group`'s index; the track and how many images left it."""
    track = await resolve_track(session, group)
    images = await _images(session, name, version, arch)
    result = await session.execute(
        delete(SysextPromotion).where(
            SysextPromotion.track == track,
            SysextPromotion.image_id.in_([i.id for i in images]),
        )
    )
    removed = int(result.rowcount or 0)  # type: ignore[attr-defined]
    if removed == 0:
        raise NotFoundError(f"{name} {version} is not promoted to {track}")
    return track, removed


async def delete_image(
    session: AsyncSession, name: str, version: str, arch: str | None
) -> list[SysextImage]:
    """Forget the images of `name` `version`; ConflictError while one is promoted. The bytes
    stay in the payload store, as a deleted package's do (content-addressed files may be
    shared)."""
    images = await _images(session, name, version, arch)
    tracks = sorted(
        set(
            (
                await session.execute(
                    select(SysextPromotion.track).where(
                        SysextPromotion.image_id.in_([i.id for i in images])
                    )
                )
            ).scalars()
        )
    )
    if tracks:
        raise ConflictError(
            f"{name} {version} is promoted to {', '.join(tracks)}: demote it first "
            f"(nebula sysext demote {name} {version} --group {tracks[0]})"
        )
    for image in images:
        await session.delete(image)
    # A promotion made since the check above holds the row (RESTRICT): 409 as well.
    await _flush(session, f"{name} {version} was promoted at the same moment: demote it first")
    return list(images)


async def promoted_images(
    session: AsyncSession, track: str, name: str | None = None
) -> list[SysextImage]:
    """The images promoted to `track` (of extension `name`, when given), by file name."""
    stmt = (
        select(SysextImage)
        .join(SysextPromotion, SysextPromotion.image_id == SysextImage.id)
        .where(SysextPromotion.track == track)
    )
    if name is not None:
        stmt = stmt.where(SysextImage.name == name)
    images = list((await session.execute(stmt)).scalars())
    images.sort(key=lambda i: ImageName(i.name, i.version, i.arch).file_name)
    return images


async def hashes_by_file(session: AsyncSession, track: str) -> dict[str, str]:
    """File name -> SHA-256 of every image promoted to `track` (what a host config verifies)."""
    return {
        ImageName(i.name, i.version, i.arch).file_name: i.sha256
        for i in await promoted_images(session, track)
    }
