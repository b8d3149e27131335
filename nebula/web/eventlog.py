"""Admin API for the fleet's logs: the events hosts sent (`/api/v1/events`) and the activity
log across every group (`/api/v1/activity`; one group's is /api/v1/groups/{ref}/activity).
Both newest first by default, filtered, in keyset pages (`cursor`, `next`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select

from nebula.errors import InvalidInputError
from nebula.omaha.parse import normalize_id
from nebula.store import eventlog
from nebula.store import groups as group_store
from nebula.store import instances as host_store
from nebula.store.db import transaction
from nebula.store.models import Group
from nebula.store.pages import decode_cursor, parse_limit
from nebula.web.instances import TIME_TEXT, sort_order, when
from nebula.web.keys import CLOCK, READ_SESSIONS
from nebula.web.openapi.spec import ARCH, INT, INT_TEXT, NSTR, STR, doc, listing, ref
from nebula.web.serialize import activity_json, event_json

routes = web.RouteTableDef()

_ORDER = {"type": "string", "enum": ["asc", "desc"], "description": "desc (newest first) or asc"}
_CURSOR = {"type": "string", "description": "the `next` of the previous page"}


def _small_int(query: Any, name: str) -> int | None:
    raw = query.get(name, "")
    if raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) > 1 << 30:
        raise InvalidInputError(f"{name} must be a small non-negative integer")
    return int(raw)


async def _group_id(session: Any, query: Any) -> str | None:
    if not query.get("group"):
        return None
    arch = query.get("arch") or None
    if arch and arch not in ("amd64", "arm64"):
        raise InvalidInputError("arch must be amd64 or arm64")
    return (await group_store.find_group(session, query["group"], arch)).id


async def _group_names(session: Any, ids: set[str | None]) -> dict[str, str]:
    wanted = {i for i in ids if i}
    if not wanted:
        return {}
    rows = await session.execute(select(Group.id, Group.name).where(Group.id.in_(wanted)))
    return {gid: name for gid, name in rows.all()}


@routes.get("/api/v1/events")
@doc(
    "The events hosts sent, newest first, filtered, in pages",
    listing("events", ref("Event"), next=NSTR, limit=INT),
    query={
        "host": {"type": "string", "description": "a machine id"},
        "group": STR,
        "arch": ARCH,
        "app": STR,
        "type": INT_TEXT,
        "result": INT_TEXT,
        "since": TIME_TEXT,
        "until": TIME_TEXT,
        "order": _ORDER,
        "cursor": _CURSOR,
        "limit": INT_TEXT,
    },
    errors=(404,),
    description=(
        "type and result as Omaha sends them: 3 update (result 0 failed, 1 installed, 2 "
        "booted), 13 download started, 14 download finished. Each error code is decoded "
        "(`error`)."
    ),
)
async def list_events(request: web.Request) -> web.Response:
    q = request.query
    limit = parse_limit(q.get("limit"))
    order = sort_order(q, {"time": eventlog.event_order}, "time", True)
    after = decode_cursor(order, q.get("cursor"))
    now = request.app[CLOCK]()
    async with transaction(request.app[READ_SESSIONS]) as session:
        filters = eventlog.EventFilters(
            machine_id=normalize_id(q["host"]) if q.get("host") else None,
            group_id=await _group_id(session, q),
            app_id=await host_store.find_app_id(session, q["app"]) if q.get("app") else None,
            event_type=_small_int(q, "type"),
            result=_small_int(q, "result"),
            since=when(q, "since", now),
            until=when(q, "until", now),
        )
        page = await eventlog.list_events(session, filters, order, after, limit)
        names = await _group_names(session, {e.group_id for e in page.rows})
    return web.json_response(
        {
            "events": [event_json(e, names.get(e.group_id or "")) for e in page.rows],
            "next": page.next,
            "limit": limit,
        }
    )


@routes.get("/api/v1/activity")
@doc(
    "The activity log of every group (and of changes that belong to none), newest first",
    listing("activity", ref("ActivityEntry"), next=NSTR, limit=INT),
    query={
        "group": STR,
        "arch": ARCH,
        "actor": {"type": "string", "description": "a token's name, or nebula for automatic"},
        "action": STR,
        "since": TIME_TEXT,
        "until": TIME_TEXT,
        "order": _ORDER,
        "cursor": _CURSOR,
        "limit": INT_TEXT,
    },
    errors=(404,),
)
async def list_activity(request: web.Request) -> web.Response:
    q = request.query
    limit = parse_limit(q.get("limit"))
    order = sort_order(q, {"time": eventlog.activity_order}, "time", True)
    after = decode_cursor(order, q.get("cursor"))
    now = request.app[CLOCK]()
    async with transaction(request.app[READ_SESSIONS]) as session:
        filters = eventlog.ActivityFilters(
            group_id=await _group_id(session, q),
            actor=q.get("actor") or None,
            action=q.get("action") or None,
            since=when(q, "since", now),
            until=when(q, "until", now),
        )
        page = await eventlog.list_activity(session, filters, order, after, limit)
        names = await _group_names(session, {a.group_id for a in page.rows})
    return web.json_response(
        {
            "activity": [activity_json(a, names.get(a.group_id or "")) for a in page.rows],
            "next": page.next,
            "limit": limit,
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_routes(routes)
