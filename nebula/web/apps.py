"""Admin API routes of applications: /api/v1/apps and /api/v1/apps/{ref} (ref: id or name).

An app is any Omaha application hosts name in `appid` (nebula.store.apps says which ids are
accepted and how they are matched). Every change is one transaction with its activity entry.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from nebula.errors import InvalidInputError
from nebula.store import apps as app_store
from nebula.store.db import transaction
from nebula.store.models import Application
from nebula.web.api import change, json_body, opt, req
from nebula.web.audit import changes_text, record
from nebula.web.keys import CLOCK, READ_SESSIONS
from nebula.web.openapi.spec import STR, doc, listing, obj, ref
from nebula.web.serialize import iso

routes = web.RouteTableDef()
# aiohttp's default placeholder excludes braces; app ids may come braced as hosts send them.
APP_REF = "{ref:[^/]+}"


def app_json(app: Application) -> dict[str, Any]:
    return {
        "id": app.id,
        "name": app.name,
        "description": app.description,
        "created_at": iso(app.created_at),
    }


@routes.get("/api/v1/apps")
@doc("List applications", listing("apps", ref("App")))
async def list_apps(request: web.Request) -> web.Response:
    async with transaction(request.app[READ_SESSIONS]) as session:
        return web.json_response(
            {"apps": [app_json(a) for a in await app_store.list_apps(session)]}
        )


@routes.post("/api/v1/apps")
@doc(
    "Create an application (an Omaha app id hosts send)",
    ref("App"),
    status=201,
    body=obj({"name": STR}, {"id": STR, "description": STR}),
    body_required=True,
    errors=(409,),
)
async def create_app(request: web.Request) -> web.Response:
    data = await json_body(request)

    async def work(session: Any) -> dict[str, Any]:
        app = await app_store.create_app(
            session,
            app_id=opt(data, "id"),
            name=req(data, "name"),
            description=opt(data, "description") or "",
            now=request.app[CLOCK](),
        )
        body = app_json(app)
        record(
            session, request, "app_create", f"application {app.name} ({app.id}) created", new=body
        )
        return body

    return web.json_response(await change(request, work), status=201)


@routes.get(f"/api/v1/apps/{APP_REF}")
@doc("Show an application and what uses it", ref("App"))
async def show_app(request: web.Request) -> web.Response:
    async with transaction(request.app[READ_SESSIONS]) as session:
        app = await app_store.find_app(session, request.match_info["ref"])
        usage = await app_store.app_usage(session, app.id)
        body = app_json(app)
        body.update(channels=usage.channels, groups=usage.groups, packages=usage.packages)
        return web.json_response(body)


@routes.patch(f"/api/v1/apps/{APP_REF}")
@doc(
    "Rename or describe an application (its id stays: hosts send it)",
    ref("App"),
    body=obj({}, {"name": STR, "description": STR}),
    body_required=True,
    errors=(409,),
)
async def update_app(request: web.Request) -> web.Response:
    data = await json_body(request)
    unknown = sorted(set(data) - {"name", "description"})
    if unknown:
        raise InvalidInputError(
            f"cannot change {', '.join(unknown)}: an app's name and description can change"
            + (" (its id is what hosts send)" if "id" in unknown else "")
        )
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidInputError("description must be a string")

    async def work(session: Any) -> dict[str, Any]:
        app = await app_store.find_app(session, request.match_info["ref"])
        diff = await app_store.update_app(session, app, opt(data, "name"), description)
        if diff:
            record(
                session,
                request,
                "app_update",
                f"application {app.id}: {changes_text(diff)}",
                app_id=app.id,
                changes=diff,
            )
        return app_json(app)

    return web.json_response(await change(request, work))


@routes.delete(f"/api/v1/apps/{APP_REF}")
@doc("Delete an application nothing uses", None, status=204, errors=(409,))
async def delete_app(request: web.Request) -> web.Response:
    async def work(session: Any) -> None:
        app = await app_store.find_app(session, request.match_info["ref"])
        old = app_json(app)
        await app_store.delete_app(session, app)
        record(
            session, request, "app_delete", f"application {app.name} ({app.id}) deleted", old=old
        )

    await change(request, work)
    return web.Response(status=204)
