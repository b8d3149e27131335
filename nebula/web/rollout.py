"""Admin API for rollouts: policy, pause and resume, rollout status, a group's activity log
and channel floors (hosts' holds live in nebula.web.instances). Every change is logged in the
activity log with who made it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from sqlalchemy import select

from nebula.durations import format_duration, parse_duration
from nebula.errors import InvalidInputError, NotFoundError
from nebula.store import groups as group_store
from nebula.store import history, rollouts
from nebula.store.apps import find_app
from nebula.store.db import transaction
from nebula.store.models import Channel, Group
from nebula.store.packages import check_arch, check_version, find_package
from nebula.web.api import actor, change, json_body
from nebula.web.keys import CATALOG, CLOCK, READ_SESSIONS
from nebula.web.openapi.spec import (
    APP,
    ARCH,
    INT_TEXT,
    POLICY_BODY,
    REASON_BODY,
    VERSION,
    doc,
    listing,
    obj,
    ref,
)
from nebula.web.serialize import iso
from nebula.windows import WindowError, next_opening, parse_window, window_from_json

routes = web.RouteTableDef()


# -- parsing a policy change ---------------------------------------------------------------------


def _limit(value: Any, name: str) -> int | None:
    """A positive integer, or None (JSON null, or "none") to lift the limit."""
    if value is None or value == "none":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer or null")
    return value


MAX_DURATION = 3650 * 86400  # ten years: beyond is a typo, and past a 32-bit column


def _duration(value: Any, name: str) -> int | None:
    if value is None or value == "none":
        return None
    # parse_duration takes text or whole seconds; anything else from JSON (1.5, a list) is the
    # client's mistake, not a server error.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidInputError(f"{name}: {value!r} is not a duration like 90s, 15m, 2h or 1h30m")
    try:
        seconds = parse_duration(value)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"{name}: {exc}") from None
    if seconds > MAX_DURATION:
        raise InvalidInputError(f"{name}: {value!r} is longer than ten years")
    return seconds


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("on", "true"):
        return True
    if value in ("off", "false"):
        return False
    raise InvalidInputError(f"{name} must be true or false (on/off)")


def _percent(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"{name} must be a number from 0 to 100")
    if not math.isfinite(value) or not 0 <= value <= 100:
        raise InvalidInputError(f"{name} must be from 0 to 100, got {value}")
    return float(value)


def _failure_limits(value: Any) -> dict[str, Any]:
    """'pause_on_failures': a list of "N" (hosts), "P%" (of attempts) and "none" (neither),
    applied in order; only the kinds it names change, so ["2"] keeps a "10%" rule, and
    ["none", "2"] leaves only the rule of 2 hosts. null (or "none") lifts both."""
    out: dict[str, Any] = {}
    items = ["none"] if value is None else value
    if isinstance(items, str | int):
        items = [items]
    if not isinstance(items, list):
        raise InvalidInputError('pause_on_failures must be a list like ["3", "10%"]')
    for item in items:
        text = str(item).strip()
        if text == "none":
            out.update(pause_on_failed_hosts=None, pause_on_failed_percent=None)
        elif text.endswith("%"):
            try:
                out["pause_on_failed_percent"] = _percent(float(text[:-1]), "pause_on_failures")
            except ValueError:
                raise InvalidInputError(f"pause_on_failures: {text!r} is not P%") from None
            if out["pause_on_failed_percent"] == 0:
                raise InvalidInputError("pause_on_failures: 0% would pause on any failure; say 1")
        elif text.isascii() and text.isdigit() and int(text) > 0:
            out["pause_on_failed_hosts"] = int(text)
        else:
            raise InvalidInputError(f"pause_on_failures: {text!r} is neither N hosts nor P%")
    return out


def _versions(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInputError(f'{name} must be a list of versions like ["4081.2.0"]')
    return [check_version(v, name) for v in value]


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """A validated PATCH of a group's policy: column values, and floors of its channel to add
    and remove (in the same transaction: one command is all of it or nothing)."""

    columns: dict[str, Any]
    add_floors: tuple[str, ...] = ()
    remove_floors: tuple[str, ...] = ()


def parse_change(data: dict[str, Any]) -> PolicyChange:
    data = dict(data)
    add = _versions(data.pop("add_floors", []), "add_floors")
    remove = _versions(data.pop("remove_floors", []), "remove_floors")
    if both := set(add) & set(remove):
        raise InvalidInputError(f"both added and removed as a floor: {', '.join(sorted(both))}")
    return PolicyChange(parse_policy(data), tuple(add), tuple(remove))


def parse_policy(data: dict[str, Any]) -> dict[str, Any]:
    """JSON from the API -> validated values of Group's policy columns."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "max_updates_per_period":
            out[key] = _limit(value, key)
        elif key == "period":
            out["period_seconds"] = _duration(value, key)
        elif key == "max_concurrent":
            out[key] = _limit(value, key)
        elif key == "update_timeout":
            out["update_timeout_seconds"] = _duration(value, key)
        elif key == "reboot_timeout":
            out["reboot_timeout_seconds"] = _duration(value, key)
        elif key == "retire_after":
            out["retire_after_seconds"] = _duration(value, key)
        elif key in ("safe_mode", "allow_downgrade", "installed_counts_as_updating"):
            out[key] = _flag(value, key)
        elif key == "pause_on_failures":
            out.update(_failure_limits(value))
        elif key == "windows":
            if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
                raise InvalidInputError('windows must be a list like ["Mon-Fri 02:00-05:00 UTC"]')
            try:
                out[key] = [parse_window(w).to_json() for w in value]
            except WindowError as exc:
                raise InvalidInputError(f"window: {exc}") from None
        elif key == "percentage":
            out[key] = _percent(value, key)
        elif key == "pin_version":
            out[key] = None if value in (None, "none", "") else check_version(str(value), "pin")
        else:
            raise InvalidInputError(f"unknown policy field {key!r}")
    return out


