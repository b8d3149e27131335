"""`nebula channel create|show|delete` and `nebula group set|delete`: the verbs the older
catalog commands (nebula.cli.catalog) lacked, added to those command groups when they load.

Channel and group names are unique per application and architecture: `--app` (id or name;
default Flatcar's, or the one app that has the name) and `--arch` pick one.
"""

from __future__ import annotations

from typing import Any

import click

from nebula.cli import named
from nebula.cli.catalog import channel_group, group_group
from nebula.cli.client import ApiClient
from nebula.cli.named import APP_HELP, ARCH
from nebula.cli.output import api_options, emit_json, json_option

# -- channels ------------------------------------------------------------------------------------


@channel_group.command("create")
@api_options
@json_option
@click.argument("channel")
@click.option("--arch", type=ARCH, required=True)
@click.option("--app", help=APP_HELP)
@click.option("--version", help="A version uploaded or added before, to offer at once")
def channel_create(
    url: str | None,
    token: str | None,
    as_json: bool,
    channel: str,
    arch: str,
    app: str | None,
    version: str | None,
) -> None:
    """Create CHANNEL of an application for an architecture.

    \b
    Example:
      nebula channel create stable --arch amd64 --app agent --version 1.2.0
    """
    body = {"name": channel, "arch": arch, "app": app, "version": version}
    result = ApiClient(url, token).send("POST", "/api/v1/channels", body)
    if as_json:
        return emit_json(result)
    offers = f"offers {result['version']}" if result["version"] else "offers nothing yet"
    click.echo(f"channel {result['name']} ({result['arch']}) of {result['app_id']} {offers}")


def _print_channel(c: dict[str, Any]) -> None:
    click.echo(
        f"channel {c['name']} ({c['arch']}) of {c['app_id']}: {c['version'] or 'no version'}"
    )
    click.echo(f"  package {c['package_id'] or '-'}")
    click.echo(f"  floors: {', '.join(c['floors']) or 'none'}")
    click.echo(f"  groups: {', '.join(c['groups']) or 'none'}")
    click.echo(f"  updated {c['updated_at']} by {c['updated_by'] or '-'}")


@channel_group.command("show")
@named.one("channel", scoped=True)
def channel_show(
    url: str | None, token: str | None, as_json: bool, channel: str, **where: str | None
) -> None:
    """Show a channel: its version, floors and the groups that follow it.

    \b
    Example:
      nebula channel show stable --arch amd64
    """
    path = f"/api/v1/channels/{channel}"
    named.show(url, token, as_json, path, _print_channel, named.scope(**where))


@channel_group.command("delete")
@named.one("channel", scoped=True)
def channel_delete(
    url: str | None, token: str | None, as_json: bool, channel: str, **where: str | None
) -> None:
    """Delete a channel no group follows (its floors go with it).

    \b
    Example:
      nebula channel delete edge --arch arm64
    """
    said, done = {"channel": channel}, f"deleted channel {channel}"
    path = f"/api/v1/channels/{channel}"
    named.delete(url, token, as_json, path, said, done, named.scope(**where))


# -- groups --------------------------------------------------------------------------------------


@group_group.command("set")
@named.one("group", scoped=True)
@click.option("--name", help="A new name")
@click.option("--track", help="A new track (what hosts send as GROUP in update.conf)")
@click.option("--channel", help="Follow this channel (of the group's app and arch)")
@click.option("--description")
def group_set(
    url: str | None,
    token: str | None,
    as_json: bool,
    group: str,
    arch: str | None,
    app: str | None,
    **changes: str | None,
) -> None:
    """Rename a group, change its track, channel or description (its rollout rules: `nebula
    policy set`).

    \b
    Example:
      nebula group set canary --arch amd64 --channel beta --description "first wave"
    """
    body = {k: v for k, v in changes.items() if v is not None}
    if not body:
        raise click.UsageError("say what to change: --name, --track, --channel or --description")
    params = {k: v for k, v in named.scope(arch, app).items() if v}
    g = ApiClient(url, token).call("PATCH", f"/api/v1/groups/{group}", params=params, json=body)
    if as_json:
        return emit_json(g)
    click.echo(
        f"group {g['name']} ({g['arch']}) track {g['track']} follows {g['channel']}: {g['id']}"
    )


@group_group.command("delete")
@named.one("group", scoped=True)
def group_delete(
    url: str | None, token: str | None, as_json: bool, group: str, **where: str | None
) -> None:
    """Delete a group no host is in.

    \b
    Example:
      nebula group delete canary --arch amd64
    """
    said, done = {"group": group}, f"deleted group {group}"
    path = f"/api/v1/groups/{group}"
    named.delete(url, token, as_json, path, said, done, named.scope(**where))
