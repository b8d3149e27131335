"""nebula.loadtest.servicecpu runs a phase through the real service and says what it cost.
Catches a driver that measures nothing (no grants made) or prints a malformed figure."""

from __future__ import annotations

import re

import pytest

from nebula.loadtest import servicecpu


def test_servicecpu_grants_and_reports_cpu_per_request(capsys: pytest.CaptureFixture[str]) -> None:
    result = servicecpu.measure_sync(None, "grant", 40, 4)
    assert result.requests == 40 and result.granted == 40
    servicecpu.main(["--phase", "first-seen", "--requests", "20", "--concurrency", "2"])
    out = capsys.readouterr().out
    assert re.fullmatch(
        r"first-seen: 20 requests, [0-9.]+ ms CPU per request \([0-9]+ req/s wall clock, "
        r"in-process\)\n",
        out,
    ), out


def test_servicecpu_grants_known_hosts() -> None:
    """The known-host phase: hosts that checked in before the release are granted after it.
    Catches a warm-up that leaves them unknown or already granted (then nothing is measured)."""
    result = servicecpu.measure_sync(None, "grant-known", 20, 2)
    assert result.requests == 20 and result.granted == 20


def test_servicecpu_steady_checks_come_from_the_host_cache() -> None:
    """The steady phase times checks of known current hosts, each answered from memory.
    Catches a warm-up that leaves the hosts unknown (then first checks are timed) or a phase
    that grants (then it measures the grant path)."""
    result = servicecpu.measure_sync(None, "steady", 20, 2)
    assert result.requests == 20 and result.granted == 0
    assert result.cached == 20
