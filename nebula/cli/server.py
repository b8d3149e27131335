"""`nebula serve`, `nebula db upgrade|current` and `nebula token create|list|revoke`.

These work on the server's own settings and database (not through the API): the first token has
to come from somewhere. Every option is also `NEBULA_<NAME>` in the environment or a key of the
`--config` TOML file.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click

from nebula.config import Settings, load_settings, split_listen
from nebula.errors import NebulaError
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
    "--migrate/--no-migrate",
    default=None,
    help="Migrate the database on start (default on) [NEBULA_MIGRATE]",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="[NEBULA_LOG_LEVEL]",
)
def serve(**flags: Any) -> None:
    """Run the update server."""
    from aiohttp import web

    from nebula.web.app import create_app

    settings = settings_from(**flags)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not settings.public_url:
        logging.getLogger("nebula").warning(
            "no --public-url: hosts will be sent payload URLs under %s", settings.base_url
        )
    try:
        app = create_app(settings)
    except NebulaError as exc:
        raise click.ClickException(str(exc)) from None
    sockets = [_bind(settings.listen)]
    where = f"http://{settings.listen}"
    if settings.admin_listen:
        sockets.append(_bind(settings.admin_listen))
        where += f", admin API and /metrics only on http://{settings.admin_listen}"
    click.echo(f"nebula listening on {where} (database {_safe(settings.db)})")
    web.run_app(app, sock=sockets, print=None, access_log_format='%a "%r" %s %b %Tfs')


def _bind(listen: str) -> socket.socket:
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host or "0.0.0.0", port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on {listen}: {exc.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _safe(url: str) -> str:
    try:
        return db.normalize_url(url).render_as_string(hide_password=True)
    except NebulaError:
        return "?"


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
    """Migrate the database to the newest schema."""
    settings = settings_from(**flags)

    async def work(engine: Any) -> str | None:
        await db.upgrade(engine)
        return await db.current_revision(engine)

    click.echo(f"database at revision {_run_db(settings, work)}")


@db_group.command("current")
@config_option
@db_option
def db_current(**flags: Any) -> None:
    """Show the database's schema revision and the newest one."""
    settings = settings_from(**flags)
    current = _run_db(settings, db.current_revision)
    click.echo(f"database: {current or 'empty'}; newest: {db.head_revision()}")


@click.group("token")
def token_group() -> None:
    """Admin API tokens (works on the database directly)."""


def _in_transaction(settings: Settings, work: Callable[[Any], Any]) -> Any:
    async def run(engine: Any) -> Any:
        if settings.migrate:
            await db.upgrade(engine)
        async with db.transaction(db.session_factory(engine)) as session:
            return await work(session)

    return _run_db(settings, run)


@token_group.command("create")
@config_option
@db_option
@click.option("--name", required=True, help="Who or what uses the token")
@click.option("--role", type=click.Choice(token_store.ROLES), default="admin", show_default=True)
def token_create(name: str, role: str, **flags: Any) -> None:
    """Create a token and print it (once: only its hash is kept)."""
    settings = settings_from(**flags)
    now = datetime.now(UTC)
    token = _in_transaction(settings, lambda s: token_store.create_token(s, name, role, now))
    click.echo(token)


@token_group.command("list")
@config_option
@db_option
def token_list(**flags: Any) -> None:
    """List tokens (names and roles; the tokens themselves are not stored)."""
    from nebula.cli.output import table

    settings = settings_from(**flags)
    rows = _in_transaction(settings, token_store.list_tokens)
    table(
        [
            (
                t.name,
                t.role,
                t.created_at.isoformat(timespec="seconds"),
                "revoked" if t.revoked_at else "active",
            )
            for t in rows
        ],
        ["name", "role", "created", "state"],
    )


@token_group.command("revoke")
@config_option
@db_option
@click.option("--name", required=True)
def token_revoke(name: str, **flags: Any) -> None:
    """Revoke a token at once."""
    settings = settings_from(**flags)
    now = datetime.now(UTC)
    if not _in_transaction(settings, lambda s: token_store.revoke_token(s, name, now)):
        raise click.ClickException(f"no active token named {name!r}")
    click.echo(f"revoked {name}")
