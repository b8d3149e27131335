"""`nebula completion bash|zsh|fish`: the shell completion script, from click's own.

Source it (`source <(nebula completion bash)`, or save it where your shell loads completions):
the shell then asks `nebula` itself what may come next, with _NEBULA_COMPLETE set. Imports only
click.
"""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_NEBULA_COMPLETE"


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish).

    \b
    Example:
      source <(nebula completion bash)          # this shell
      nebula completion fish > ~/.config/fish/completions/nebula.fish
    """
    ctx = click.get_current_context()
    root = ctx.find_root().command
    cls = get_completion_class(shell)
    if cls is None:  # click knows every name in SHELLS; kept for a click without one
        raise click.UsageError(f"no completion for {shell}")
    click.echo(cls(root, {}, "nebula", COMPLETE_VAR).source())
