"""`nebula bench`: the command line of the benchmark in nebula.loadtest.bench.

Light on purpose: the CLI imports this module at every start, so it imports only click and the
standard library; the benchmark (database, crypto, aiohttp) is imported when the command runs.
"""

from __future__ import annotations

import shutil

import click

# Kept here (not imported from nebula.loadtest.workload) so that `nebula --help` stays light;
# tests/test_bench.py checks the two agree.
PHASES = (
    "steady",
    "first-seen",
    "grant",
    "grant-limited",
    "grant-known",
    "grant-known-limited",
    "events",
    "ping",
)


def _phases(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    unknown = [n for n in names if n not in PHASES]
    if unknown or not names:
        raise click.BadParameter(f"choose from {', '.join(PHASES)} (comma-separated)")
    return names


def _db(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.startswith(("postgresql://", "postgresql+asyncpg://")):
        raise click.BadParameter(
            "give a PostgreSQL server (postgresql://USER@HOST/DB): the bench creates and drops "
            "a database of its own there; without --db it uses a temporary SQLite file"
        )
    return value


@click.command("bench")
@click.option(
    "--db",
    "db_url",
    callback=_db,
    help="A PostgreSQL server to run on, as postgresql://USER@HOST/DB: the bench creates a "
    "database nebula_bench_<id> there and drops it at the end (DB is only used to connect). "
    "Default: a temporary SQLite file.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Processes of nebula serve (--workers) and of the ceiling.",
)
@click.option(
    "--connections",
    type=click.IntRange(1, 1000),
    default=32,
    show_default=True,
    help="Connections the generator keeps open.",
)
@click.option(
    "--duration",
    type=click.IntRange(1, 600),
    default=10,
    show_default=True,
    help="Seconds of load per phase, on each server.",
)
@click.option(
    "--hosts",
    type=click.IntRange(1, 1_000_000),
    default=100_000,
    show_default=True,
    help="Known current hosts written into the database before the run; as many idle hosts "
    "on an old version for each grant-known phase, which grants each at most once.",
)
@click.option(
    "--phases",
    "phase_names",
    default=",".join(PHASES),
    show_default=True,
    callback=_phases,
    help="Which phases to run, comma-separated.",
)
@click.option(
    "--generator",
    type=click.Choice(["wrk", "python"]),
    default=None,
    help="The load generator: wrk (Debian's) or Nebula's own. Default: wrk when installed.",
)
def bench(
    db_url: str | None,
    workers: int,
    connections: int,
    duration: int,
    hosts: int,
    phase_names: tuple[str, ...],
    generator: str | None,
) -> None:
    """Measure update checks, grants, events and pings against a ceiling from the same run.

    The ceiling is a bare aiohttp process answering a constant noupdate; both servers get the
    same load from a generator in processes of their own, on 127.0.0.1.


    \b
    Example:
      nebula bench
    """
    from nebula.loadtest.bench import Options, report, run

    options = Options(
        db=db_url,
        workers=workers,
        connections=connections,
        duration=duration,
        hosts=hosts,
        phases=phase_names,
        generator=generator or ("wrk" if shutil.which("wrk") else "python"),
    )
    try:
        rows = run(options, click.echo)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    for line in report(rows):
        click.echo(line)
    failed = sum(r.ceiling.errors + r.nebula.errors for r in rows)
    if failed:
        raise click.ClickException(f"{failed} requests failed or got an unexpected answer")
