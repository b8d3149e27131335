"""The CLI starts fast (issue 9): the operator's API commands answer --help without importing the
server, SQLAlchemy, lxml or aiohttp's server, and `nebula --help` imports no command at all.

Each check runs in a fresh interpreter (`python -c`), since this test process has long imported
everything. Modules are counted, not timed: a timing would fail on a loaded machine, an import
of SQLAlchemy fails everywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from nebula.cli.main import COMMANDS, main

API_COMMANDS = (
    "app",
    "package",
    "channel",
    "group",
    "instance",
    "event",
    "activity",
    "policy",
    "rollout",
    "host-config",
    "completion",
    "context",
)
HEAVY = ("sqlalchemy", "aiohttp.web", "lxml", "nebula.web", "nebula.store", "alembic")
# What one API command's --help may load: the interpreter, click and a few pure nebula modules
# (about 190 today). The server's import is over 900, aiohttp's client alone about 130.
MODULE_BUDGET = 260

_PROBE = """
import contextlib, io, json, sys
from nebula.cli.main import main
HEAVY = {heavy!r}

def help_of(args):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        main(list(args) + ["--help"], standalone_mode=False, prog_name="nebula")
    assert "Usage: nebula" in out.getvalue(), out.getvalue()

help_of([])
top = sorted(m for m in sys.modules if m.startswith("nebula.cli.") and m not in
             ("nebula.cli.main", "nebula.cli.lazy"))
counts = {{}}
for name in {commands!r}:
    help_of([name])
    ctx = main.make_context("nebula", [name, "--help"], resilient_parsing=True)
    command = main.get_command(ctx, name)
    for sub in getattr(command, "commands", {{}}):
        help_of([name, sub])
    counts[name] = len(sys.modules)
print(json.dumps({{"top": top, "counts": counts,
                  "heavy": sorted(m for m in sys.modules if m.split(".")[0] in HEAVY
                                  or any(m == h or m.startswith(h + ".") for h in HEAVY))}}))
"""


def probe(code: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_api_commands_help_imports_no_server_code() -> None:
    """Catches a module-level import of the server, the store or SQLAlchemy (directly or through
    a helper) in any API command's module, and a `nebula --help` that imports the commands."""
    found = probe(_PROBE.format(heavy=HEAVY, commands=API_COMMANDS))
    assert found["top"] == [], found["top"]
    assert found["heavy"] == [], found["heavy"]
    counts = found["counts"]
    assert isinstance(counts, dict) and set(counts) == set(API_COMMANDS)
    assert max(counts.values()) < MODULE_BUDGET, counts


def test_the_probe_sees_a_heavy_import() -> None:
    """The probe itself can fail: a command module that imports SQLAlchemy is seen doing so."""
    code = _PROBE.format(heavy=HEAVY, commands=("package",))
    code = code.replace("help_of([])", "import sqlalchemy.orm\nhelp_of([])", 1)
    found = probe(code)
    assert "sqlalchemy.orm" in found["heavy"], found  # type: ignore[operator]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_table_matches_each_command(name: str) -> None:
    """The one-line help `nebula --help` shows from the table is the command's own, and a group
    loaded alone has every subcommand it has with all modules loaded (catches a module that adds
    subcommands to a group without being named in `also`, like `instance hold`)."""
    for entry in COMMANDS.values():
        entry.load()

    command = COMMANDS[name].load()
    assert command.name == name
    assert command.get_short_help_str(10_000) == COMMANDS[name].summary
    full = sorted(getattr(command, "commands", {}))
    alone = probe(
        "import json; from nebula.cli.main import main\n"
        f"ctx = main.make_context('nebula', [{name!r}, '--help'], resilient_parsing=True)\n"
        f"print(json.dumps({{'subs': sorted(getattr(main.get_command(ctx, {name!r}), "
        "'commands', {}))}))"
    )
    assert alone["subs"] == full


def test_the_lazy_help_is_the_eager_one() -> None:
    """`nebula --help` from the table reads exactly as click prints it with every command
    loaded: catches a command missing from the listing or a line cut differently."""
    lazy = subprocess.run(
        [
            sys.executable,
            "-c",
            "from nebula.cli.main import main; main(['--help'], prog_name='nebula')",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "100"},
    )
    eager = click.Group(
        "nebula",
        callback=main.callback,
        params=main.params,
        help=main.help,
        context_settings={**main.context_settings, "terminal_width": 98},
        commands={name: entry.load() for name, entry in COMMANDS.items()},
    )
    # COLUMNS=100 in the child makes click's width 98 (it keeps two columns free): the same here.
    expected = CliRunner().invoke(eager, ["--help"], prog_name="nebula").output
    assert lazy.stdout == expected
    assert len(COMMANDS) >= 13 and all(f"  {name} " in expected for name in COMMANDS)
