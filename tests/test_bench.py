"""`nebula bench` runs end to end with tiny numbers and prints its ratio lines.

No timing is asserted: machines are noisy. What is checked is that every phase ran without a
failed or unexpected answer (an update check from an old host must be granted, from a current
host answered noupdate) and that the report has the lines a reader compares between runs.
"""

from __future__ import annotations

import re

from click.testing import CliRunner

from nebula.loadtest.bench import bench

PHASES = ("check-current", "check-repeat", "check-old", "ping")
_NUMBER = r"[0-9.]+|inf|nan"


def _check_report(output: str, requests: int) -> None:
    assert f"{requests} requests per phase" in output
    for phase in ("baseline", *PHASES):
        row = re.search(rf"^{phase} .*?(\S+)\s+(\S+)\s+(\S+)\s+(\d+)$", output, re.M)
        assert row is not None, f"no row for {phase}:\n{output}"
        assert row.group(4) == "0", f"{phase} had failed requests:\n{output}"
    for phase in PHASES:
        pattern = (
            rf"^ratio {phase}/baseline: throughput ({_NUMBER})x, "
            rf"p50 ({_NUMBER})x, p99 ({_NUMBER})x$"
        )
        assert re.search(pattern, output, re.M), f"no ratio line for {phase}:\n{output}"


def test_bench_on_a_temporary_sqlite_file() -> None:
    result = CliRunner().invoke(bench, ["--requests", "20", "--concurrency", "4"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    _check_report(result.output, 20)
    assert "temporary SQLite file" in result.output


def test_bench_on_a_given_database(db_url: str) -> None:
    result = CliRunner().invoke(bench, ["--requests", "10", "--concurrency", "3", "--db", db_url])
    assert result.exit_code == 0, result.output + repr(result.exception)
    _check_report(result.output, 10)
    # A second run refuses the database: it now has a package and hosts.
    again = CliRunner().invoke(bench, ["--requests", "10", "--db", db_url])
    assert again.exit_code != 0
    assert "empty database" in again.output


def test_bench_options_are_bounded() -> None:
    result = CliRunner().invoke(bench, ["--requests", "0"])
    assert result.exit_code == 2
    result = CliRunner().invoke(bench, ["--concurrency", "0"])
    assert result.exit_code == 2
