"""`nebula simulate`: the command line of the simulated fleet in nebula.loadtest.simulate.

Light on purpose: the CLI imports this module at every start, so it imports only click and the
standard library; the simulator (aiohttp, lxml) is imported when the command runs. The bounds
of the options are checked again, with the same messages, by simulate.Options.
"""

from __future__ import annotations

import json
import sys

import click


@click.command("simulate")
@click.option(
    "--url",
    required=True,
    help="The server's Omaha URL, POSTed to exactly as given, as hosts do with SERVER= "
    "(e.g. http://127.0.0.1:8000/v1/update/).",
)
@click.option(
    "--hosts",
    type=click.IntRange(1, 10_000),
    default=100,
    show_default=True,
    help="Simulated hosts.",
)
@click.option(
    "--duration",
    type=click.FloatRange(0.1, 3600),
    default=300.0,
    show_default=True,
    help="Longest run, in seconds (it ends earlier once settled or stalled).",
)
@click.option(
    "--check-interval",
    type=click.FloatRange(0.01, 3600),
    default=2.0,
    show_default=True,
    help="Seconds between a host's update checks (update_engine: 45 minutes), jittered.",
)
@click.option(
    "--reboot-delay",
    type=click.FloatRange(0, 3600),
    default=3.0,
    show_default=True,
    help="Seconds an installed update waits for its reboot, pinging meanwhile.",
)
@click.option(
    "--version",
    "version",
    default="3815.2.0",
    show_default=True,
    help="The version every host runs at the start.",
)
@click.option("--group", default="stable", show_default=True, help="The track hosts send.")
@click.option("--arch", type=click.Choice(["amd64", "arm64"]), default="amd64", show_default=True)
@click.option(
    "--download",
    type=click.Choice(["full", "range"]),
    default="full",
    show_default=True,
    help="full: fetch each payload and check its size and SHA-256 (resuming with Range after a "
    "cut); range: fetch only its first and last 64 KiB, each with a Range header.",
)
@click.option(
    "--expect-version",
    default=None,
    help="Stop once every host runs this version, and fail unless all reached it.",
)
@click.option(
    "--stall-checks",
    type=click.IntRange(0, 1000),
    default=0,
    show_default=True,
    help="Stop once no host is updating and every host got this many noupdate answers since "
    "the rollout last moved (0: never).",
)
@click.option(
    "--fail-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of hosts whose every download fails (reported as 3/0, error 9).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Draws machine and boot ids.")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 1000),
    default=100,
    show_default=True,
    help="Requests under way at once, at most.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 600),
    default=10.0,
    show_default=True,
    help="Seconds an Omaha request (or a stalled payload read) may take.",
)
@click.option(
    "--progress-every",
    type=click.FloatRange(0.1, 3600),
    default=5.0,
    show_default=True,
    help="Seconds between progress lines.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the summary as one JSON document (progress lines go to stderr).",
)
def simulate(
    url: str,
    hosts: int,
    duration: float,
    check_interval: float,
    reboot_delay: float,
    version: str,
    group: str,
    arch: str,
    download: str,
    expect_version: str | None,
    stall_checks: int,
    fail_rate: float,
    seed: int,
    concurrency: int,
    timeout: float,
    progress_every: float,
    as_json: bool,
) -> None:
    """Run a simulated fleet of Flatcar hosts through real update cycles against an Omaha server.

    Each host checks, downloads what it is offered, sends 13/1, 14/1, 3/1, pings until its
    reboot, reboots into the new version and reports it, at compressed time; it speaks only
    Omaha and payload GETs, so any Omaha server will do. Prints progress, then hosts by state
    and version, grants, completions, reported error codes, request latency and protocol
    errors. Exits 1 on protocol errors, when no check was answered, or when --expect-version
    was not reached by every host (but those made to fail).


    \b
    Example:
      nebula simulate --url http://127.0.0.1:8000/v1/update/ --hosts 100 --expect-version 4152.2.3
    """
    from nebula.loadtest.simulate import Options, OptionsError, run

    try:
        options = Options(
            url=url,
            hosts=hosts,
            duration=duration,
            check_interval=check_interval,
            reboot_delay=reboot_delay,
            version=version,
            group=group,
            arch=arch,
            download=download,
            expect_version=expect_version,
            stall_checks=stall_checks,
            fail_rate=fail_rate,
            seed=seed,
            concurrency=concurrency,
            timeout=timeout,
            progress_every=progress_every,
        )
    except OptionsError as exc:
        raise click.UsageError(str(exc)) from None

    def emit(line: str) -> None:
        click.echo(line, err=as_json)

    try:
        report = run(options, emit)
    except KeyboardInterrupt:
        raise click.Abort() from None
    if as_json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for line in report.summary():
            click.echo(line)
    if not report.ok:
        sys.exit(1)