def policy_json(group: Group) -> dict[str, Any]:
    windows = []
    for raw in group.windows or []:
        try:
            windows.append(str(window_from_json(raw)))
        except WindowError:
            windows.append(f"invalid: {raw!r}")
    return {
        "updates_enabled": group.updates_enabled,
        "paused_reason": group.paused_reason,
        "paused_by": group.paused_by,
        "paused_at": iso(group.paused_at),
        "max_updates_per_period": group.max_updates_per_period,
        "period": format_duration(group.period_seconds) if group.period_seconds else None,
        "max_concurrent": group.max_concurrent,
        "update_timeout": (
            format_duration(group.update_timeout_seconds) if group.update_timeout_seconds else None
        ),
        "safe_mode": group.safe_mode,
        "pause_on_failed_hosts": group.pause_on_failed_hosts,
        "pause_on_failed_percent": group.pause_on_failed_percent,
        "windows": windows,
        "percentage": group.percentage,
        "pin_version": group.pin_version,
        "allow_downgrade": group.allow_downgrade,
        "reboot_timeout": (
            format_duration(group.reboot_timeout_seconds) if group.reboot_timeout_seconds else None
        ),
        "installed_counts_as_updating": group.installed_counts_as_updating,
        "retire_after": (
            format_duration(group.retire_after_seconds) if group.retire_after_seconds else None
        ),
    }


# -- routes --------------------------------------------------------------------------------------


async def _group(session: Any, request: web.Request, lock: bool = False) -> Group:
    # `app` (an id or name) only where a group's name is in several apps but not Flatcar's.
    app = request.query.get("app")
    group = await group_store.find_group(
        session,
        request.match_info["ref"],
        request.query.get("arch"),
        (await find_app(session, app)).id if app else None,
    )
    return await rollouts.lock_group(session, group.id) if lock else group


async def _floors(session: Any, group: Group) -> list[str]:
    if group.channel_id is None:
        return []
    return await group_store.channel_floors(session, group.channel_id)


async def _policy_answer(session: Any, group: Group, **extra: Any) -> dict[str, Any]:
    """What every policy route answers: the group's policy with its channel's floors."""
    await session.flush()  # floors added or removed in this transaction are read back
    body = policy_json(group)
    body["floors"] = await _floors(session, group)
    return {"group": group.name, "arch": group.arch, "policy": body, **extra}


@routes.get("/api/v1/groups/{ref}/policy")
@doc("Show a group's rollout policy", ref("Policy"), query={"arch": ARCH, "app": APP})
async def show_policy(request: web.Request) -> web.Response:
    async with transaction(request.app[READ_SESSIONS]) as session:
        group = await _group(session, request)
        return web.json_response(await _policy_answer(session, group))


@routes.patch("/api/v1/groups/{ref}/policy")
@doc(
    "Change a group's rollout policy (and its channel's floors) in one transaction",
    ref("Policy"),
    query={"arch": ARCH, "app": APP},
    body=POLICY_BODY,
    body_required=True,
)
async def set_policy(request: web.Request) -> web.Response:
    """Policy columns and the channel's floors, in one transaction: a floor that has no package
    refuses the whole change, so nothing is half applied."""
    wanted = parse_change(await json_body(request))
    now = request.app[CLOCK]()

    async def work(session: Any) -> dict[str, Any]:
        group = await _group(session, request, lock=True)
        pin = wanted.columns.get("pin_version")
        if pin and await find_package(session, group.app_id, group.arch, pin) is None:
            raise NotFoundError(f"no {group.arch} package of version {pin} to pin to")
        diff = rollouts.change_policy(session, group, wanted.columns, actor(request), now)
        changed = sorted(diff)
        if wanted.add_floors or wanted.remove_floors:
            if group.channel_id is None:
                raise InvalidInputError(f"group {group.name} follows no channel: floors need one")
            channel = await session.get(Channel, group.channel_id)
            for version in wanted.add_floors:
                await _change_floor_in(session, request, channel, version, True, now)
            for version in wanted.remove_floors:
                await _change_floor_in(session, request, channel, version, False, now)
            changed.append("floors")
        return await _policy_answer(session, group, changed=changed)

    return web.json_response(await change(request, work))


