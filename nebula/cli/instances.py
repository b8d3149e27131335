"""`nebula instance list|show|set|hold|release|delete`: hosts over the admin API.

`list` shows one page (`--limit` hosts) and, when there are more, says on stderr how to get the
next (`--cursor`); `-o json` carries the cursor as `next`. Imports click and the CLI's own
light modules only: `--help` must stay fast.
"""

from __future__ import annotations

from typing import Any

import click

from nebula.cli.client import ApiClient
from nebula.cli.output import api_options, emit_json, json_option, table, wide
from nebula.durations import format_duration
from nebula.lifecycle import STATUSES  # pure and small: cheap enough for --help

ARCH = click.Choice(["amd64", "arm64"])
SORTS = click.Choice(["id", "last_seen", "version"])
WHEN = "a time (2026-12-01T08:00:00Z) or a duration ago (2h, 7d)"


def status_text(i: dict[str, Any]) -> str:
    """An installed host with how long it has waited for its reboot ("installed 3d2h")."""
    waited = i.get("reboot_wait_seconds")
    if i["status"] != "installed" or waited is None:
        return str(i["status"]) + (" (retired)" if i.get("retired_at") else "")
    text = f"installed {format_duration(max(1, round(waited)))}"
    text = text + " (reboot overdue)" if i.get("reboot_overdue") else text
    return text + " (retired)" if i.get("retired_at") else text


def more_hint(body: dict[str, Any], command: str) -> None:
    """On stderr (scripts read stdout): how to get the next page."""
    if body.get("next"):
        click.echo(f"more: {command} --cursor {body['next']}", err=True)


@click.group("instance")
def instance_group() -> None:
    """Hosts and their update state."""


@instance_group.command("list")
@api_options
@json_option
@click.option("--app", help="Only this application (id or name)")
@click.option("--group", help="Only this group (name, track or id)")
@click.option("--channel", help="Only hosts of groups following this channel")
@click.option("--arch", type=ARCH)
@click.option("--status", type=click.Choice(STATUSES))
@click.option("--version")
@click.option("--held/--not-held", default=None, help="Only hosts held (or not) by an operator")
@click.option("--seen-before", help=f"Last seen before {WHEN}")
@click.option("--seen-after", help=f"Last seen at or after {WHEN}")
@click.option("-q", "--search", help="A machine id prefix, an alias or an IP address")
@click.option("--sort", type=SORTS, default="id", show_default=True)
@click.option("--desc", is_flag=True, help="Sort descending")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--cursor", help="The page after the one that printed this cursor")
@click.option("--all", "show_all", is_flag=True, help="Retired hosts too")
@click.option(
    "--retired", is_flag=True, help="Only retired hosts (not seen for their group's retire-after)"
)
def instance_list(
    url: str | None,
    token: str | None,
    as_json: bool,
    show_all: bool,
    retired: bool,
    held: bool | None,
    search: str | None,
    desc: bool,
    **filters: Any,
) -> None:
    """List hosts (live ones: not retired, unless --all or --retired), a page at a time.

    \b
    Example:
      nebula instance list --group canary --status error -o wide
      nebula instance list --sort last_seen --seen-before 7d
      nebula instance list -q web-1
    """
    if show_all and retired:
        raise click.UsageError("--all and --retired: say one")
    params = {k: v for k, v in filters.items() if v is not None}
    params["all"] = "1" if show_all else None
    params["retired"] = "1" if retired else None
    params["held"] = None if held is None else ("true" if held else "false")
    params["q"] = search
    params["order"] = "desc" if desc else "asc"
    result = ApiClient(url, token).get("/api/v1/instances", params)
    if as_json:
        return emit_json(result)
    table(
        [
            (
                i["machine_id"],
                i["alias"],
                i["ip"],
                i["group"],
                i["version"],
                status_text(i),
                i["granted_version"],
                "held" if i["held"] else (i["hold_reason"] or ""),
                i["last_seen_at"],
                *(
                    (
                        i["app_id"],
                        i["track"],
                        i["oem"],
                        i["board"],
                        i["status_changed_at"],
                        (i["last_error"] or {}).get("text", ""),
                    )
                    if wide()
                    else ()
                ),
            )
            for i in result["instances"]
        ],
        [
            "machine id",
            "alias",
            "ip",
            "group",
            "version",
            "status",
            "granted",
            "hold",
            "last seen",
            *(("app", "track", "oem", "board", "status since", "last error") if wide() else ()),
        ],
    )
    more_hint(result, "nebula instance list ...")


def _error_text(error: dict[str, Any] | None) -> str:
    if not error:
        return "-"
    flags = f" [{', '.join(error['flags'])}]" if error["flags"] else ""
    return f"{error['base']}: {error['text']}{flags}"


