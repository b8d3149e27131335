"""Admin API routes that create, show and delete channels, and change or delete groups.

The older catalog routes (list, point a channel at a version, create a group) live in
nebula.web.admin. Names are unique per app and arch: `app` (id or name) and `arch` pick one
where a name is in several (see nebula.store.groups `get_channel`, `find_group`). Every change
is one transaction with its activity entry, old and new values in its detail.
"""

from __future__ import annotations

from typing import Any

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


async def _channel(session: Any, request: web.Request) -> Channel:
    q = request.query
    return await group_store.get_channel(
        session,
        request.match_info["name"],
        _arch(q.get("arch")),
        await app_store.app_id_of(session, q.get("app")),
    )


async def _version_of(session: Any, channel: Channel) -> Package | None:
    return await session.get(Package, channel.package_id) if channel.package_id else None


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
        body = channel_json(channel, await _version_of(session, channel))
        body["floors"] = await group_store.channel_floors(session, channel.id)
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
    async def work(session: Any) -> None:
        channel = await _channel(session, request)
        old = channel_json(channel, await _version_of(session, channel))
        old["floors"] = await group_store.channel_floors(session, channel.id)
        await group_store.delete_channel(session, channel)
        message = f"channel {channel.name} ({channel.arch}) deleted"
        record(session, request, "channel_delete", message, old=old)

    await change(request, work)
    return web.Response(status=204)


# -- groups --------------------------------------------------------------------------------------


async def _group(session: Any, request: web.Request) -> Group:
    q = request.query
    return await group_store.find_group(
        session,
        request.match_info["ref"],
        _arch(q.get("arch")),
        await app_store.app_id_of(session, q.get("app")),
    )


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
    async def work(session: Any) -> None:
        group = await _group(session, request)
        old = group_json(group, await _channel_name(session, group))
        await group_store.delete_group(session, group)
        # The group's own log entries stay, with no group (its id is in `old`).
        message = f"group {group.name} ({group.arch}) deleted"
        record(session, request, "group_delete", message, old=old)

    await change(request, work)
    return web.Response(status=204)
