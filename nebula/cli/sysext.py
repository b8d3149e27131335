"""`nebula sysext upload|list|promote|demote|delete`: sysext images hosted by Nebula.

Over the admin API (nebula.sysext.admin). An image's file name is checked here before anything
is sent, and the file streams from disk (a 1 GiB image never sits in memory). Imports only
click, nebula.cli.output and the pure nebula.sysext.names at import time; the HTTP client
(aiohttp) is imported inside the commands, so `nebula --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from nebula.cli.output import api_options, emit_json, human_size, json_option, table
from nebula.errors import InvalidInputError
from nebula.sysext.names import ARCHES, parse_image_name

_ARCH = click.Choice(ARCHES)
_PATH = click.Path(exists=True, dir_okay=False, path_type=Path)


def _client(url: str | None, token: str | None) -> Any:
    from nebula.cli.client import ApiClient

    return ApiClient(url, token)


@click.group("sysext")
def sysext_group() -> None:
    """systemd-sysext images that hosts' systemd-sysupdate fetches from Nebula."""


@sysext_group.command("upload")
@api_options
@json_option
@click.argument("file", type=_PATH)
@click.option(
    "--ext",
    help="The extension's name, when the file name alone is ambiguous "
    "(e.g. nvidia-drivers-535-open)",
)
def sysext_upload(
    url: str | None, token: str | None, as_json: bool, file: Path, ext: str | None
) -> None:
    """Upload FILE, named <ext>-<version>-<arch>.raw (arch x86-64 or arm64).

    \b
    Example:
      nebula sysext upload kubernetes-v1.31.1-x86-64.raw
    """
    try:
        image = parse_image_name(file.name, ext)
    except InvalidInputError as exc:
        raise click.ClickException(str(exc)) from None
    params = {"file": file.name, **({"ext": ext} if ext else {})}
    result = _client(url, token).upload_file("/api/v1/sysext/images", params, file)
    if as_json:
        emit_json(result)
        return
    click.echo(
        f"sysext {image.name} {image.version} {image.arch}: {human_size(result['size'])}, "
        f"sha256 {result['sha256']}"
    )
    click.echo(f"  next: nebula sysext promote {image.name} {image.version} --group GROUP")


@sysext_group.command("list")
@api_options
@json_option
@click.option("--name", help="Only this extension")
def sysext_list(url: str | None, token: str | None, as_json: bool, name: str | None) -> None:
    """Stored images and the groups each is promoted to.

    \b
    Example:
      nebula sysext list
    """
    result = _client(url, token).get("/api/v1/sysext/images", {"name": name})
    if as_json:
        emit_json(result)
        return
    rows = [
        (
            i["name"],
            i["version"],
            i["arch"],
            human_size(i["size"]),
            i["sha256"][:16],
            ",".join(i["groups"]) or "-",
        )
        for i in result["images"]
    ]
    table(rows, ["name", "version", "arch", "size", "sha256", "groups"])


def _promotion(name: str, version: str, group: str, arch: str | None) -> dict[str, Any]:
    return {"name": name, "version": version, "group": group, "arch": arch}


@sysext_group.command("promote")
@api_options
@json_option
@click.argument("name", metavar="EXT")
@click.argument("version")
@click.option("--group", required=True, help="The group (its track) whose hosts get it")
@click.option("--arch", type=_ARCH, help="Only this arch [default: every arch stored]")
def sysext_promote(
    url: str | None,
    token: str | None,
    as_json: bool,
    name: str,
    version: str,
    group: str,
    arch: str | None,
) -> None:
    """Offer EXT VERSION to a group's hosts (it joins the group's SHA256SUMS index).

    \b
    Example:
      nebula sysext promote kubernetes v1.31.1 --group stable
    """
    body = _promotion(name, version, group, arch)
    result = _client(url, token).send("POST", "/api/v1/sysext/promotions", body)
    if as_json:
        emit_json(result)
        return
    click.echo(f"promoted to {result['group']}: {', '.join(result['images'])}")
    click.echo(f"  index {result['index']}")


@sysext_group.command("demote")
@api_options
@json_option
@click.argument("name", metavar="EXT")
@click.argument("version")
@click.option("--group", required=True, help="The group (its track) to take it from")
@click.option("--arch", type=_ARCH, help="Only this arch [default: every arch]")
def sysext_demote(
    url: str | None,
    token: str | None,
    as_json: bool,
    name: str,
    version: str,
    group: str,
    arch: str | None,
) -> None:
    """Take EXT VERSION out of a group's index (hosts that have it keep it).

    \b
    Example:
      nebula sysext demote kubernetes v1.31.1 --group stable
    """
    body = _promotion(name, version, group, arch)
    result = _client(url, token).send("DELETE", "/api/v1/sysext/promotions", body)
    if as_json:
        emit_json(result)
        return
    click.echo(f"demoted {name} {version} from {result['group']} ({result['removed']} image(s))")


@sysext_group.command("delete")
@api_options
@json_option
@click.argument("name", metavar="EXT")
@click.argument("version")
@click.option("--arch", type=_ARCH, help="Only this arch [default: every arch]")
def sysext_delete(
    url: str | None, token: str | None, as_json: bool, name: str, version: str, arch: str | None
) -> None:
    """Forget EXT VERSION (refused while it is promoted to a group).

    \b
    Example:
      nebula sysext delete kubernetes v1.31.1 --arch x86-64
    """
    from urllib.parse import quote

    path = f"/api/v1/sysext/images/{quote(name, safe='')}/{quote(version, safe='')}"
    result = _client(url, token).call("DELETE", path, params={"arch": arch} if arch else {})
    if as_json:
        emit_json(result)
        return
    click.echo(f"deleted {', '.join(i['file'] for i in result['deleted'])}")
