"""`nebula serve`, `nebula db upgrade|current|backup` and `nebula token create|list|revoke`.

These work on the server's own settings and database (not through the API): the first token has
to come from somewhere. The token commands also work over the admin API (see TOKEN_HELP).
Every option is also `NEBULA_<NAME>` in the environment or a key of the
`--config` TOML file.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click

from nebula.cli.output import output_options
from nebula.config import Settings, load_settings
from nebula.errors import ConfigError, NebulaError
from nebula.store import db
from nebula.store import tokens as token_store

_DB_HELP = "Database URL: sqlite:///PATH or postgresql://USER@HOST/DB [NEBULA_DB]"


def config_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--config", type=click.Path(dir_okay=False), help="TOML file with settings [NEBULA_CONFIG]"
    )(f)


def db_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--db", help=_DB_HELP)(f)


def settings_from(**flags: Any) -> Settings:
    try:
        return load_settings(flags)
    except NebulaError as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@config_option
@db_option
@click.option("--listen", help="HOST:PORT to listen on [NEBULA_LISTEN, default 127.0.0.1:8000]")
@click.option(
    "--public-url",
    help="Base URL hosts reach this server at, e.g. "
    "https://updates.example.com (used in codebase URLs) [NEBULA_PUBLIC_URL]",
)
@click.option("--payload-dir", help="Where uploaded payloads are stored [NEBULA_PAYLOAD_DIR]")
@click.option(
    "--trusted-key",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Extra PEM public key trusted for payload signatures (repeatable) "
    "[NEBULA_TRUSTED_KEY, ':'-separated]",
)
@click.option(
    "--admin-listen",
    help="HOST:PORT of a second listener that alone serves /api/ and /metrics "
    "[NEBULA_ADMIN_LISTEN]",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False),
    help="PEM certificate (chain): serve HTTPS on every listener; needs --tls-key "
    "[NEBULA_TLS_CERT]",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False),
    help="PEM private key of --tls-cert [NEBULA_TLS_KEY]",
)
@click.option(
    "--migrate/--no-migrate",
    default=None,
    help="Migrate the database on start (default on) [NEBULA_MIGRATE]",
)
@click.option(
    "--workers",
    type=int,
    help="Processes serving the port(s) [NEBULA_WORKERS, default: one per CPU on PostgreSQL, "
    "1 on SQLite (which allows no more)]",
)
@click.option(
    "--shutdown-timeout",
    type=float,
    help="Seconds requests in flight get to finish after SIGTERM/SIGINT "
    "[NEBULA_SHUTDOWN_TIMEOUT, default 20]",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="[NEBULA_LOG_LEVEL]",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="text lines, or one JSON object per line [NEBULA_LOG_FORMAT, default text]",
)
def serve(**flags: Any) -> None:
    """Run the update server.

    \b
    Example:
      nebula serve --db postgresql+asyncpg://nebula@db/nebula --listen 0.0.0.0:8000
    """
    settings = settings_from(**flags)
    from nebula.web.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    if not settings.public_url:
        logging.getLogger("nebula").warning(
            "no --public-url: hosts will be sent payload URLs under %s", settings.base_url
        )
    from nebula.web.workers import run_workers, worker_count

    count = worker_count(settings)
    try:
        if count == 1:
            _serve_one(settings)
            return
        status = run_workers(
            settings,
            count,
            lambda n: click.echo(f"nebula listening on {_where(settings)}, {n} workers"),
        )
    except NebulaError as exc:
        raise click.ClickException(str(exc)) from None
    if status:
        raise SystemExit(status)


def _where(settings: Settings) -> str:
    scheme = "https" if settings.tls else "http"
    where = f"{scheme}://{settings.listen}"
    if settings.admin_listen:
        where += f", admin API and /metrics only on {scheme}://{settings.admin_listen}"
    return f"{where} (database {db.safe_url(settings.db)})"


def _serve_one(settings: Settings) -> None:
    """One process: bind, start the app, say "listening" once it serves, drain on a signal."""
    from nebula.web.app import create_app
    from nebula.web.serve import bind, serve_app

    app = create_app(settings)
    sockets = [bind(settings.listen)]
    if settings.admin_listen:
        sockets.append(bind(settings.admin_listen))

    def ready() -> None:
        click.echo(f"nebula listening on {_where(settings)}")

    asyncio.run(serve_app(app, sockets, settings=settings, on_ready=ready))


def _run_db(settings: Settings, work: Callable[[Any], Any]) -> Any:
    async def run() -> Any:
        engine = db.create_engine(settings.db)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except NebulaError as exc:
        raise click.ClickException(str(exc)) from None


@click.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@config_option
@db_option
def db_upgrade(**flags: Any) -> None:
    """Migrate the database to the newest schema.

    \b
    Example:
      nebula db upgrade --db sqlite+aiosqlite:///nebula.db
    """
    settings = settings_from(**flags)

    async def work(engine: Any) -> str | None:
        await db.check_connection(engine)
        await db.upgrade(engine)
        return await db.current_revision(engine)

    click.echo(f"database at revision {_run_db(settings, work)}")


@db_group.command("backup")
@config_option
@db_option
@click.argument("file", type=click.Path(dir_okay=False))
def db_backup(file: str, **flags: Any) -> None:
    """Copy a SQLite database to FILE while it is being served (PostgreSQL: use pg_dump).

    \b
    Example:
      nebula db backup --db sqlite:///nebula.db nebula-backup.db
    """
    from pathlib import Path

    from nebula.store.backup import backup_sqlite

    settings = settings_from(**flags)
    source = db.sqlite_path(settings.db)
    if source is None:
        raise click.ClickException(
            f"nebula db backup copies a SQLite database; {db.safe_url(settings.db)} is not "
            "one: back PostgreSQL up with pg_dump (it too copies while Nebula serves)"
        )
    try:
        size = backup_sqlite(source, Path(file))
    except NebulaError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"backed up {source} to {file} ({size} bytes)")


@db_group.command("current")
@config_option
@db_option
def db_current(**flags: Any) -> None:
    """Show the database's schema revision and the newest one.

    \b
    Example:
      nebula db current --db sqlite+aiosqlite:///nebula.db
    """
    settings = settings_from(**flags)

    async def work(engine: Any) -> str | None:
        await db.check_connection(engine)
        return await db.current_revision(engine)

    current = _run_db(settings, work)
    click.echo(f"database: {current or 'empty'}; newest: {db.head_revision()}")


TOKEN_HELP = """Admin API tokens, on the database (--db) or over the API (--server, a context).

