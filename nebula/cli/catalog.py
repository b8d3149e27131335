"""`nebula package|channel|group ...`: the operator's commands over the admin API."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import click

from nebula.cli import named
from nebula.cli.client import ApiClient
from nebula.cli.named import ARCH
from nebula.cli.output import api_options, emit_json, human_size, json_option, table, wide

# -- packages ------------------------------------------------------------------------------------


@click.group("package")
def package_group() -> None:
    """Update payloads."""


def _print_package(p: dict[str, Any]) -> None:
    kind = f"delta from {p['from_version']}" if p["kind"] == "delta" else "full"
    click.echo(f"package {p['id']}: {p['version']} {p['arch']} ({kind})")
    click.echo(f"  codebase {p['codebase']}")
    for f in p["files"]:
        role = "main" if f["required"] else "extension"
        click.echo(f"  {f['name']}  {human_size(f['size'])}  sha256 {f['sha256']}  ({role})")


_PATH = click.Path(exists=True, dir_okay=False, path_type=Path)


@package_group.command("upload")
@api_options
@json_option
@click.argument("payload", type=_PATH)
@click.option("--version", required=True, help="The OS version of the payload, e.g. 4152.2.3")
@click.option("--arch", type=ARCH, required=True)
@click.option(
    "--extension",
    multiple=True,
    type=_PATH,
    help="An extension payload of this version (oem-*.gz, flatcar-*.gz); repeatable",
)
@click.option("--from-version", help="For a delta payload: the version it applies to")
@click.option("--app", help="The application (id or name; default Flatcar)")
def package_upload(
    url: str | None,
    token: str | None,
    as_json: bool,
    payload: Path,
    version: str,
    arch: str,
    extension: tuple[Path, ...],
    from_version: str | None,
    app: str | None,
) -> None:
    """Upload a signed payload (and its extensions) to Nebula's payload store.

    \b
    Example:
      nebula package upload flatcar_production_update.gz --version 4152.2.3 \\
          --arch amd64 --extension oem-azure.gz
    """
    params = {"version": version, "arch": arch}
    if from_version:
        params["from_version"] = from_version
    if app:
        params["app"] = app
    result = ApiClient(url, token).upload(params, payload, extension)
    emit_json(result) if as_json else _print_package(result)


def _describe_file(path: Path) -> dict[str, Any]:
    """A local copy's size and hashes, and the facts of its signature (`crau`) for the server.

    The file is read by the verifier `upload` uses: one that is not a well-formed, signed CrAU
    payload is refused here, before anything is sent. Which keys are trusted only the server
    knows, so it checks the signature over the digest computed here (see add_external_package).
    """
    from nebula.errors import PayloadError
    from nebula.payload import read_facts

    try:
        facts = read_facts(path)
    except PayloadError as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"{path}: {exc.strerror}") from None
    return {
        "name": path.name,
        "size": facts.size,
        "sha1": facts.sha1.hex(),
        "sha256": facts.sha256.hex(),
        "crau": {
            "signed_size": facts.signed_size,
            "signed_sha256": facts.signed_sha256.hex(),
            "signature": base64.b64encode(facts.signature).decode("ascii"),
            "delta": facts.is_delta,
        },
    }


def _parse_file_spec(text: str) -> dict[str, Any]:
    parts = text.split(":")
    if len(parts) != 4 or not parts[1].isdigit():
        raise click.BadParameter(f"{text!r}: want NAME:SIZE:SHA1HEX:SHA256HEX")
    return {"name": parts[0], "size": int(parts[1]), "sha1": parts[2], "sha256": parts[3]}


@package_group.command("add")
@api_options
@json_option
@click.argument("files", nargs=-1, type=_PATH)
@click.option(
    "--url",
    "base_url",
    required=True,
    help="Base URL the files are served from (a CDN, Flatcar's release server)",
)
@click.option("--version", required=True)
@click.option("--arch", type=ARCH, required=True)
@click.option("--from-version", help="For a delta payload: the version it applies to")
@click.option("--extension", multiple=True, type=_PATH, help="A local copy of an extension")
@click.option(
    "--file",
    "specs",
    multiple=True,
    help="NAME:SIZE:SHA1HEX:SHA256HEX of a file without a local copy; repeatable, "
    "main payload first",
)
@click.option("--app", help="The application (id or name; default Flatcar)")
def package_add(
    url: str | None,
    token: str | None,
    as_json: bool,
    files: tuple[Path, ...],
    base_url: str,
    version: str,
    arch: str,
    from_version: str | None,
    extension: tuple[Path, ...],
    specs: tuple[str, ...],
    app: str | None,
) -> None:
    """Register a package hosted elsewhere, with each file's size and hashes.

    Give local copies of the files (FILES, main payload first, and --extension) to have them
    verified as `upload` does (CrAU, signed by a key the server trusts) and their sizes and
    hashes computed, or --file NAME:SIZE:SHA1:SHA256 for each (taken on trust).

    \b
    Example:
      nebula package add flatcar_production_update.gz --version 4152.2.3 \\
          --arch amd64 --url https://update.release.flatcar-linux.net/amd64-usr/4152.2.3/
    """
    described = [_describe_file(p) for p in (*files, *extension)]
    described += [_parse_file_spec(s) for s in specs]
    if not described:
        raise click.UsageError("give the files (local copies) or --file specs")
    body = {
        "version": version,
        "arch": arch,
        "from_version": from_version,
        "base_url": base_url,
        "files": described,
        "app": app,
    }
    result = ApiClient(url, token).send("POST", "/api/v1/packages", body)
    emit_json(result) if as_json else _print_package(result)


@package_group.command("list")
@api_options
@json_option
@click.option("--arch", type=ARCH)
@click.option("--version")
@click.option("--app", help="The application (id or name; default Flatcar)")
def package_list(
    url: str | None,
    token: str | None,
    as_json: bool,
    arch: str | None,
    version: str | None,
    app: str | None,
) -> None:
    """List packages.

    \b
    Example:
      nebula package list --arch amd64 -o wide
    """
    query = {"arch": arch, "version": version, "app": app}
    result = ApiClient(url, token).get("/api/v1/packages", query)
    if as_json:
        return emit_json(result)
    table(
        [
            (
                p["version"],
                p["arch"],
                p["kind"] if p["kind"] == "full" else f"delta<-{p['from_version']}",
                len(p["files"]),
                human_size(sum(f["size"] for f in p["files"])),
                "external" if p["external"] else "stored",
                p["id"],
                *((p["app_id"], p["created_at"], p["created_by"], p["codebase"]) if wide() else ()),
            )
            for p in result["packages"]
        ],
        ["version", "arch", "kind", "files", "size", "where", "id"]
        + (["app", "created", "by", "codebase"] if wide() else []),
    )


@package_group.command("show")
@named.one("package_id")
def package_show(url: str | None, token: str | None, as_json: bool, package_id: str) -> None:
    """Show a package and its files.

    \b
    Example:
      nebula package show 9bf8e088-5612-4604-b745-00188134362a
    """
    named.show(url, token, as_json, f"/api/v1/packages/{package_id}", _print_package)


@package_group.command("delete")
@named.one("package_id")
def package_delete(url: str | None, token: str | None, as_json: bool, package_id: str) -> None:
    """Delete a package no channel or pin uses.

    \b
    Example:
      nebula package delete 9bf8e088-5612-4604-b745-00188134362a
    """
    path, said = f"/api/v1/packages/{package_id}", {"id": package_id}
    named.delete(url, token, as_json, path, said, f"deleted {package_id}")


@package_group.command("verify")
@api_options
@json_option
def package_verify(url: str | None, token: str | None, as_json: bool) -> None:
    """Re-hash every stored payload file; exit 1 naming each that no longer matches its
    recorded SHA-256 (or is gone).

    \b
    Example:
      nebula package verify
    """
    result = ApiClient(url, token).call("POST", "/api/v1/packages/verify")
    if as_json:
        emit_json(result)
    else:
        for bad in result["bad"]:
            click.echo(
                f"BAD {bad['path']}: {bad['name']} of {bad['version']} {bad['arch']} "
                f"(package {bad['package']}): {bad['problem']}, recorded {bad['sha256']}",
                err=True,
            )
        click.echo(
            f"{result['checked']} stored files ({result['blobs']} blobs) checked, "
            f"{len(result['bad'])} bad"
        )
    if result["bad"]:
        raise SystemExit(1)


# -- channels ------------------------------------------------------------------------------------


@click.group("channel")
def channel_group() -> None:
    """Channels: which version each channel offers."""


@channel_group.command("list")
@api_options
@json_option
@click.option("--app", help="The application (id or name; default Flatcar)")
def channel_list(url: str | None, token: str | None, as_json: bool, app: str | None) -> None:
    """List channels and their versions.

    \b
    Example:
      nebula channel list -o json
    """
    result = ApiClient(url, token).get("/api/v1/channels", {"app": app})
    if as_json:
        return emit_json(result)
    table(
        [
            (
                c["name"],
                c["arch"],
                c["version"] or "-",
                c["updated_at"],
                c["updated_by"],
                *((c["package_id"], c["id"]) if wide() else ()),
            )
            for c in result["channels"]
        ],
        ["channel", "arch", "version", "updated", "by"] + (["package", "id"] if wide() else []),
    )


@channel_group.command("set")
@api_options
@json_option
@click.argument("channel")
@click.option("--arch", type=ARCH, required=True)
@click.option("--version", required=True, help="A version uploaded or added before")
@click.option("--app", help="The application (id or name; default Flatcar)")
def channel_set(
    url: str | None,
    token: str | None,
    as_json: bool,
    channel: str,
    arch: str,
    version: str,
    app: str | None,
) -> None:
    """Point CHANNEL at VERSION: hosts of its groups are offered it.

    \b
    Example:
      nebula channel set stable --arch amd64 --version 4152.2.3
    """
    body = {"arch": arch, "version": version, "app": app}
    result = ApiClient(url, token).send("PUT", f"/api/v1/channels/{channel}", body)
    if as_json:
        return emit_json(result)
    click.echo(f"{result['name']} ({result['arch']}) now offers {result['version']}")


# -- groups --------------------------------------------------------------------------------------


@click.group("group")
def group_group() -> None:
    """Groups of hosts (a track on an architecture) and their channel."""


@group_group.command("list")
@api_options
@json_option
@click.option("--app", help="The application (id or name; default Flatcar)")
def group_list(url: str | None, token: str | None, as_json: bool, app: str | None) -> None:
    """List groups.

    \b
    Example:
      nebula group list
    """
    result = ApiClient(url, token).get("/api/v1/groups", {"app": app})
    if as_json:
        return emit_json(result)
    table(
        [
            (
                g["name"],
                g["track"],
                g["arch"],
                g["channel"] or "-",
                "on" if g["policy"]["updates_enabled"] else "paused",
                g["id"],
                *((g["description"],) if wide() else ()),
            )
            for g in result["groups"]
        ],
        ["name", "track", "arch", "channel", "updates", "id"] + (["description"] if wide() else []),
    )


@group_group.command("create")
@api_options
@json_option
@click.argument("name")
@click.option("--arch", type=ARCH, required=True)
@click.option("--channel", required=True, help="The channel whose version the group follows")
@click.option("--track", help="What hosts send as GROUP in update.conf (default: the name)")
@click.option("--description", default="")
@click.option("--app", help="The application (id or name; default Flatcar)")
def group_create(
    url: str | None,
    token: str | None,
    as_json: bool,
    name: str,
    arch: str,
    channel: str,
    track: str | None,
    description: str,
    app: str | None,
) -> None:
    """Create a group.

    \b
    Example:
      nebula group create canary --arch amd64 --channel stable
    """
    result = ApiClient(url, token).send(
        "POST",
        "/api/v1/groups",
        {
            "name": name,
            "arch": arch,
            "channel": channel,
            "track": track,
            "description": description,
            "app": app,
        },
    )
    if as_json:
        return emit_json(result)
    click.echo(
        f"group {result['name']} ({result['arch']}) track {result['track']} "
        f"follows {result['channel']}: {result['id']}"
    )


def _print_group(g: dict[str, Any]) -> None:
    click.echo(f"group {g['name']} ({g['arch']}), track {g['track']}, channel {g['channel']}")
    click.echo(f"  id {g['id']}")
    for key, value in g["policy"].items():
        click.echo(f"  {key}: {value}")
    counts = g.get("instances", {})
    click.echo("  hosts: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))


@group_group.command("show")
@named.one("group", scoped=True)
def group_show(
    url: str | None, token: str | None, as_json: bool, group: str, **where: str | None
) -> None:
    """Show a group, its policy and its hosts by status.

    \b
    Example:
      nebula group show canary --arch amd64
    """
    path = f"/api/v1/groups/{group}"
    named.show(url, token, as_json, path, _print_group, named.scope(**where))
