"""LazyGroup: a click group whose subcommands are imported when they are run, not when the
group is built.

`nebula --help` lists every command from a table (name, where it lives, its one-line help)
without importing a single command module; `nebula package list` imports the package commands
and what they need, nothing of the server. tests/cli/test_cli_startup.py checks that each table
line still names the command's real help, and that an API command's --help pulls in no server
code. Imports only click: this module is loaded by every `nebula` invocation.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click
from click.shell_completion import CompletionItem


@dataclass(frozen=True, slots=True)
class Lazy:
    """Where a command lives ("package.module:attribute") and its one-line help.

    `also` names modules that add subcommands to it (e.g. `instance hold` lives with the
    rollout commands): imported with it, or those would be missing.
    """

    target: str
    summary: str
    also: tuple[str, ...] = ()

    def load(self) -> click.Command:
        module_name, _, attribute = self.target.partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        for extra in self.also:
            importlib.import_module(extra)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.target} is not a click command")
        return command


class LazyGroup(click.Group):
    def __init__(self, *args: Any, lazy: dict[str, Lazy] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            self.add_command(self.lazy[cmd_name].load(), cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from the table, so that the group's help imports nothing."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows: Sequence[tuple[str, str]] = [
            (name, self._summary(ctx, name, limit)) for name in names
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        """Command names from the table (completing `nebula <TAB>` imports no command), then
        the group's own options."""
        items = [
            CompletionItem(name, help=self._summary(ctx, name, 45))
            for name in self.list_commands(ctx)
            if name.startswith(incomplete)
        ]
        return items + click.Command.shell_complete(self, ctx, incomplete)

    def _summary(self, ctx: click.Context, name: str, limit: int) -> str:
        if name in self.lazy and name not in self.commands:
            return _shorten(self.lazy[name].summary, limit)
        command = super().get_command(ctx, name)
        return command.get_short_help_str(limit) if command is not None else ""


def _shorten(text: str, limit: int) -> str:
    """`text` cut at a word to fit `limit` columns, as click cuts a command's help."""
    if len(text) <= limit:
        return text
    if limit < 3:
        return "..."
    import textwrap  # only when a line is cut

    return textwrap.shorten(text, limit, placeholder="...", break_on_hyphens=False)