async def _pause_or_resume(request: web.Request, paused: bool) -> web.Response:
    """Pause or resume, with the reason in the activity log. Pausing a paused group (or resuming
    a running one) changes nothing, but the reason given is still logged and the answer says
    so (`changed` false, `message`): an operator's words are never dropped silently."""
    data = await json_body(request)
    reason = data.get("reason") or ""
    if not isinstance(reason, str):
        raise InvalidInputError("reason must be a string")
    now = request.app[CLOCK]()

    async def work(session: Any) -> dict[str, Any]:
        group = await _group(session, request, lock=True)
        who = actor(request)
        if paused == group.updates_enabled:
            if paused:
                rollouts.pause(group, session, now, who, reason or "paused by operator")
            else:
                rollouts.resume(group, session, now, who, reason)
            return await _policy_answer(session, group, changed=True)
        if paused:
            since = iso(group.paused_at) or "unknown"
            message = (
                f"already paused by {group.paused_by or 'unknown'} since {since}: "
                f"{group.paused_reason or 'no reason given'}"
            )
        else:
            message = "not paused: updates were already on"
        action = "pause" if paused else "resume"
        note = f"{message}; {action} asked again" + (f": {reason}" if reason else "")
        rollouts.log_activity(session, now, who, action, note, group.id, unchanged=True)
        return await _policy_answer(session, group, changed=False, message=message)

    return web.json_response(await change(request, work))


@routes.post("/api/v1/groups/{ref}/pause")
@doc("Pause a group's updates", ref("Policy"), query={"arch": ARCH, "app": APP}, body=REASON_BODY)
async def pause_group(request: web.Request) -> web.Response:
    return await _pause_or_resume(request, paused=True)


@routes.post("/api/v1/groups/{ref}/resume")
@doc("Resume a group's updates", ref("Policy"), query={"arch": ARCH, "app": APP}, body=REASON_BODY)
async def resume_group(request: web.Request) -> web.Response:
    return await _pause_or_resume(request, paused=False)


@routes.get("/api/v1/groups/{ref}/history")
@doc(
    "A group's hosts by version and status over a window",
    ref("History"),
    query={
        "arch": ARCH,
        "app": APP,
        "window": {"type": "string", "enum": ["1h", "1d", "7d", "30d"]},
    },
)
async def rollout_history(request: web.Request) -> web.Response:
    """The group's hosts by version and by status over a window (1h, 1d, 7d, 30d), from the
    count samples (nebula.store.history): every sample for 1h and 1d, the hourly ones for 7d,
    those every four hours for 30d."""
    window = request.query.get("window", "1d")
    if window not in history.WINDOWS:
        raise InvalidInputError(f"window must be one of {', '.join(history.WINDOWS)}")
    now = request.app[CLOCK]()
    async with transaction(request.app[READ_SESSIONS]) as session:
        group = await _group(session, request)
        points = await history.read_history(session, group.id, history.WINDOWS[window], now)
    return web.json_response(
        {
            "group": group.name,
            "arch": group.arch,
            "window": window,
            "points": [
                {
                    "at": iso(p.at),
                    "hosts": p.total,
                    "versions": p.versions,
                    "statuses": p.statuses,
                }
                for p in points
            ],
        }
    )