@instance_group.command("show")
@api_options
@json_option
@click.argument("machine_id")
def instance_show(url: str | None, token: str | None, as_json: bool, machine_id: str) -> None:
    """Show a host: its facts, its state in each application, its update history and its
    recent events (error codes in words).

    \b
    Example:
      nebula instance show 0f1e2d3c4b5a69788796a5b4c3d2e1f0
    """
    h = ApiClient(url, token).get(f"/api/v1/instances/{machine_id}")
    if as_json:
        return emit_json(h)
    click.echo(f"host {h['machine_id']}" + (f" ({h['alias']})" if h["alias"] else ""))
    for key in ("ip", "oem", "oem_version", "aleph_version", "board", "created_at"):
        click.echo(f"  {key.replace('_', ' ')}: {h[key] or '-'}")
    click.echo(f"  last seen: {h['last_seen_at']}")
    for a in h["apps"]:
        click.echo(f"app {a['app_id']}: group {a['group'] or '-'} ({a['arch'] or '-'})")
        since = a["status_changed_at"]
        click.echo(f"  version {a['version'] or '-'}, {status_text(a)} since {since}")
        click.echo(f"  granted: {a['granted_version'] or '-'}")
        hold = "held by an operator" if a["held"] else (a["hold_reason"] or "-")
        click.echo(f"  hold: {hold}")
        click.echo(f"  last error: {_error_text(a['last_error'])}")
        if a["retired_at"]:
            click.echo(f"  retired at {a['retired_at']}")
    click.echo("history:")
    if not h["history"]:
        click.echo("  none")
    for e in h["history"]:
        extra = f"  ({_error_text(e['error'])})" if e["error"] else ""
        click.echo(f"  {e['at']}  {e['what']:<11} {e['version']}  {e['group'] or ''}{extra}")
    click.echo("events (newest first):")
    if not h["events"]:
        click.echo("  none")
    for e in h["events"]:
        extra = f"  ({_error_text(e['error'])})" if e["error"] else ""
        click.echo(f"  {e['at']}  {e['type']}/{e['result']}  {e['what']}{extra}")


@instance_group.command("set")
@api_options
@json_option
@click.argument("machine_id")
@click.option("--alias", required=True, help="A name to find the host by; '' removes it")
def instance_set(
    url: str | None, token: str | None, as_json: bool, machine_id: str, alias: str
) -> None:
    """Give a host an alias (in the activity log; find it with `instance list -q ALIAS`).
    A host that sends its own (MACHINE_ALIAS in update.conf) replaces it at its next check.

    \b
    Example:
      nebula instance set 0f1e2d3c4b5a69788796a5b4c3d2e1f0 --alias db-primary
    """
    body = ApiClient(url, token).send(
        "PATCH", f"/api/v1/instances/{machine_id}", {"alias": alias or None}
    )
    if as_json:
        return emit_json(body)
    click.echo(f"{body['machine_id']} alias {body['alias'] or '(none)'}")


def _hold(
    action: str,
    url: str | None,
    token: str | None,
    as_json: bool,
    machine_id: str,
    reason: str | None,
) -> None:
    body = ApiClient(url, token).send(
        "POST", f"/api/v1/instances/{machine_id}/{action}", {"reason": reason or ""}
    )
    if as_json:
        return emit_json(body)
    # The server's spelling: a braced or upper-case id given here is the host's id there.
    click.echo(f"{body['machine_id']} {'held' if action == 'hold' else 'released'}")


@instance_group.command("hold")
@api_options
@json_option
@click.argument("machine_id")
@click.option("--reason")
def instance_hold(
    url: str | None, token: str | None, as_json: bool, machine_id: str, reason: str | None
) -> None:
    """Exclude a host from updates until released.

    \b
    Example:
      nebula instance hold 0f1e2d3c4b5a69788796a5b4c3d2e1f0 --reason 'db primary'
    """
    _hold("hold", url, token, as_json, machine_id, reason)


@instance_group.command("release")
@api_options
@json_option
@click.argument("machine_id")
@click.option("--reason")
def instance_release(
    url: str | None, token: str | None, as_json: bool, machine_id: str, reason: str | None
) -> None:
    """Let a held host update again.

    \b
    Example:
      nebula instance release 0f1e2d3c4b5a69788796a5b4c3d2e1f0
    """
    _hold("release", url, token, as_json, machine_id, reason)


@instance_group.command("delete")
@api_options
@json_option
@click.argument("machine_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation")
def instance_delete(
    url: str | None, token: str | None, as_json: bool, machine_id: str, yes: bool
) -> None:
    """Remove a host, its update state and its events for good (admin token). A host that checks
    in again afterwards is a new host; to only leave it out of counts, let it retire.

    \b
    Example:
      nebula instance delete 0f1e2d3c4b5a69788796a5b4c3d2e1f0 --yes
    """
    if not yes:
        click.confirm(f"delete host {machine_id}, its state and its events?", abort=True)
    body = ApiClient(url, token).call("DELETE", f"/api/v1/instances/{machine_id}")
    if as_json:
        return emit_json(body)
    click.echo(f"{body['machine_id']} deleted")
