"""Admin API for hosts: the list (filters, search, sort, cursor pages), one host's detail, its
alias, holds and deletion. Every change is logged in the activity log with who made it.

The list pages by keyset (nebula.store.pages): `next` is the cursor of the following page,
fast at any depth; there is no offset.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import select

from nebula.durations import parse_duration
from nebula.errorcodes import describe
from nebula.errors import InvalidInputError, NotFoundError
from nebula.lifecycle import STATUSES
from nebula.omaha.parse import normalize_id
from nebula.policy import HostState
from nebula.store import groups as group_store
from nebula.store import instances as host_store
from nebula.store import rollouts
from nebula.store.catalog import Catalog
from nebula.store.db import transaction
from nebula.store.models import Group, InstanceApp
from nebula.store.pages import decode_cursor, parse_limit
from nebula.store.retirement import delete_host
from nebula.web.api import actor, change, json_body
from nebula.web.keys import CATALOG, CLOCK, HOST_CHANGES, READ_SESSIONS
from nebula.web.openapi.spec import (
    ARCH,
    FLAG,
    INT,
    INT_TEXT,
    NSTR,
    REASON_BODY,
    STR,
    VERSION,
    doc,
    listing,
    nullable,
    obj,
    ref,
)
from nebula.web.serialize import RebootWaitJson, event_json, instance_json, iso

routes = web.RouteTableDef()

# aiohttp's default placeholder excludes braces; machine ids may come braced (`{...}`).
MACHINE_ID = "{machine_id:[^/]+}"
TIME_TEXT = {
    "type": "string",
    "description": "a time (ISO 8601, e.g. 2026-12-01T08:00:00Z) or a duration ago (2h, 7d)",
}


def yes(query: Any, name: str) -> bool | None:
    """A true/false query parameter; None when absent."""
    value = query.get(name, "")
    if value == "":
        return None
    if value not in ("0", "1", "true", "false"):
        raise InvalidInputError(f"{name} must be true or false")
    return value in ("1", "true")


def when(query: Any, name: str, now: datetime) -> datetime | None:
    """A time parameter: ISO 8601 (UTC when it names no zone), or a duration before now."""
    raw = query.get(name, "").strip()
    if not raw:
        return None
    try:
        return now - timedelta(seconds=parse_duration(raw))
    except ValueError:
        pass
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise InvalidInputError(
            f"{name}: {raw!r} is neither a time like 2026-12-01T08:00:00Z nor a duration "
            "like 2h or 7d"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=now.tzinfo)


def sort_order(query: Any, sorts: dict[str, Any], default: str, descending: bool) -> Any:
    name = query.get("sort") or default
    if name not in sorts:
        raise InvalidInputError(f"sort must be one of {', '.join(sorts)}")
    order = query.get("order") or ("desc" if descending else "asc")
    if order not in ("asc", "desc"):
        raise InvalidInputError("order must be asc or desc")
    return sorts[name](order == "desc")


async def _filters(session: Any, q: Any, now: datetime) -> host_store.Filters:
    if q.get("offset"):
        raise InvalidInputError(
            "offset is not supported: page with cursor (the `next` of the previous page)"
        )
    # An unknown status would match no host: an empty list that looks like a true answer.
    status = q.get("status") or None
    if status and status not in STATUSES:
        raise InvalidInputError(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
    arch = q.get("arch") or None
    if arch and arch not in ("amd64", "arm64"):
        raise InvalidInputError("arch must be amd64 or arm64")
    retired, everything = yes(q, "retired"), yes(q, "all")
    app_id = await host_store.find_app_id(session, q["app"]) if q.get("app") else None
    group_ids: tuple[str, ...] | None = None
    if q.get("group"):
        kwargs = {"app_id": app_id} if app_id else {}
        group = await group_store.find_group(session, q["group"], arch, **kwargs)
        group_ids = (group.id,)
    if q.get("channel"):
        following = await host_store.channel_group_ids(session, q["channel"], arch, app_id)
        group_ids = following if group_ids is None else tuple(set(group_ids) & set(following))
    elif arch and group_ids is None:
        group_ids = await host_store.group_ids_where(session, Group.arch == arch)
    search = q.get("q", "").strip() or None
    return host_store.Filters(
        app_id=app_id,
        group_ids=group_ids,
        version=q.get("version") or None,
        status=status,
        held=yes(q, "held"),
        seen_before=when(q, "seen_before", now),
        seen_after=when(q, "seen_after", now),
        retired="retired" if retired else ("all" if everything else "live"),
        search=search,
    )


@routes.get("/api/v1/instances")
@doc(
    "List hosts (one row per host and application), filtered, searched, sorted, in pages",
    listing("instances", ref("Instance"), next=NSTR, limit=INT),
    query={
        "app": STR,
        "group": STR,
        "channel": STR,
        "arch": ARCH,
        "status": STR,
        "version": VERSION,
        "held": FLAG,
        "seen_before": TIME_TEXT,
        "seen_after": TIME_TEXT,
        "retired": FLAG,
        "all": FLAG,
        "q": {"type": "string", "description": "a machine id prefix, an alias or an IP address"},
        "sort": {"type": "string", "enum": sorted(host_store.SORTS)},
        "order": {"type": "string", "enum": ["asc", "desc"]},
        "cursor": {"type": "string", "description": "the `next` of the previous page"},
        "limit": INT_TEXT,
    },
    errors=(404,),
    description=(
        "Pages by keyset: pass the answer's `next` as `cursor` (with the same filters and "
        "sort) for the following page; `next` is null on the last one. Ties of the sort are "
        "broken by machine id and application, so every host is listed exactly once."
    ),
)
async def list_instances(request: web.Request) -> web.Response:
    q = request.query
    limit = parse_limit(q.get("limit"))
    order = sort_order(q, host_store.SORTS, "id", False)
    after = decode_cursor(order, q.get("cursor"))
    now = request.app[CLOCK]()
    async with transaction(request.app[READ_SESSIONS]) as session:
        filters = await _filters(session, q, now)
        page = await host_store.list_instances(session, filters, order, after, limit)
        catalog = await request.app[CATALOG].get()
        return web.json_response(
            {
                "instances": [
                    _instance(catalog, s, i, g, arch, now) for s, i, g, arch in page.rows
                ],
                "next": page.next,
                "limit": limit,
            }
        )


def _instance(
    catalog: Catalog,
    state: InstanceApp,
    instance: Any,
    group: str | None,
    arch: str | None,
    now: datetime,
) -> dict[str, Any]:
    body = instance_json(
        state,
        instance,
        group,
        _hold_in_force(catalog, state, arch, now),
        RebootWaitJson.of(state, _reboot_timeout(catalog, state, arch), now),
    )
    body["arch"] = arch
    body["last_error"] = describe(state.last_error_code)
    return body


def _reboot_timeout(catalog: Catalog, state: InstanceApp, arch: str | None) -> int | None:
    if state.group_id is None or arch is None:
        return None
    entry = catalog.groups.get((state.app_id, state.group_id, arch))
    return entry.policy.reboot_timeout_seconds if entry is not None else None


def _hold_in_force(
    catalog: Catalog, state: InstanceApp, arch: str | None, now: datetime
) -> str | None:
    """Why the group's policy holds the host back now; not the reason it was given at its last
    check (after a resume that would still say "paused")."""
    if state.group_id is None or arch is None:
        return None
    entry = catalog.groups.get((state.app_id, state.group_id, arch))
    if entry is None:
        return None
    host = HostState(
        state.version, state.status, state.granted_version, state.held, state.instance_id
    )
    return entry.hold_for(host, state.hold_reason, now)


@routes.get(f"/api/v1/instances/{MACHINE_ID}")
@doc(
    "Show a host: its facts, its state per application, its history and recent events",
    ref("InstanceDetail"),
)
async def show_instance(request: web.Request) -> web.Response:
    machine_id = normalize_id(request.match_info["machine_id"])
    now = request.app[CLOCK]()
    async with transaction(request.app[READ_SESSIONS]) as session:
        detail = await host_store.host_detail(session, machine_id)
        catalog = await request.app[CATALOG].get()
        group_names = {s.group_id: name for s, name, _ in detail.states if s.group_id}
        group_names.update(
            {
                gid: name
                for gid, name in (
                    await session.execute(
                        select(Group.id, Group.name).where(
                            Group.id.in_({h.group_id for h in detail.history if h.group_id})
                        )
                    )
                ).all()
            }
        )
    i = detail.instance
    return web.json_response(
        {
            "machine_id": i.id,
            "alias": i.alias,
            "ip": i.ip,
            "oem": i.oem,
            "oem_version": i.oem_version,
            "aleph_version": i.aleph_version,
            "board": i.board,
            "created_at": iso(i.created_at),
            "last_seen_at": iso(i.last_seen_at),
            "apps": [_instance(catalog, s, i, name, arch, now) for s, name, arch in detail.states],
            "history": [
                {
                    "at": iso(h.at),
                    "what": h.what,
                    "version": h.version,
                    "group": group_names.get(h.group_id) if h.group_id else None,
                    "error": describe(h.detail.get("code")) if h.detail else None,
                    "count": h.detail.get("count") if h.detail else None,
                }
                for h in detail.history
            ],
            "events": [event_json(e, group_names.get(e.group_id or "")) for e in detail.events],
        }
    )


ALIAS_BODY = obj({"alias": nullable("string")})


@routes.patch(f"/api/v1/instances/{MACHINE_ID}")
@doc(
    "Set a host's alias (null or empty removes it)",
    ref("AliasSet"),
    body=ALIAS_BODY,
    body_required=True,
    description=(
        "A host that sends its own alias (MACHINE_ALIAS in update.conf) replaces this one at "
        "its next check."
    ),
)
async def set_instance(request: web.Request) -> web.Response:
    data = await json_body(request)
    if set(data) != {"alias"}:
        unknown = sorted(set(data) - {"alias"})
        raise InvalidInputError(
            f"unknown field {unknown[0]!r}: only alias can be set"
            if unknown
            else "alias is required"
        )
    alias = data["alias"]
    if alias is not None and not isinstance(alias, str):
        raise InvalidInputError("alias must be a string, or null to remove it")
    alias = (alias or "").strip() or None
    if alias is not None and (len(alias) > host_store.ALIAS_MAX or not alias.isprintable()):
        raise InvalidInputError(
            f"alias must be printable text of at most {host_store.ALIAS_MAX} characters"
        )
    machine_id = normalize_id(request.match_info["machine_id"])
    now = request.app[CLOCK]()

    async def work(session: Any) -> dict[str, Any]:
        old = await host_store.set_alias(session, machine_id, alias)
        groups = (
            await session.execute(
                select(InstanceApp.group_id).where(InstanceApp.instance_id == machine_id)
            )
        ).scalars()
        for group_id in sorted({g for g in groups if g}) or [None]:
            rollouts.log_activity(
                session,
                now,
                actor(request),
                "alias",
                f"host {machine_id} alias {old or '(none)'} -> {alias or '(none)'}",
                group_id,
                machine_id=machine_id,
                old={"alias": old},
                new={"alias": alias},
            )
        # The processes' host snapshots hold the alias: drop this host from them.
        await request.app[HOST_CHANGES].announce(session, [machine_id])
        return {"machine_id": machine_id, "alias": alias, "previous": old}

    body = await change(request, work)
    request.app[HOST_CHANGES].applied([machine_id])
    return web.json_response(body)


async def _hold_or_release(request: web.Request, held: bool) -> web.Response:
    data = await json_body(request)
    reason = data.get("reason") or ""
    # As the Omaha endpoint keys hosts: a machine id copied braced or in capitals is found.
    machine_id = normalize_id(request.match_info["machine_id"])
    now = request.app[CLOCK]()

    async def work(session: Any) -> dict[str, Any]:
        states = list(
            (
                await session.execute(
                    select(InstanceApp)
                    .where(InstanceApp.instance_id == machine_id)
                    .with_for_update()
                )
            ).scalars()
        )
        if not states:
            raise NotFoundError(f"no host {machine_id} has checked in")
        for state in states:
            state.held = held
            if not held and state.hold_reason == "host_hold":
                state.hold_reason = None
            rollouts.log_activity(
                session,
                now,
                actor(request),
                "hold" if held else "release",
                f"host {machine_id} {'held' if held else 'released'}"
                + (f": {reason}" if reason else ""),
                state.group_id,
                machine_id=machine_id,
            )
        # Every process answers this host's next check on its new state, not a snapshot.
        await request.app[HOST_CHANGES].announce(session, [machine_id])
        return {"machine_id": machine_id, "held": held}

    body = await change(request, work)
    request.app[HOST_CHANGES].applied([machine_id])
    return web.json_response(body)


@routes.post(f"/api/v1/instances/{MACHINE_ID}/hold")
@doc("Hold a host at its version", ref("Hold"), body=REASON_BODY)
async def hold_instance(request: web.Request) -> web.Response:
    return await _hold_or_release(request, held=True)


@routes.post(f"/api/v1/instances/{MACHINE_ID}/release")
@doc("Release a held host", ref("Hold"), body=REASON_BODY)
async def release_instance(request: web.Request) -> web.Response:
    return await _hold_or_release(request, held=False)


@routes.delete(f"/api/v1/instances/{MACHINE_ID}")
@doc("Delete a host, its state and its events", ref("HostDeleted"))
async def delete_instance(request: web.Request) -> web.Response:
    """Remove a host, its per-app state and its events (admin only: a DELETE). The activity
    log of each group it was in keeps who deleted it."""
    machine_id = normalize_id(request.match_info["machine_id"])
    now = request.app[CLOCK]()

    async def work(session: Any) -> dict[str, Any]:
        deleted = await delete_host(session, machine_id)
        if deleted is None:
            raise NotFoundError(f"no host {machine_id} has checked in")
        who = actor(request)
        groups: list[str | None] = [*deleted.groups] or [None]
        for group_id in groups:
            rollouts.log_activity(
                session,
                now,
                who,
                "delete",
                f"host {machine_id} deleted",
                group_id,
                machine_id=machine_id,
            )
        # No process may answer its next check from a snapshot: it is a new host then.
        await request.app[HOST_CHANGES].announce(session, [machine_id])
        return {"machine_id": machine_id, "deleted": True, "apps": deleted.apps}

    body = await change(request, work)
    request.app[HOST_CHANGES].applied([machine_id])
    return web.json_response(body)


def add_routes(app: web.Application) -> None:
    app.router.add_routes(routes)
