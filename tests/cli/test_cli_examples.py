"""Every `nebula` command's --help ends with an example (issue 9, item 4), and every example
parses: its command exists and takes the options it shows. A new command without an example,
or an option renamed under an example, fails here.
"""

from __future__ import annotations

import re
import shlex
import warnings

import click
import pytest
from click.testing import CliRunner

from nebula.cli.main import COMMANDS, main


def leaves() -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []

    def walk(command: click.Command, path: str) -> None:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}")
        else:
            found.append((path, command))

    for name, entry in COMMANDS.items():
        walk(entry.load(), name)
    return found


def examples(command: click.Command) -> list[list[str]]:
    """The example lines of a command's help, as argument lists (after `nebula`)."""
    text = (command.help or "").split("Example:", 1)
    if len(text) < 2:
        return []
    joined = re.sub(r"\\\s*\n\s*", " ", text[1])  # continued lines
    found = []
    for line in joined.splitlines():
        if "nebula " in line:
            words = shlex.split(line[line.index("nebula ") :], comments=True)
            for stop in (">", ">>", "|", "&&", ";"):  # the shell's, not nebula's
                words = words[: words.index(stop)] if stop in words else words
            words[-1] = words[-1].rstrip(")")  # inside $(...) or <(...)
            found.append(words[1:])
    return found


def _rest(ctx: click.Context) -> list[str]:
    with warnings.catch_warnings():  # click 8.2 deprecates protected_args; 9 folds it into args
        warnings.simplefilter("ignore", DeprecationWarning)
        return [*ctx.protected_args, *ctx.args]


def parse(args: list[str]) -> None:
    """Parse `nebula ARGS` down to its command, as running it would, without running it."""
    ctx = main.make_context("nebula", list(args))
    command: click.Command = main
    rest = _rest(ctx)
    while isinstance(command, click.Group):
        name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None and name is not None, args
        command = sub
        ctx = command.make_context(name, rest, parent=ctx)
        rest = _rest(ctx)


LEAVES = leaves()


def test_the_walk_sees_every_command() -> None:
    assert len(LEAVES) >= 30, [p for p, _ in LEAVES]


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=[p for p, _ in LEAVES])
def test_every_command_shows_an_example_that_parses(path: str, command: click.Command) -> None:
    found = examples(command)
    assert found, f"`nebula {path} --help` has no Example"
    for args in found:
        assert " ".join(args).startswith(path), (path, args)
        try:
            with CliRunner().isolation(input="answer\n" * 4):  # an option that prompts
                parse(args)
        except click.BadParameter as exc:
            # Files an example names need not exist here; anything else is a wrong example.
            if "does not exist" not in str(exc):
                raise