\b
Where each command works:
  - the database when --db or --config is given, or NEBULA_DB or NEBULA_CONFIG is set
    (how the first token is made, on the server's machine);
  - else the admin API when --server or --token is given, NEBULA_URL or NEBULA_TOKEN is set,
    or a context is in use (`nebula context`): an admin token is needed;
  - else the database of the default settings.
Both ways, creating and revoking are written to the activity log.
"""


@click.group("token", help=TOKEN_HELP)
def token_group() -> None:
    pass


def _over_api(flags: dict[str, Any]) -> Any:
    """The API client when this token command goes to the API (see TOKEN_HELP), else None;
    takes the API's flags out of `flags`."""
    from nebula.cli.client import ApiClient
    from nebula.cli.contexts import resolve
    from nebula.config import client_env, server_env_given

    url, token = flags.pop("url", None), flags.pop("token", None)
    if flags.get("db") or flags.get("config"):
        if url or token:
            raise click.UsageError("--db/--config and --server/--token: say one")
        return None
    if not (url or token):
        if server_env_given():
            return None
        env_url, env_token = client_env()
        if resolve(None, None, env_url, env_token)[1] is None:
            return None
    return ApiClient(url, token)


def _actor() -> str:
    """Who made a change on the database directly, for the activity log."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user} (database)"[:100]


def _in_transaction(
    settings: Settings, work: Callable[[Any], Any], *, create: bool | None = None
) -> Any:
    """Run `work` in one transaction on a migrated Nebula database. One that is not migrated
    (or a SQLite file that does not exist) is refused rather than made, unless `create` is
    true (None: the command has no --create): a token written into a stray empty database is
    a token the server never sees."""
    hint = "run `nebula db upgrade`" + (" or pass --create" if create is not None else "")
    where = db.safe_url(settings.db)
    path = db.sqlite_path(settings.db)
    if path is not None and not path.exists() and not create:
        raise click.ClickException(f"database {where} does not exist ({path.resolve()}): {hint}")

    async def run(engine: Any) -> Any:
        await db.check_connection(engine)
        if create:
            await db.upgrade(engine)
        elif await db.current_revision(engine) is None:
            raise ConfigError(f"database {where} is not migrated: {hint}")
        async with db.transaction(db.session_factory(engine)) as session:
            return await work(session)

    return _run_db(settings, run)


def _api_flags(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--token", help="An admin token, to work over the API [NEBULA_TOKEN]")(f)
    f = click.option(
        "--server", "url", help="Nebula's URL, to work over the API [NEBULA_URL, a context]"
    )(f)
    return f


@token_group.command("create")
@config_option
@db_option
@_api_flags
@click.option("--name", required=True, help="Who or what uses the token")
@click.option("--role", type=click.Choice(token_store.ROLES), default="admin", show_default=True)
@click.option(
    "--create",
    is_flag=True,
    help="Migrate the database first if it is not (or make the SQLite file)",
)
def token_create(name: str, role: str, create: bool, **flags: Any) -> None:
    """Create a token and print it (once: only its hash is kept).

    On the database, it must be the server's, migrated: one that is not is refused unless
    --create. Where the token went is said on stderr.

    \b
    Example:
      export NEBULA_TOKEN=$(nebula token create --db sqlite:///nebula.db --name ops)
      nebula token create --name grafana --role viewer    # over the API (a context)
    """
    client = _over_api(flags)
    if client is not None:
        if create:
            raise click.UsageError("--create works on the database (--db), not over the API")
        body = client.send("POST", "/api/v1/tokens", {"name": name, "role": role})
        click.echo(body["token"])
        click.echo(f"token {name!r} ({role}) created on {client.url}", err=True)
        return
    settings = settings_from(**flags)
    now = datetime.now(UTC)
    token = _in_transaction(
        settings,
        lambda s: token_store.create_token(s, name, role, now, _actor()),
        create=create,
    )
    click.echo(token)
    click.echo(f"token {name!r} ({role}) created in database {db.safe_url(settings.db)}", err=True)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@token_group.command("list")
@config_option
@db_option
@_api_flags
@output_options
def token_list(as_json: bool, **flags: Any) -> None:
    """List tokens: name, role, created, last used (to the minute), revoked. The tokens
    themselves are not stored.

    \b
    Example:
      nebula token list -o yaml
    """
    from nebula.cli.output import emit_json, table

    client = _over_api(flags)
    if client is not None:
        found = client.get("/api/v1/tokens")["tokens"]
    else:
        settings = settings_from(**flags)
        rows = _in_transaction(settings, token_store.list_tokens)
        found = [
            {
                "name": t.name,
                "role": t.role,
                "created_at": _iso(t.created_at),
                "last_used_at": _iso(t.last_used_at),
                "revoked_at": _iso(t.revoked_at),
            }
            for t in rows
        ]
    if as_json:
        return emit_json({"tokens": found})
    table(
        [
            (
                t["name"],
                t["role"],
                t["created_at"][:19],
                (t["last_used_at"] or "never")[:19],
                "revoked" if t["revoked_at"] else "active",
            )
            for t in found
        ],
        ["name", "role", "created", "last used", "state"],
    )


@token_group.command("revoke")
@config_option
@db_option
@_api_flags
@click.option("--name", required=True)
def token_revoke(name: str, **flags: Any) -> None:
    """Revoke a token at once.

    \b
    Example:
      nebula token revoke --name grafana
    """
    client = _over_api(flags)
    if client is not None:
        from urllib.parse import quote

        client.call("DELETE", f"/api/v1/tokens/{quote(name, safe='')}")
        click.echo(f"revoked {name}")
        return
    settings = settings_from(**flags)
    now = datetime.now(UTC)
    done = _in_transaction(settings, lambda s: token_store.revoke_token(s, name, now, _actor()))
    if not done:
        raise click.ClickException(f"no active token named {name!r}")
    click.echo(f"revoked {name}")
