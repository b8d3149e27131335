"""`nebula host-config`: the Butane or Ignition config that onboards a Flatcar host to Nebula.

Computed here from the flags (nebula.provisioning), without asking the server anything: it
runs offline, and the group is not checked against a server. Imports only click, nebula.config
and the pure nebula.provisioning, so `nebula --help` stays fast.
"""

from __future__ import annotations

import click

from nebula.config import client_env
from nebula.errors import NebulaError
from nebula.provisioning import REBOOT_STRATEGIES, build_spec, render_butane, render_ignition

_SYSEXT_HELP = (
    "A systemd-sysext image kept current by systemd-sysupdate, as NAME=VERSION[:SHA256] "
    "(e.g. kubernetes=v1.31.1); repeatable. Without :SHA256 the first image is downloaded "
    "WITHOUT verification (Nebula does not host sysext images yet, so it cannot supply the "
    "hash): give the SHA-256 of NAME-VERSION-ARCH.raw whenever you have it."
)


@click.command("host-config")
@click.option("--group", required=True, help="The group (its track) the host updates from")
@click.option(
    "--server",
    "url",
    help="Nebula's public URL as hosts reach it, e.g. https://updates.example.com [NEBULA_URL]",
)
@click.option(
    "--arch",
    type=click.Choice(["amd64", "arm64"]),
    default="amd64",
    show_default=True,
    help="The host's architecture (names the sysext images it downloads)",
)
@click.option(
    "--alias-from-hostname",
    is_flag=True,
    help="Report the host name as MACHINE_ALIAS (rewritten each time update_engine starts)",
)
@click.option(
    "--reboot-strategy", type=click.Choice(REBOOT_STRATEGIES), help="locksmithd's strategy"
)
@click.option(
    "--reboot-window", metavar='"DAY HH:MM"', help='When reboots may start, e.g. "Thu 04:00"'
)
@click.option("--reboot-window-length", metavar="DURATION", help="How long the window is, e.g. 1h")
@click.option(
    "--extension",
    "extensions",
    multiple=True,
    metavar="NAME",
    help="A Flatcar extension to enable (podman, zfs, python, ...); repeatable",
)
@click.option(
    "--sysext", "sysexts", multiple=True, metavar="NAME=VERSION[:SHA256]", help=_SYSEXT_HELP
)
@click.option(
    "--sysext-url",
    metavar="URL",
    help="Where NAME/SHA256SUMS and the sysext images are served [default: SERVER/v1/extensions/"
    "GROUP, which Nebula does not serve yet: until it does, point this at your image host]",
)
@click.option(
    "--release-server",
    is_flag=True,
    help="Add the kernel argument flatcar.release_file_server_url=SERVER/v1/release, so "
    "first-boot extensions come from Nebula (Flatcar Alpha 4515+, Stable 4593+)",
)
@click.option(
    "-o",
    "--output",
    type=click.Choice(["butane", "ignition"]),
    default="butane",
    show_default=True,
    help="Butane YAML to review and keep, or the Ignition JSON a host boots with",
)
def host_config(
    group: str,
    url: str | None,
    arch: str,
    alias_from_hostname: bool,
    reboot_strategy: str | None,
    reboot_window: str | None,
    reboot_window_length: str | None,
    extensions: tuple[str, ...],
    sysexts: tuple[str, ...],
    sysext_url: str | None,
    release_server: bool,
    output: str,
) -> None:
    """Print a host config that points a Flatcar host at Nebula (update.conf and the rest).

    \b
    Example:
      nebula host-config --group canary --server https://updates.example.com -o ignition
    """
    server = url or client_env()[0]
    if not server:
        raise click.UsageError("give --server (Nebula's URL as hosts reach it) or set NEBULA_URL")
    try:
        spec = build_spec(
            group=group,
            server=server,
            arch=arch,
            alias_from_hostname=alias_from_hostname,
            reboot_strategy=reboot_strategy,
            reboot_window=reboot_window,
            reboot_window_length=reboot_window_length,
            extensions=extensions,
            sysexts=sysexts,
            sysext_url=sysext_url,
            release_server=release_server,
        )
    except NebulaError as exc:
        raise click.UsageError(str(exc)) from None
    rendered = render_butane(spec) if output == "butane" else render_ignition(spec)
    click.echo(rendered, nl=False)
    for sysext in spec.sysexts:
        if sysext.sha256 is None:
            click.echo(
                f"warning: {sysext.image(spec.arch)} is downloaded without verification "
                f"(give --sysext {sysext.name}={sysext.version}:SHA256)",
                err=True,
            )
    if spec.sysexts and spec.sysext_url is None:
        click.echo(
            f"warning: Nebula does not serve sysext images yet; {spec.sysext_base}/ must be "
            "served by something else (or use --sysext-url), or the host's first boot fails",
            err=True,
        )
