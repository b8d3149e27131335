"""Every printing command's output formats, exit codes and shell completion (issue 9, item 4),
the real `nebula` against a real server on a real socket.

`-o json` and `-o yaml` must say the same thing (YAML read back with PyYAML), `--json` is
`-o json`, `-o wide` has more columns than the table; exit codes are 0 done, 1 failed (the
server refused, or cannot be reached), 2 a usage mistake; `nebula completion SHELL` prints a
script for each shell, and the completion protocol it uses answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import aiohttp
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from nebula.cli.output import to_yaml
from tests.cli.runner import nebula, ok
from tests.conftest import free_port
from tests.factories import Host

NEW = "4152.2.3"
MACHINE = "1" * 32
FILE = f"flatcar_production_update.gz:100:{'a' * 40}:{'b' * 64}"
AMD64 = ["stable", "--arch", "amd64"]

# Commands that only read: their json, yaml and --json answers must be equal.
READS: list[list[str]] = [
    ["package", "list"],
    ["channel", "list"],
    ["group", "list"],
    ["group", "show", *AMD64],
    ["instance", "list"],
    ["instance", "show", MACHINE],
    ["event", "list"],
    ["activity", "list"],
    ["token", "list"],  # over the API: NEBULA_URL and NEBULA_TOKEN are set
    ["policy", "show", *AMD64],
    ["rollout", "status", *AMD64],
    ["rollout", "activity", *AMD64],
]
# Commands that change something (each run is another change): the same keys in each format.
WRITES: list[list[str]] = [
    ["channel", "set", *AMD64, "--version", NEW],
    ["instance", "hold", MACHINE],
    ["instance", "release", MACHINE],
    ["instance", "set", MACHINE, "--alias", "web-1"],
    ["policy", "set", *AMD64, "--percentage", "50"],
    ["rollout", "pause", *AMD64, "--reason", "test"],
    ["rollout", "resume", *AMD64],
]
# List commands with extra columns under -o wide.
WIDE = [
    ["package", "list"],
    ["channel", "list"],
    ["group", "list"],
    ["instance", "list"],
    ["event", "list"],
    ["activity", "list"],
]


async def _setup(server: str, token: str) -> dict[str, str]:
    env = {"NEBULA_URL": server, "NEBULA_TOKEN": token}
    add = ["package", "add", "--url", "https://cdn.example/", "--version", NEW]
    ok(await nebula([*add, "--arch", "amd64", "--file", FILE], **env))
    check = Host(machine_id=MACHINE).check()
    async with aiohttp.ClientSession() as http, http.post(f"{server}/v1/update/", data=check) as r:
        assert r.status == 200
    return env


async def run(args: list[str], env: dict[str, str]) -> str:
    return ok(await nebula(args, **env))


async def test_json_and_yaml_say_the_same(server: str, admin_token: str, db_url: str) -> None:
    """Catches a command without -o or --json, a YAML writer that loses or changes a value
    (a version read back as a number, a null as a string), and --json that is not -o json."""
    env = await _setup(server, admin_token)
    for args in [*READS, ["token", "list", "--db", db_url]]:
        as_json = json.loads(await run([*args, "-o", "json"], env))
        assert as_json, args
        assert yaml.safe_load(await run([*args, "-o", "yaml"], env)) == as_json, args
        assert json.loads(await run([*args, "--json"], env)) == as_json, args
        table = await run(args, env)
        with pytest.raises(ValueError):
            json.loads(table)  # the default is for people
    for args in WRITES:
        as_json = json.loads(await run([*args, "-o", "json"], env))
        as_yaml = yaml.safe_load(await run([*args, "-o", "yaml"], env))
        # (a second pause answers also `message`: it changed nothing)
        assert isinstance(as_yaml, dict) and set(as_json) <= set(as_yaml), args


async def test_wide_has_more_columns(server: str, admin_token: str) -> None:
    env = await _setup(server, admin_token)
    for args in WIDE:
        narrow = (await run(args, env)).splitlines()[0].split()
        wide = (await run([*args, "-o", "wide"], env)).splitlines()[0].split()
        assert wide[: len(narrow)] == narrow and len(wide) > len(narrow), (args, wide)


async def test_package_delete_prints_each_format(server: str, admin_token: str) -> None:
    env = await _setup(server, admin_token)
    packages = json.loads(await run(["package", "list", "-o", "json"], env))["packages"]
    out = await run(["package", "delete", packages[0]["id"], "-o", "yaml"], env)
    assert yaml.safe_load(out) == {"id": packages[0]["id"], "deleted": True}


async def test_exit_codes(server: str, admin_token: str) -> None:
    """0 done, 1 failed (with the server's reason on one line), 2 a usage mistake."""
    env = await _setup(server, admin_token)
    assert (await nebula(["channel", "list"], **env)).exit_code == 0
    refused = await nebula(["group", "show", "nosuch"], **env)
    assert refused.exit_code == 1, refused.output
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "404" in lines[0] and "nosuch" in lines[0], refused.output
    gone = f"http://127.0.0.1:{free_port()}"
    down = await nebula(["channel", "list"], NEBULA_URL=gone, NEBULA_TOKEN=admin_token)
    assert down.exit_code == 1 and "cannot reach" in down.output, down.output
    for args, extra in [
        (["package", "list", "--arch", "sparc"], env),
        (["channel", "list", "-o", "xml"], env),
        (["channel", "list", "--json", "-o", "yaml"], env),
        (["channel", "list"], {"NEBULA_URL": server}),  # no token
        (["group", "nosuch-verb"], env),
        (["completion", "tcsh"], env),
    ]:
        result = await nebula(args, **extra)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output


def _complete(shell: str, words: str, cword: int) -> str:
    env = {
        **os.environ,
        "_NEBULA_COMPLETE": f"{shell}_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(cword) if shell != "fish" else words.split()[-1],
    }
    done = subprocess.run(
        [sys.executable, "-c", "from nebula.cli.main import main; main(prog_name='nebula')"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(
    ("shell", "marker"),
    [("bash", "complete -o nosort -F"), ("zsh", "#compdef nebula"), ("fish", "complete ")],
)
async def test_completion_scripts_and_answers(shell: str, marker: str) -> None:
    """Catches a missing shell, a script that does not call back with _NEBULA_COMPLETE, and a
    lazy group that cannot complete its commands, their subcommands or an option's choices."""
    result = await nebula(["completion", shell])
    assert result.exit_code == 0, result.output
    assert marker in result.output and "_NEBULA_COMPLETE" in result.output
    assert "package" in _complete(shell, "nebula pack", 1)
    assert "list" in _complete(shell, "nebula package li", 2)
    choices: Any = _complete(shell, "nebula package list -o ", 4)
    if shell != "fish":  # fish sends the word being completed, here none
        assert all(f in choices for f in ("json", "yaml", "wide")), choices


# Strings a YAML reader takes for something else when written plain.
YAML_TRAPS = [
    "null",
    "Yes",
    "off",
    "~",
    "true",
    "1.0",
    "0x1f",
    "a: b",
    " x",
    "-x",
    "#c",
    "4152.2.3",
]
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.sampled_from(YAML_TRAPS),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(JSON_VALUES)
def test_yaml_reads_back_as_the_json_it_came_from(data: Any) -> None:
    """Catches a string written plain that YAML reads as something else ("null", "yes", "1.0",
    "a: b", a leading space), an escape YAML does not know, and a float read back as text."""
    assert yaml.safe_load(to_yaml(data)) == data
