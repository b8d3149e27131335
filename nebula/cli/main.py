"""The `nebula` command: the server's own commands and the operator's API commands."""

from __future__ import annotations

import click

from nebula import __version__
from nebula.cli.bench import bench
from nebula.cli.catalog import channel_group, group_group, instance_group, package_group
from nebula.cli.hostconfig import host_config
from nebula.cli.rollout import policy_group, rollout_group
from nebula.cli.sample import sample_payload
from nebula.cli.server import db_group, serve, token_group
from nebula.cli.simulate import simulate
from nebula.cli.sysext import sysext_group


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="nebula")
def main() -> None:
    """Nebula: an update server for Flatcar Container Linux."""


for command in (
    serve,
    db_group,
    token_group,
    package_group,
    channel_group,
    group_group,
    instance_group,
    sample_payload,
    bench,
    simulate,
    policy_group,
    rollout_group,
    host_config,
    sysext_group,
):
    main.add_command(command)
