"""Running the real `nebula` CLI in tests: in a worker thread (it calls asyncio.run itself), with
exactly the NEBULA_* environment each test means it to see."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from click.testing import CliRunner, Result

from nebula.cli.main import main

_CLEAN_ENV: dict[str, str | None] = {
    "NEBULA_URL": None,
    "NEBULA_TOKEN": None,
    "NEBULA_DB": None,
    "NEBULA_CONFIG": None,
    # No test reads the contexts of whoever runs the tests; context tests give their own file.
    "NEBULA_CLI_CONFIG": "/nonexistent/nebula-tests/config.toml",
    "NEBULA_CONTEXT": None,
}


async def nebula(args: Sequence[str], **env: str | None) -> Result:
    runner = CliRunner()
    return await asyncio.to_thread(
        runner.invoke, main, list(args), env={**_CLEAN_ENV, **env}, catch_exceptions=False
    )


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def fails(result: Result, code: int, *words: str) -> None:
    assert result.exit_code == code, result.output
    for word in words:
        assert word in result.output, (word, result.output)
    assert "Traceback" not in result.output
