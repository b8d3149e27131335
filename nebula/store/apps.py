"""Applications: the Omaha app ids Nebula answers for, Flatcar's (seeded) and any an operator adds.

An app id is kept as the Omaha parser normalises what hosts send (nebula.omaha.parse
`normalize_id`: no surrounding whitespace or braces, lower case), so a host whose request says
`{8A69D345-...}` or `io.Example.Agent` finds the app created as `8a69d345-...` or
`io.example.agent`. Ids are UUIDs or other short names of letters, digits and `._:-`, at most
36 characters (the column's width, a UUID's). Query functions take the session first and never
commit. Imports nebula.store.models, nebula.omaha.parse and nebula.errors.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from nebula.errors import ConflictError, InvalidInputError, NotFoundError
from nebula.omaha.parse import normalize_id
from nebula.store.models import Application, Channel, Event, Group, InstanceApp, Package

FLATCAR_APP_ID = "e96281a6-d1af-4bde-9a0a-97b76e56dc57"
APP_ID_MAX = 36
_APP_ID = re.compile(r"^[a-z0-9][a-z0-9._:-]*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_app_id(raw: object) -> str:
    """The id as hosts' requests will be matched against it (normalised), or InvalidInputError."""
    if not isinstance(raw, str):
        raise InvalidInputError("id must be a string")
    app_id = normalize_id(raw)
    if not _APP_ID.match(app_id) or len(app_id) > APP_ID_MAX:
        raise InvalidInputError(
            f"app id {raw!r}: use a UUID (braces allowed) or up to {APP_ID_MAX} letters, digits, "
            "'.', '_', ':' or '-' (matched without case, as hosts' appid is)"
        )
    return app_id


def check_app_name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidInputError(f"app name {value!r}: use letters, digits, '.', '_', '-'")
    return value


async def list_apps(session: AsyncSession) -> list[Application]:
    stmt = select(Application).order_by(Application.created_at, Application.id)
    return list((await session.execute(stmt)).scalars())


async def find_app(session: AsyncSession, ref: str) -> Application:
    """An app by id (as hosts send it: braces and case do not matter) or by name."""
    stmt = select(Application).where(
        or_(Application.id == normalize_id(ref), Application.name == ref)
    )
    found = list((await session.execute(stmt)).scalars())
    if not found:
        raise NotFoundError(f"no application {ref}")
    # create_app keeps one app's name from equalling another's id; an id match wins anyway.
    return next((a for a in found if a.id == normalize_id(ref)), found[0])


async def app_id_of(session: AsyncSession, ref: str | None) -> str | None:
    """The id of the app `ref` names, or None when no app was named."""
    return (await find_app(session, ref)).id if ref else None


async def create_app(
    session: AsyncSession, *, app_id: str | None, name: str, description: str, now: datetime
) -> Application:
    app_id = check_app_id(app_id) if app_id else str(uuid.uuid4())
    check_app_name(name)
    await _refuse_clash(session, app_id, name, None)
    app = Application(id=app_id, name=name, description=description, created_at=now)
    session.add(app)
    await session.flush()
    return app


async def _refuse_clash(
    session: AsyncSession, app_id: str | None, name: str, other_than: str | None
) -> None:
    # Crossed too: a ref is looked up as id or name, so one app's name equal to another's id
    # would make that ref name two apps.
    keys = {k for k in (app_id, name, name.lower()) if k}
    stmt = select(Application.id, Application.name).where(
        or_(Application.id.in_(keys), Application.name.in_(keys))
    )
    if other_than is not None:
        stmt = stmt.where(Application.id != other_than)
    clash = (await session.execute(stmt)).first()
    if clash is not None:
        raise ConflictError(
            f"application {clash.name} ({clash.id}) exists already with that id or name"
        )


async def update_app(
    session: AsyncSession, app: Application, name: str | None, description: str | None
) -> dict[str, list[str]]:
    """Rename or describe `app`; {field: [old, new]} of what changed."""
    diff: dict[str, list[str]] = {}
    if name is not None and name != app.name:
        check_app_name(name)
        await _refuse_clash(session, None, name, app.id)
        diff["name"] = [app.name, name]
        app.name = name
    if description is not None and description != app.description:
        diff["description"] = [app.description, description]
        app.description = description
    return diff


@dataclass(frozen=True, slots=True)
class AppUsage:
    channels: list[str]
    groups: list[str]
    packages: int
    hosts: bool

    def words(self) -> list[str]:
        found = []
        if self.groups:
            found.append(f"{len(self.groups)} groups ({', '.join(self.groups[:10])})")
        if self.channels:
            found.append(f"{len(self.channels)} channels ({', '.join(self.channels[:10])})")
        if self.packages:
            found.append(f"{self.packages} packages")
        if self.hosts:
            found.append("hosts that checked in")
        return found


async def app_usage(session: AsyncSession, app_id: str) -> AppUsage:
    channels = [
        f"{name} ({arch})"
        for name, arch in await session.execute(
            select(Channel.name, Channel.arch)
            .where(Channel.app_id == app_id)
            .order_by(Channel.name, Channel.arch)
        )
    ]
    groups = [
        f"{name} ({arch})"
        for name, arch in await session.execute(
            select(Group.name, Group.arch).where(Group.app_id == app_id).order_by(Group.name)
        )
    ]
    packages = (
        await session.execute(
            select(func.count()).select_from(Package).where(Package.app_id == app_id)
        )
    ).scalar_one()
    # Existence only: counting a million hosts to refuse a delete is not worth the scan.
    hosts = (
        await session.execute(
            select(InstanceApp.app_id).where(InstanceApp.app_id == app_id).limit(1)
        )
    ).first() is not None or (
        await session.execute(select(Event.id).where(Event.app_id == app_id).limit(1))
    ).first() is not None
    return AppUsage(channels, groups, int(packages), hosts)


async def delete_app(session: AsyncSession, app: Application) -> None:
    """Delete an app nothing uses; ConflictError naming what still does."""
    used = (await app_usage(session, app.id)).words()
    if used:
        raise ConflictError(
            f"application {app.name} is in use by {'; '.join(used)}: delete those first"
        )
    await session.delete(app)
