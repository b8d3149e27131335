"""The activity log entry every admin change writes: who (the token's name), what, and the old
and new values in `detail` ({"changes": {field: [old, new]}} for an update, the whole object as
it was for a delete, as it is for a create).

Call `record` inside the change's transaction (nebula.web.api.change), so that the entry is
kept exactly when the change is. Imports nebula.store.rollouts and nebula.web.api.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from nebula.store.rollouts import log_activity
from nebula.web.api import actor
from nebula.web.keys import CLOCK


def record(
    session: AsyncSession,
    request: web.Request,
    action: str,
    message: str,
    groups: Iterable[str | None] = (None,),
    **detail: Any,
) -> None:
    """One entry per group the change concerns (a group's log is where operators look, with
    `nebula rollout activity`), or one belonging to no group."""
    now = request.app[CLOCK]()
    for group_id in list(groups) or [None]:
        log_activity(session, now, actor(request), action, message, group_id, **detail)


def changes_text(diff: dict[str, list[Any]]) -> str:
    """`name a -> b, track c -> d`: the message of an update."""
    return ", ".join(f"{k} {_show(old)} -> {_show(new)}" for k, (old, new) in diff.items())


def _show(value: Any) -> str:
    return "none" if value is None or value == "" else str(value)