@routes.get("/api/v1/groups/{ref}/rollout")
@doc("A group's rollout: target, progress, rate", ref("Rollout"), query={"arch": ARCH, "app": APP})
async def rollout_status(request: web.Request) -> web.Response:
    now = request.app[CLOCK]()
    catalog = await request.app[CATALOG].get()
    async with transaction(request.app[READ_SESSIONS]) as session:
        group = await _group(session, request)
        entry = catalog.groups.get((group.app_id, group.id, group.arch))
        target = entry.target.version if entry is not None and entry.target else None
        floors = entry.floors if entry is not None else ()
        status = await rollouts.rollout_status(session, group, target, now, floors)
        opening = next_opening(rollouts.policy_of(group).windows, now)
        return web.json_response(
            {
                "group": group.name,
                "arch": group.arch,
                "target": target,
                "floors": list(entry.floors) if entry else [],
                "state": status.state,
                "updates_enabled": group.updates_enabled,
                "paused_reason": group.paused_reason,
                "hosts": {
                    "total": status.total,
                    "complete": status.complete,
                    "in_progress": status.in_progress,
                    "installed": status.installed,
                    "reboot_overdue": status.reboot_overdue,
                    "failed": status.failed,
                    "timed_out": status.timed_out,
                    "held": status.held,
                    "not_yet_eligible": status.not_yet_eligible,
                    "remaining": status.remaining,
                    "to_update": status.to_update,
                },
                "grants_last_hour": status.grants_last_hour,
                "rate_per_hour": status.rate_per_hour,
                "eta_seconds": status.eta_seconds,
                "longest_reboot_wait_seconds": status.longest_reboot_wait,
                "reboot_timeout": policy_json(group)["reboot_timeout"],
                "installed_counts_as_updating": group.installed_counts_as_updating,
                "next_window_opens": iso(opening),
            }
        )


@routes.get("/api/v1/groups/{ref}/activity")
@doc(
    "A group's activity log, newest first",
    listing("activity", ref("Activity")),
    query={"arch": ARCH, "app": APP, "limit": INT_TEXT},
)
async def group_activity(request: web.Request) -> web.Response:
    try:
        limit = min(max(int(request.query.get("limit", "50")), 1), 1000)
    except ValueError:
        raise InvalidInputError("limit must be an integer") from None
    async with transaction(request.app[READ_SESSIONS]) as session:
        group = await _group(session, request)
        entries = await rollouts.recent_activity(session, group.id, limit)
        return web.json_response(
            {
                "activity": [
                    {
                        "at": iso(a.created_at),
                        "actor": a.actor,
                        "action": a.action,
                        "message": a.message,
                        "detail": a.detail,
                    }
                    for a in entries
                ]
            }
        )


async def _channel(session: Any, request: web.Request, arch: Any) -> Channel:
    if not arch:
        raise InvalidInputError("say which architecture: arch")
    # Checked before it reaches a query: PostgreSQL refuses a non-text parameter (a 500).
    return await group_store.get_channel(session, request.match_info["name"], check_arch(arch))


async def _log_floor_change(
    session: Any, request: web.Request, channel: Channel, message: str, now: datetime
) -> None:
    """Logged for every group following the channel: a group's activity log is where operators
    look (`nebula rollout activity`), and nothing shows entries that belong to no group."""
    followers = (
        await session.execute(select(Group.id).where(Group.channel_id == channel.id))
    ).scalars()
    for group_id in [*followers] or [None]:
        rollouts.log_activity(session, now, actor(request), "floor", message, group_id)


async def _change_floor_in(
    session: Any, request: web.Request, channel: Channel, version: str, adding: bool, now: datetime
) -> None:
    """Mark or unmark `version` as a floor of `channel`, logged for the groups following it."""
    if adding:
        await group_store.add_floor(session, channel, version, actor(request), now)
    else:
        await group_store.remove_floor(session, channel, version)
    what = "a floor" if adding else "no longer a floor"
    message = f"{version} is {what} of {channel.name} ({channel.arch})"
    await _log_floor_change(session, request, channel, message, now)


async def _change_floor(
    request: web.Request, version: str, arch: Any, adding: bool
) -> web.Response:
    """Mark or unmark `version` as a floor of the channel in the URL."""
    now = request.app[CLOCK]()

    async def work(session: Any) -> dict[str, Any]:
        channel = await _channel(session, request, arch)
        await _change_floor_in(session, request, channel, version, adding, now)
        await session.flush()
        return {
            "channel": channel.name,
            "arch": channel.arch,
            "floors": await group_store.channel_floors(session, channel.id),
        }

    return web.json_response(await change(request, work))


@routes.post("/api/v1/channels/{name}/floors")
@doc(
    "Mark a version a floor of a channel",
    ref("Floors"),
    body=obj({"version": VERSION, "arch": ARCH}),
    body_required=True,
)
async def add_floor(request: web.Request) -> web.Response:
    data = await json_body(request)
    version = check_version(str(data.get("version") or ""), "floor")
    return await _change_floor(request, version, data.get("arch"), adding=True)


@routes.delete("/api/v1/channels/{name}/floors/{version}")
@doc("Unmark a version as a floor of a channel", ref("Floors"), query={"arch": ARCH})
async def remove_floor(request: web.Request) -> web.Response:
    version = request.match_info["version"]
    return await _change_floor(request, version, request.query.get("arch"), adding=False)


def add_routes(app: web.Application) -> None:
    app.router.add_routes(routes)
