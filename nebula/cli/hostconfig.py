"""`nebula host-config`: the Butane or Ignition config that onboards a Flatcar host to Nebula.

Computed here from the flags (nebula.provisioning). Sysext images default to Nebula's own
`/v1/extensions/GROUP` (nebula sysext); with NEBULA_TOKEN set, the SHA-256 of each image promoted
to the group is asked of the admin API (NEBULA_URL) so that the host's first download is
verified. Without a token, or with --offline, nothing is asked and it runs offline. Imports only
click, nebula.config and the pure nebula.provisioning at import time (the API client inside the
lookup), so `nebula --help` stays fast.
"""

from __future__ import annotations

import click

from nebula.config import client_env
from nebula.errors import NebulaError
from nebula.provisioning import (
    REBOOT_STRATEGIES,
    HostSpec,
    build_spec,
    render_butane,
    render_ignition,
)

_SYSEXT_HELP = (
    "A systemd-sysext image kept current by systemd-sysupdate, as NAME=VERSION[:SHA256] "
    "(e.g. kubernetes=v1.31.1); repeatable. Without :SHA256 the hash of an image Nebula hosts "
    "is asked of the admin API when NEBULA_TOKEN is set; otherwise the first image is "
    "downloaded WITHOUT verification."
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
    help="Where NAME/SHA256SUMS and the sysext images are served [default: Nebula's "
    "SERVER/v1/extensions/GROUP, see `nebula sysext`]",
)
@click.option(
    "--offline",
    is_flag=True,
    help="Do not ask the admin API (NEBULA_URL, NEBULA_TOKEN) for the sysext images' hashes",
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
    offline: bool,
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
    if spec.sysext_url is None and not offline:
        spec = _with_hosted_hashes(spec)
    rendered = render_butane(spec) if output == "butane" else render_ignition(spec)
    click.echo(rendered, nl=False)
    for sysext in spec.sysexts:
        if sysext.sha256 is None:
            click.echo(
                f"warning: {sysext.image(spec.arch)} is downloaded without verification "
                f"(give --sysext {sysext.name}={sysext.version}:SHA256)",
                err=True,
            )


def _with_hosted_hashes(spec: HostSpec) -> HostSpec:
    """`spec` with the hashes of the images Nebula serves to its group, from the admin API; as
    it was (with a warning) when there is no token or the API cannot be asked."""
    wanted = [s.image(spec.arch) for s in spec.sysexts if s.sha256 is None]
    env_url, token = client_env()
    if not wanted or not token:
        return spec
    from nebula.cli.client import ApiClient

    try:
        images = ApiClient(env_url or spec.server, token).get("/api/v1/sysext/images")["images"]
    except click.ClickException as exc:
        click.echo(f"warning: sysext hashes not looked up: {exc.format_message()}", err=True)
        return spec
    promoted = {i["file"]: i["sha256"] for i in images if spec.group in i["groups"]}
    for name in wanted:
        if name not in promoted:
            click.echo(
                f"warning: {name} is not promoted to {spec.group} on Nebula: the host cannot "
                f"download it until it is (nebula sysext upload / promote --group {spec.group})",
                err=True,
            )
    return spec.with_hashes(promoted)
