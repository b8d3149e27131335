"""`nebula app ...`: the Omaha applications Nebula serves (Flatcar's, seeded, and any other).

An app's id is what its hosts send as `appid` (a UUID, braces and case as they like, or a short
name such as io.example.agent); its channels, groups and packages take `--app ID|NAME`.
"""

from __future__ import annotations

from typing import Any

import click

from nebula.cli import named
from nebula.cli.client import ApiClient
from nebula.cli.output import api_options, emit_json, json_option, table, wide


@click.group("app")
def app_group() -> None:
    """Applications: the Omaha app ids Nebula serves."""


def _print_app(a: dict[str, Any]) -> None:
    click.echo(f"app {a['name']}: {a['id']}")
    if a.get("description"):
        click.echo(f"  {a['description']}")
    for key in ("channels", "groups"):
        if key in a:
            click.echo(f"  {key}: {', '.join(a[key]) or 'none'}")
    if "packages" in a:
        click.echo(f"  packages: {a['packages']}")


@app_group.command("list")
@api_options
@json_option
def app_list(url: str | None, token: str | None, as_json: bool) -> None:
    """List applications.

    \b
    Example:
      nebula app list -o wide
    """
    result = ApiClient(url, token).get("/api/v1/apps")
    if as_json:
        return emit_json(result)
    table(
        [
            (a["name"], a["id"], a["description"], *((a["created_at"],) if wide() else ()))
            for a in result["apps"]
        ],
        ["name", "id", "description"] + (["created"] if wide() else []),
    )


@app_group.command("show")
@named.one("app")
def app_show(url: str | None, token: str | None, as_json: bool, app: str) -> None:
    """Show an application (by id or name) and its channels, groups and packages.

    \b
    Example:
      nebula app show flatcar
    """
    named.show(url, token, as_json, f"/api/v1/apps/{app}", _print_app)


@app_group.command("create")
@api_options
@json_option
@click.argument("name")
@click.option(
    "--id",
    "app_id",
    help="The appid its hosts send: a UUID or a name like io.example.agent (default: a new UUID)",
)
@click.option("--description", default="")
def app_create(
    url: str | None,
    token: str | None,
    as_json: bool,
    name: str,
    app_id: str | None,
    description: str,
) -> None:
    """Create an application.

    \b
    Example:
      nebula app create agent --id io.example.agent --description "our node agent"
    """
    body = {"name": name, "id": app_id, "description": description}
    result = ApiClient(url, token).send("POST", "/api/v1/apps", body)
    emit_json(result) if as_json else _print_app(result)


@app_group.command("set")
@api_options
@json_option
@click.argument("app")
@click.option("--name", help="A new name (the id stays: hosts send it)")
@click.option("--description")
def app_set(
    url: str | None,
    token: str | None,
    as_json: bool,
    app: str,
    name: str | None,
    description: str | None,
) -> None:
    """Rename an application or change its description.

    \b
    Example:
      nebula app set agent --description "node agent, all regions"
    """
    body = {k: v for k, v in (("name", name), ("description", description)) if v is not None}
    if not body:
        raise click.UsageError("say what to change: --name or --description")
    result = ApiClient(url, token).send("PATCH", f"/api/v1/apps/{app}", body)
    emit_json(result) if as_json else _print_app(result)


@app_group.command("delete")
@named.one("app")
def app_delete(url: str | None, token: str | None, as_json: bool, app: str) -> None:
    """Delete an application that has no channels, groups, packages or hosts.

    \b
    Example:
      nebula app delete agent
    """
    named.delete(url, token, as_json, f"/api/v1/apps/{app}", {"app": app}, f"deleted {app}")
