"""`nebula context add|use|list|delete` and how the API client picks its server and token
(issue 9, item 4): the real CLI against a real server, each test with its own config file.
"""

from __future__ import annotations

import json
import stat
import tomllib
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from nebula.cli.contexts import Context, Contexts, dumps
from nebula.config import cli_config_path
from tests.cli.runner import nebula, ok
from tests.conftest import free_port


async def test_a_context_stands_in_for_url_and_token(
    server: str, admin_token: str, viewer_token: str, tmp_path: Path
) -> None:
    """Catches a context that is not used, a token written where others may read it or shown
    by `list`, a context's token sent to another server, and NEBULA_CONTEXT not honoured."""
    config = tmp_path / "cfg" / "config.toml"
    env = {"NEBULA_CLI_CONFIG": str(config)}
    out = ok(
        await nebula(["context", "add", "prod", "--server", server, "--token", admin_token], **env)
    )
    assert "prod (current)" in out
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    ok(await nebula(["context", "add", "view", "--server", server, "--token", viewer_token], **env))
    # No --server, --token or NEBULA_*: the current context's.
    assert "stable" in ok(await nebula(["channel", "list"], **env))
    listed = json.loads(ok(await nebula(["context", "list", "-o", "json"], **env)))
    assert listed == {
        "contexts": [
            {"name": "prod", "url": server, "current": True},
            {"name": "view", "url": server, "current": False},
        ]
    }
    table = ok(await nebula(["context", "list"], **env))
    assert admin_token not in table and viewer_token not in table
    # The viewer context may read, not write: NEBULA_CONTEXT picks it for one command.
    refused = await nebula(
        ["group", "create", "x", "--arch", "amd64", "--channel", "stable"],
        NEBULA_CONTEXT="view",
        **env,
    )
    assert refused.exit_code == 1 and "403" in refused.output, refused.output
    ok(await nebula(["context", "use", "view"], **env))
    assert "* " in ok(await nebula(["context", "list"], **env)).splitlines()[2]
    # Another server (by flag or NEBULA_URL) never receives the context's token.
    elsewhere = f"http://127.0.0.1:{free_port()}"
    for extra, args in [({"NEBULA_URL": elsewhere}, []), ({}, ["--server", elsewhere])]:
        result = await nebula(["channel", "list", *args], **extra, **env)
        assert result.exit_code == 2 and "no token" in result.output, result.output
    # The environment wins over the context.
    result = await nebula(
        ["group", "create", "y", "--arch", "amd64", "--channel", "stable"],
        NEBULA_URL=server,
        NEBULA_TOKEN=admin_token,
        **env,
    )
    assert result.exit_code == 0, result.output
    ok(await nebula(["context", "delete", "view"], **env))
    assert "view" not in tomllib.loads(config.read_text())["contexts"]


async def test_context_mistakes_are_one_clear_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    env = {"NEBULA_CLI_CONFIG": str(config)}
    result = await nebula(["context", "use", "nosuch"], **env)
    assert result.exit_code == 1 and "no context 'nosuch'" in result.output
    result = await nebula(
        ["context", "add", "x", "--server", "127.0.0.1:8000", "--token", "t"], **env
    )
    assert result.exit_code == 1 and "http://" in result.output and not config.exists()
    config.write_text("current = [")
    result = await nebula(["channel", "list"], **env)
    assert result.exit_code == 1 and str(config) in result.output, result.output
    assert "Traceback" not in result.output
    config.write_text('current = "gone"\n')
    result = await nebula(["channel", "list"], **env)
    assert result.exit_code == 1 and "'gone'" in result.output


def test_config_path_follows_xdg() -> None:
    assert cli_config_path({"NEBULA_CLI_CONFIG": "/a/b.toml"}) == Path("/a/b.toml")
    assert cli_config_path({"XDG_CONFIG_HOME": "/x", "HOME": "/h"}) == Path("/x/nebula/config.toml")
    assert cli_config_path({"HOME": "/h"}) == Path("/h/.config/nebula/config.toml")


TEXT = st.text(min_size=1, max_size=20)


@given(st.dictionaries(TEXT, st.tuples(TEXT, TEXT), max_size=4), st.none() | TEXT)
def test_the_file_reads_back_as_written(
    entries: dict[str, tuple[str, str]], current: str | None
) -> None:
    """Catches a name, URL or token with a quote, a backslash or a control character that the
    TOML writer does not escape (the file would not load, or load as something else)."""
    contexts = Contexts(current, {n: Context(u, t) for n, (u, t) in entries.items()})
    raw = tomllib.loads(dumps(contexts))
    assert raw.get("current") == current
    assert {n: (e["url"], e["token"]) for n, e in raw.get("contexts", {}).items()} == entries
