"""`nebula context add|use|list|delete`: named API contexts (a server URL and a token each) in
~/.config/nebula/config.toml (see nebula.config.cli_config_path), beside NEBULA_URL and
NEBULA_TOKEN.

The file holds tokens: it is written whole, through a temporary file, with mode 0600. Which
context the API client uses is `resolve`'s to say: flags, then the environment, then
NEBULA_CONTEXT or the current context; a context's token is sent only to its own URL. Imports
only click, the standard library and nebula.config.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import click

from nebula.cli.output import emit_json, output_options, table
from nebula.config import cli_config_path, cli_context


@dataclass(frozen=True, slots=True)
class Context:
    url: str
    token: str


@dataclass(slots=True)
class Contexts:
    current: str | None = None
    entries: dict[str, Context] = field(default_factory=dict)


def load(path: Path) -> Contexts:
    """The contexts in `path` (none when it does not exist); a ClickException naming the file
    when it cannot be read or is not what `save` writes."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Contexts()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise click.ClickException(f"{path}: cannot read the CLI's contexts: {exc}") from None
    found = Contexts(current=raw.get("current") if isinstance(raw.get("current"), str) else None)
    tables = raw.get("contexts", {})
    if not isinstance(tables, dict):
        raise click.ClickException(f"{path}: [contexts] must be tables of url and token")
    for name, entry in tables.items():
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("url"), str)
            and isinstance(entry.get("token"), str)
        ):
            raise click.ClickException(f"{path}: context {name!r} needs url and token (strings)")
        found.entries[name] = Context(entry["url"], entry["token"])
    return found


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def dumps(contexts: Contexts) -> str:
    lines = ["# Nebula CLI contexts (nebula context add|use|list|delete). Holds tokens: keep 0600."]
    if contexts.current is not None:
        lines.append(f"current = {_toml_string(contexts.current)}")
    for name in sorted(contexts.entries):
        entry = contexts.entries[name]
        lines += [
            "",
            f"[contexts.{_toml_string(name)}]",
            f"url = {_toml_string(entry.url)}",
            f"token = {_toml_string(entry.token)}",
        ]
    return "\n".join(lines) + "\n"


def save(path: Path, contexts: Contexts) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(dumps(contexts))
    os.chmod(temp, 0o600)  # an older temp file may have had another mode
    os.replace(temp, path)


def resolve(
    url: str | None, token: str | None, env_url: str | None, env_token: str | None
) -> tuple[str | None, str | None, str | None]:
    """(URL, token, where the URL came from) for the API client.

    A flag wins over the environment, which wins over the context (NEBULA_CONTEXT, else the
    current one). The context's token goes only with the context's URL: a URL given any other
    way never receives it.
    """
    chosen_url, source = (url, "--server") if url else (env_url, "NEBULA_URL")
    chosen_token = token or env_token
    if chosen_url and chosen_token:
        return chosen_url, chosen_token, source
    path = cli_config_path()
    contexts = load(path)
    name = cli_context() or contexts.current
    if name is None:
        return chosen_url, chosen_token, source
    context = contexts.entries.get(name)
    if context is None:
        raise click.ClickException(f"context {name!r} is not in {path}: see `nebula context list`")
    if chosen_url and chosen_url.rstrip("/") != context.url.rstrip("/"):
        return chosen_url, chosen_token, source  # another server: not this context's token
    return chosen_url or context.url, chosen_token or context.token, f"context {name}"


# -- commands ------------------------------------------------------------------------------------


@click.group("context")
def context_group() -> None:
    """Named servers and tokens, so that commands need no --server, --token or NEBULA_*."""


@context_group.command("add")
@click.argument("name")
@click.option("--server", "url", required=True, help="Nebula's admin URL, e.g. http://HOST:8000")
@click.option(
    "--token",
    prompt="API token",
    hide_input=True,
    help="The context's API token (asked for, unechoed, when not given)",
)
@click.option("--use", "make_current", is_flag=True, help="Make it the current context")
def context_add(name: str, url: str, token: str, make_current: bool) -> None:
    """Add (or replace) a context: a server URL and its token.

    \b
    Example:
      nebula context add prod --server https://nebula.example.com:8443 --use
    """
    from nebula.cli.client import base_url

    path = cli_config_path()
    contexts = load(path)
    if not token.strip():
        raise click.UsageError("the token is empty")
    contexts.entries[name] = Context(base_url(url, "--server"), token.strip())
    if make_current or contexts.current is None:
        contexts.current = name
    save(path, contexts)
    current = " (current)" if contexts.current == name else ""
    click.echo(f"context {name}{current}: {contexts.entries[name].url}, saved in {path}")


@context_group.command("use")
@click.argument("name")
def context_use(name: str) -> None:
    """Make NAME the current context.

    \b
    Example:
      nebula context use staging
    """
    path = cli_config_path()
    contexts = load(path)
    if name not in contexts.entries:
        known = ", ".join(sorted(contexts.entries)) or "none yet (nebula context add)"
        raise click.ClickException(f"no context {name!r}; there are: {known}")
    contexts.current = name
    save(path, contexts)
    click.echo(f"using context {name}: {contexts.entries[name].url}")


@context_group.command("list")
@output_options
def context_list(as_json: bool) -> None:
    """List contexts (their tokens are not shown).

    \b
    Example:
      nebula context list -o yaml
    """
    contexts = load(cli_config_path())
    current = cli_context() or contexts.current
    rows = [
        {"name": n, "url": c.url, "current": n == current}
        for n, c in sorted(contexts.entries.items())
    ]
    if as_json:
        return emit_json({"contexts": rows})
    table([("*" if r["current"] else "", r["name"], r["url"]) for r in rows], ["", "name", "url"])


@context_group.command("delete")
@click.argument("name")
def context_delete(name: str) -> None:
    """Delete a context (the server's token stays valid: revoke it there).

    \b
    Example:
      nebula context delete old-lab
    """
    path = cli_config_path()
    contexts = load(path)
    if contexts.entries.pop(name, None) is None:
        raise click.ClickException(f"no context {name!r}")
    if contexts.current == name:
        contexts.current = None
    save(path, contexts)
    click.echo(f"deleted context {name}")
