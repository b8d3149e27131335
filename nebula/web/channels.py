"""Admin API routes that create, show and delete channels, and change or delete groups.

The older catalog routes (list, point a channel at a version, create a group) live in
nebula.web.admin. Names are unique per app and arch: `app` (id or name) and `arch` pick one
where a name is in several (see nebula.store.groups `get_channel`, `find_group`). Every change
is one transaction with its activity entry, old and new values in its detail.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from aiohttp import web
from sqlalchemy import select

from nebula.errors import InvalidInputError
from nebula.store import apps as app_store
from nebula.store import groups as group_store
from nebula.store.db import transaction
from nebula.store.models import Channel, Group, Package
from nebula.store.packages import check_arch, check_version
from nebula.web.api import actor, change, json_body, opt, req
from nebula.web.audit import changes_text, record
from nebula.web.keys import CLOCK, READ_SESSIONS
from nebula.web.openapi.spec import APP, ARCH, STR, VERSION, doc, obj, ref
from nebula.web.serialize import channel_json, group_json

routes = web.RouteTableDef()


def _arch(value: Any) -> str | None:
    # Checked before it reaches a query: PostgreSQL refuses a non-text parameter (a 500).
    return check_arch(value) if value else None


class _Named(Protocol):
    name: str
    arch: str


T = TypeVar("T", bound=_Named)
# A store's lookup by name: (session, name, arch or None, app id or None).
Find = Callable[[Any, str, str | None, str | None], Awaitable[T]]


async def _named(session: Any, request: web.Request, key: str, find: Find[T]) -> T:
    """The channel or group the path names (at `key`), in the app and arch the query picks."""
    q = request.query
    arch = _arch(q.get("arch"))  # refused before the app is looked up
    app_id = await app_store.app_id_of(session, q.get("app"))
    return await find(session, request.match_info[key], arch, app_id)


async def _channel(session: Any, request: web.Request) -> Channel:
    return await _named(session, request, "name", group_store.get_channel)


async def _group(session: Any, request: web.Request) -> Group:
    return await _named(session, request, "ref", group_store.find_group)


async def _delete(
    request: web.Request,
    kind: str,
    find: Callable[[Any, web.Request], Awaitable[T]],
    old_of: Callable[[Any, T], Awaitable[dict[str, Any]]],
    remove: Callable[[Any, T], Awaitable[None]],
) -> web.Response:
    """Delete the `kind` the request names, in one transaction with its activity entry (its
    last state in the detail)."""

    async def work(session: Any) -> None:
        found = await find(session, request)
        old = await old_of(session, found)
        await remove(session, found)
        message = f"{kind} {found.name} ({found.arch}) deleted"
        record(session, request, f"{kind}_delete", message, old=old)

    await change(request, work)
    return web.Response(status=204)


async def _version_of(session: Any, channel: Channel) -> Package | None:
    return await session.get(Package, channel.package_id) if channel.package_id else None


async def _channel_state(session: Any, channel: Channel) -> dict[str, Any]:
    body = channel_json(channel, await _version_of(session, channel))
    body["floors"] = await group_store.channel_floors(session, channel.id)
    return body


@routes.post("/api/v1/channels")
@doc(
    "Create a channel of an application for an architecture",
    ref("Channel"),
    status=201,
    body=obj({"name": STR, "arch": ARCH}, {"app": APP, "version": VERSION}),
    body_required=True,
    errors=(404, 409),
)
async def create_channel(request: web.Request) -> web.Response:
    data = await json_body(request)
    name, arch = req(data, "name"), check_arch(req(data, "arch"))
    version = opt(data, "version")
    if version is not None:
        check_version(version)

    async def work(session: Any) -> dict[str, Any]:
        app = await app_store.find_app(session, opt(data, "app") or app_store.FLATCAR_APP_ID)
        channel = await group_store.create_channel(
            session, name, arch, request.app[CLOCK](), actor(request), app.id, version
        )
        body = channel_json(channel, await _version_of(session, channel))
        record(
            session,
            request,
            "channel_create",
            f"channel {name} ({arch}) of {app.name} created"
            + (f", offering {version}" if version else ""),
            new=body,
        )
        return body

    return web.json_response(await change(request, work), status=201)


@routes.get("/api/v1/channels/{name}")
@doc(
    "Show a channel, its floors and the groups that follow it",
    ref("Channel"),
    query={"arch": ARCH, "app": APP},
)
async def show_channel(request: web.Request) -> web.Response:
    async with transaction(request.app[READ_SESSIONS]) as session:
        channel = await _channel(session, request)
        body = await _channel_state(session, channel)
        body["groups"] = [g.name for g in await group_store.followers(session, channel.id)]
        return web.json_response(body)


@routes.delete("/api/v1/channels/{name}")
@doc(
    "Delete a channel no group follows",
    None,
    status=204,
    query={"arch": ARCH, "app": APP},
    errors=(409,),
)
async def delete_channel(request: web.Request) -> web.Response:
    return await _delete(request, "channel", _channel, _channel_state, group_store.delete_channel)


# -- groups --------------------------------------------------------------------------------------


async def _channel_name(session: Any, group: Group) -> str | None:
    if group.channel_id is None:
        return None
    name: str | None = (
        await session.execute(select(Channel.name).where(Channel.id == group.channel_id))
    ).scalar_one_or_none()
    return name


_GROUP_FIELDS = ("name", "track", "channel", "description")


@routes.patch("/api/v1/groups/{ref}")
@doc(
    "Rename a group, change its track, channel or description (its policy has a route of its own)",
    ref("Group"),
    query={"arch": ARCH, "app": APP},
    body=obj({}, {"name": STR, "track": STR, "channel": STR, "description": STR}),
    body_required=True,
    errors=(409,),
)
async def update_group(request: web.Request) -> web.Response:
    data = await json_body(request)
    unknown = sorted(set(data) - set(_GROUP_FIELDS))
    if unknown:
        raise InvalidInputError(
            f"cannot change {', '.join(unknown)} here: a group's {', '.join(_GROUP_FIELDS)} "
            "(its policy with `nebula policy set`)"
        )
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidInputError("description must be a string")

    async def work(session: Any) -> dict[str, Any]:
        group = await _group(session, request)
        diff = await group_store.update_group(
            session,
            group,
            name=opt(data, "name"),
            track=opt(data, "track"),
            channel=opt(data, "channel"),
            description=description,
        )
        if diff:
            message = f"group {group.name} ({group.arch}): {changes_text(diff)}"
            record(session, request, "group_update", message, [group.id], changes=diff)
        return group_json(group, await _channel_name(session, group))

    return web.json_response(await change(request, work))


@routes.delete("/api/v1/groups/{ref}")
@doc(
    "Delete a group no host is in",
    None,
    status=204,
    query={"arch": ARCH, "app": APP},
    errors=(409,),
)
async def delete_group(request: web.Request) -> web.Response:
    async def old_of(session: Any, group: Group) -> dict[str, Any]:
        # The group's own log entries stay, with no group (its id is in this).
        return group_json(group, await _channel_name(session, group))

    return await _delete(request, "group", _group, old_of, group_store.delete_group)
