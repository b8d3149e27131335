"""nebula.loadtest.servicecpu runs a phase through the real service and says what it cost.
Catches a driver that measures nothing (no grants made) or prints a malformed figure."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from nebula import crau
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


def test_servicecpu_through_http_answers_from_the_host_cache() -> None:
    """--http: raw POSTs through aiohttp's whole request path reach the Omaha handler, the
    steady requests cycle over `hosts` known hosts and each is answered from memory. Catches a
    path that bypasses the app (no cache hits), a cycle that brings new hosts (misses), or a
    wire that returns before the answer is whole (then granted/cached miscount)."""
    result = servicecpu.measure_sync(None, "steady", 30, 3, http=True, hosts=5)
    assert result.requests == 30 and result.granted == 0
    assert result.cached == 30


def test_servicecpu_through_http_grants_with_a_given_key(tmp_path: Path) -> None:
    """--http grants, counted from the answers' bytes, with the payload signed by the key
    given; a file that is no key is refused. Catches answers read as granted from the wrong
    document (a grant answered noupdate, or a noupdate counted), and a key that signs a payload
    the server does not trust (no release published: no grants)."""
    key = crau.make_rsa_key()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    result = servicecpu.measure_sync(None, "grant", 12, 3, http=True, key_pem=pem)
    assert result.requests == 12 and result.granted == 12
    (tmp_path / "k.pem").write_bytes(b"not a key")
    with pytest.raises(ValueError):
        servicecpu.main(["--key", str(tmp_path / "k.pem"), "--requests", "2"])
