"""`nebula event list` and `nebula activity list`: the fleet's logs over the admin API, newest
first, a page at a time (`--cursor` for the next). Imports click and the CLI's own light
modules only: `--help` must stay fast.
"""

from __future__ import annotations

from typing import Any

import click

from nebula.cli.client import ApiClient
from nebula.cli.instances import ARCH, WHEN, more_hint
from nebula.cli.output import api_options, emit_json, json_option, table, wide


def _page_options(f: Any) -> Any:
    f = click.option("--cursor", help="The page after the one that printed this cursor")(f)
    f = click.option("--oldest-first", is_flag=True, help="Oldest first instead of newest")(f)
    f = click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)(f)
    f = click.option("--until", help=f"Before {WHEN}")(f)
    f = click.option("--since", help=f"At or after {WHEN}")(f)
    f = click.option("--arch", type=ARCH, help="The group's arch, when its name has both")(f)
    f = click.option("--group", help="Only this group (name, track or id)")(f)
    return f


@click.group("event")
def event_group() -> None:
    """The events hosts sent."""


@event_group.command("list")
@api_options
@json_option
@click.option("--host", help="Only this host's (machine id)")
@click.option("--app", help="Only this application's (id or name)")
@click.option("--type", "event_type", type=int, help="3 update, 13 download started, 14 finished")
@click.option("--result", type=int, help="0 failed, 1 success, 2 success after reboot")
@_page_options
def event_list(
    url: str | None, token: str | None, as_json: bool, oldest_first: bool, **filters: Any
) -> None:
    """List events (error codes in words), newest first.

    \b
    Example:
      nebula event list --group stable --result 0 --since 1d
      nebula event list --host 0f1e2d3c4b5a69788796a5b4c3d2e1f0
    """
    params = {("type" if k == "event_type" else k): v for k, v in filters.items()}
    params["order"] = "asc" if oldest_first else "desc"
    body = ApiClient(url, token).get("/api/v1/events", params)
    if as_json:
        return emit_json(body)
    table(
        [
            (
                e["at"],
                e["machine_id"],
                e["group"],
                f"{e['type']}/{e['result']}",
                e["what"],
                f"{e['error']['base']}: {e['error']['text']}" if e["error"] else "",
                e["version"],
                *((e["previous_version"], e["app_id"], e["id"]) if wide() else ()),
            )
            for e in body["events"]
        ],
        ["at", "machine id", "group", "event", "what", "error", "version"]
        + (["previous", "app", "id"] if wide() else []),
    )
    more_hint(body, "nebula event list ...")


@click.group("activity")
def activity_group() -> None:
    """The activity log: who changed what, across every group."""


@activity_group.command("list")
@api_options
@json_option
@click.option("--actor", help="Only this token's changes (nebula: automatic ones)")
@click.option("--action", help="Only this kind: pause, resume, policy, hold, alias, token, ...")
@_page_options
def activity_list(
    url: str | None, token: str | None, as_json: bool, oldest_first: bool, **filters: Any
) -> None:
    """List the activity log of every group (and changes that belong to none), newest first.
    One group's alone: --group, or `nebula rollout activity GROUP`.

    \b
    Example:
      nebula activity list --actor ops --since 7d
    """
    params = dict(filters)
    params["order"] = "asc" if oldest_first else "desc"
    body = ApiClient(url, token).get("/api/v1/activity", params)
    if as_json:
        return emit_json(body)
    table(
        [
            (
                a["at"],
                a["actor"],
                a["action"],
                a["group"] or "-",
                a["message"],
                *((a["detail"], a["id"]) if wide() else ()),
            )
            for a in body["activity"]
        ],
        ["at", "actor", "action", "group", "message"] + (["detail", "id"] if wide() else []),
    )
    more_hint(body, "nebula activity list ...")
