"""The payload download benchmark (nebula.loadtest.payloads): it runs, checks the bytes both
servers send, and reports what wrk measured. Figures are for docs/benchmarks.md, never asserted.
"""

from __future__ import annotations

import pytest

from nebula.loadtest import payloads
from tests.conftest import require_tools

WRK_OUTPUT = """\
Running 2s test @ http://127.0.0.1:1/x
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    80.10ms   10.00ms 120.00ms   70.00%
  22 requests in 2.00s, 4.40GB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:     11.00
Transfer/sec:      2.20GB
"""


def test_wrk_report_is_read_with_its_units_and_every_error() -> None:
    rate, per_s, errors = payloads.parse_wrk(WRK_OUTPUT)
    assert rate == pytest.approx(2.2 * (1 << 30))
    assert per_s == 11.0
    assert errors == 7  # socket errors and bad statuses alike
    with pytest.raises(RuntimeError, match="no rates"):
        payloads.parse_wrk("wrk: connection refused\n")


def test_the_two_servers_are_compared_round_by_round() -> None:
    results = [
        payloads.Download("nginx", 1000.0, 5.0, 0),
        payloads.Download("nebula", 900.0, 4.5, 0),
        payloads.Download("nginx", 800.0, 4.0, 0),
        payloads.Download("nebula", 880.0, 4.4, 0),
        payloads.Download("nginx", 1000.0, 5.0, 0),
        payloads.Download("nebula", 950.0, 4.75, 0),
    ]
    text, ratio = payloads.report(results, 200)
    assert ratio == pytest.approx(0.95)  # the median of 0.90, 1.10, 0.95
    assert "0.90, 1.10, 0.95" in text


def test_the_payload_bench_runs_and_serves_the_same_bytes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    require_tools("nginx", "wrk")
    assert payloads.main(["--size-mb", "2", "--duration", "1", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    rows = [line.split() for line in lines if line.strip().startswith("1 ")]
    assert {r[1] for r in rows} == {"nginx", "nebula"}, out
    assert all(float(r[2]) > 0 and r[4] == "0" for r in rows), out
    assert "nebula / nginx throughput:" in out
