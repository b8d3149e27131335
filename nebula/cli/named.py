"""Commands on one resource the admin API names in its path, /api/v1/<collection>/<name>: the
options they share, showing one and deleting one (apps, packages, channels, groups).

Channel and group names are unique per application and architecture, so their commands take
`--arch` and `--app` too (`scoped`), which go to the API as query parameters. Imports click and
the CLI's client and output modules only: every command's --help loads this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import click

from nebula.cli.client import ApiClient
from nebula.cli.output import api_options, emit_json, json_option

ARCH = click.Choice(["amd64", "arm64"])
APP_HELP = "The application (id or name; default Flatcar)"
ARCH_HELP = "Needed when the name exists for both arches"

F = TypeVar("F", bound=Callable[..., Any])


def one(argument: str, *, scoped: bool = False) -> Callable[[F], F]:
    """The options of a command on one resource named by ARGUMENT: the API's, the output's
    and, `scoped`, --arch and --app (the command gets them as keyword arguments `arch`, `app`).
    Options the command adds below this decorator come after these in --help."""

    def decorate(f: F) -> F:
        if scoped:
            f = click.option("--app", help=APP_HELP)(f)
            f = click.option("--arch", type=ARCH, help=ARCH_HELP)(f)
        return cast(F, api_options(json_option(click.argument(argument)(f))))

    return decorate


def scope(arch: str | None, app: str | None) -> dict[str, str | None]:
    """The query parameters that pick one of several resources of the same name."""
    return {"arch": arch, "app": app}


def show(
    url: str | None,
    token: str | None,
    as_json: bool,
    path: str,
    describe: Callable[[dict[str, Any]], None],
    where: dict[str, str | None] | None = None,
) -> None:
    """GET `path` and print it: as asked (-o json|yaml), else with `describe`."""
    result = ApiClient(url, token).get(path, where)
    if as_json:
        emit_json(result)
    else:
        describe(result)


def delete(
    url: str | None,
    token: str | None,
    as_json: bool,
    path: str,
    said: dict[str, str],
    done: str,
    where: dict[str, str | None] | None = None,
) -> None:
    """DELETE `path`; then print `said` with the scope given and `deleted: true` (-o json|yaml),
    else `done`."""
    params = {k: v for k, v in (where or {}).items() if v}
    ApiClient(url, token).call("DELETE", path, params=params)
    if as_json:
        emit_json({**said, **params, "deleted": True})
    else:
        click.echo(done)
