"""The `nebula` command: the server's own commands and the operator's API commands.

Each command is imported only when it runs (nebula.cli.lazy): the API commands' --help must
not pay for the server, SQLAlchemy or the benchmark. Add a command to COMMANDS, not as an
import here.
"""

from __future__ import annotations

import click

from nebula import __version__
from nebula.cli.lazy import Lazy, LazyGroup

COMMANDS = {
    "serve": Lazy("nebula.cli.server:serve", "Run the update server."),
    "db": Lazy("nebula.cli.server:db_group", "Database schema."),
    "token": Lazy(
        "nebula.cli.server:token_group",
        "Admin API tokens, on the database (--db) or over the API (--server, a context).",
    ),
    "package": Lazy("nebula.cli.catalog:package_group", "Update payloads."),
    "app": Lazy("nebula.cli.apps:app_group", "Applications: the Omaha app ids Nebula serves."),
    "channel": Lazy(
        "nebula.cli.catalog:channel_group",
        "Channels: which version each channel offers.",
        also=("nebula.cli.catalog_verbs",),
    ),
    "group": Lazy(
        "nebula.cli.catalog:group_group",
        "Groups of hosts (a track on an architecture) and their channel.",
        also=("nebula.cli.catalog_verbs",),
    ),
    "instance": Lazy("nebula.cli.instances:instance_group", "Hosts and their update state."),
    "event": Lazy("nebula.cli.eventlog:event_group", "The events hosts sent."),
    "activity": Lazy(
        "nebula.cli.eventlog:activity_group",
        "The activity log: who changed what, across every group.",
    ),
    "sample-payload": Lazy(
        "nebula.cli.sample:sample_payload",
        "Write a signing key pair and payloads signed with it into OUT.",
    ),
    "bench": Lazy(
        "nebula.cli.bench:bench",
        "Measure update checks, grants, events and pings against a ceiling from the same run.",
    ),
    "simulate": Lazy(
        "nebula.cli.simulate:simulate",
        "Run a simulated fleet of Flatcar hosts through real update cycles against an Omaha "
        "server.",
    ),
    "policy": Lazy("nebula.cli.rollout:policy_group", "A group's rollout rules."),
    "rollout": Lazy(
        "nebula.cli.rollout:rollout_group", "Follow, pause and resume a group's rollout."
    ),
    "context": Lazy(
        "nebula.cli.contexts:context_group",
        "Named servers and tokens, so that commands need no --server, --token or NEBULA_*.",
    ),
    "completion": Lazy(
        "nebula.cli.completion:completion",
        "Print the shell completion script for SHELL (bash, zsh or fish).",
    ),
    "host-config": Lazy(
        "nebula.cli.hostconfig:host_config",
        "Print a host config that points a Flatcar host at Nebula (update.conf and the rest).",
    ),
    "sysext": Lazy(
        "nebula.cli.sysext:sysext_group",
        "systemd-sysext images that hosts' systemd-sysupdate fetches from Nebula.",
    ),
}


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="nebula")
def main() -> None:
    """Nebula: an update server for Flatcar Container Linux."""
