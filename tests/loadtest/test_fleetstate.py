"""The simulator's parts that need no server: its latency quantiles, what makes a run fail, the
bounds of its options, the fleet a seed draws, and what its modules may import."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from nebula.loadtest.fleetstate import Fleet, HostView, Latency
from nebula.loadtest.simulate import MAX_HOSTS, Options, OptionsError, make_hosts

URL = "http://127.0.0.1:8000/v1/update/"


def test_latency_quantiles_within_two_percent() -> None:
    """1..1000 ms, once each: p50 is about 500 ms and p99 about 990 ms. Catches quantiles off by
    a bucket's rank (p99 of the wrong end) or scaled wrong (µs taken as ms)."""
    latency = Latency()
    for ms in range(1, 1001):
        latency.record(ms / 1000)
    p50, p99 = latency.quantile(0.5), latency.quantile(0.99)
    assert p50 is not None and p99 is not None
    assert math.isclose(p50, 0.500, rel_tol=0.02)
    assert math.isclose(p99, 0.990, rel_tol=0.02)
    assert latency.count == 1000
    assert len(latency.buckets) < 400  # bounded, whatever the number of requests
    assert Latency().quantile(0.5) is None


def _fleet(n: int = 2) -> Fleet:
    return Fleet([HostView(f"{i:032x}", "1.0.0") for i in range(n)])


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        (lambda f: None, False),
        (lambda f: setattr(f, "unreachable", 1), True),
        (lambda f: f.http_errors.update({503: 1}), True),
        (lambda f: setattr(f, "invalid_answers", 1), True),
        (lambda f: setattr(f, "bad_acks", 1), True),
        (lambda f: setattr(f, "payload_errors", 1), True),
        # Failures the run was asked for are not the server's fault.
        (lambda f: setattr(f, "injected_failures", 3), False),
    ],
)
def test_protocol_errors_fail_the_run(change: object, failing: bool) -> None:
    fleet = _fleet()
    fleet.noupdates = 1
    change(fleet)  # type: ignore[operator]
    report = fleet.report(1.0, None, 0)
    assert report.ok is not failing
    assert json.loads(json.dumps(report.to_json()))["ok"] is not failing


def test_unanswered_run_and_unreached_version_fail() -> None:
    """A run nobody answered fails (a wrong URL is not a quiet success); with --expect-version
    every host but those made to fail must be on it."""
    fleet = _fleet(3)
    assert not fleet.report(1.0, None, 0).ok
    fleet.noupdates = 5
    fleet.hosts[0].version = fleet.hosts[1].version = "2.0.0"
    assert not fleet.report(1.0, "2.0.0", 0).ok
    assert fleet.report(1.0, "2.0.0", 1).ok  # the third host was made to fail
    fleet.hosts[1].confirmed = False  # rebooted, but the server has not heard so yet
    assert not fleet.report(1.0, "2.0.0", 1).ok


def test_in_flight_maximum_follows_moves() -> None:
    fleet = _fleet(3)
    a, b, c = fleet.hosts
    fleet.move(a, "updating")
    fleet.move(b, "updating")
    fleet.move(a, "installed")  # still in flight
    fleet.move(b, "failed")
    fleet.move(c, "updating")
    fleet.move(a, "updated")
    assert (fleet.in_flight, fleet.max_in_flight) == (1, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "127.0.0.1:8000/v1/update/"}, "--url"),
        ({"url": "http://127.0.0.1:port/"}, "--url"),
        ({"hosts": 0}, "--hosts"),
        ({"hosts": MAX_HOSTS + 1}, "--hosts"),
        ({"duration": 3601}, "--duration"),
        ({"duration": float("nan")}, "--duration"),
        ({"concurrency": 0}, "--concurrency"),
        ({"timeout": 0}, "--timeout"),
        ({"fail_rate": 1.5}, "--fail-rate"),
        ({"group": "stable track"}, "--group"),
        ({"expect_version": "1.0.0<"}, "--expect-version"),
        ({"arch": "x86_64"}, "--arch"),
        ({"download": "half"}, "--download"),
    ],
)
def test_options_refuse_unbounded_runs(kwargs: dict[str, object], message: str) -> None:
    options = {"url": URL, **kwargs}
    with pytest.raises(OptionsError, match=message):
        Options(**options)  # type: ignore[arg-type]


def test_hosts_follow_the_seed_and_the_arch() -> None:
    """The same seed draws the same machine and boot ids (a rerun finds the same hosts on the
    server); another seed, other hosts; the board follows --arch."""
    one = [h.wire for h in make_hosts(Options(url=URL, hosts=5, seed=1, arch="arm64"))]
    again = [h.wire for h in make_hosts(Options(url=URL, hosts=5, seed=1, arch="arm64"))]
    other = [h.wire for h in make_hosts(Options(url=URL, hosts=5, seed=2))]
    assert [(h.machine_id, h.boot_id) for h in one] == [(h.machine_id, h.boot_id) for h in again]
    assert not {h.machine_id for h in one} & {h.machine_id for h in other}
    assert len({h.machine_id for h in one}) == 5
    assert {h.board for h in one} == {"arm64-usr"} and b'sp="3815.2.0_aarch64"' in one[0].ping()


def test_fail_rate_picks_that_share_of_hosts() -> None:
    hosts = make_hosts(Options(url=URL, hosts=40, fail_rate=0.25))
    assert sum(h.fails for h in hosts) == 10


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_simulator_imports_no_server_code() -> None:
    """The simulator speaks Omaha only: nothing of Nebula's web, store or service code (nor
    SQLAlchemy) comes with it, so it cannot lean on the server it tests."""
    loaded = _imported_after("import nebula.loadtest.simulate")
    server = {m for m in loaded if m.split(".")[:2] in (["nebula", "web"], ["nebula", "store"])}
    server |= {m for m in loaded if m.startswith(("nebula.service", "sqlalchemy"))}
    assert server == set()


def test_command_module_is_light() -> None:
    """`nebula --help` imports every command module: this one brings no aiohttp or lxml."""
    loaded = _imported_after("import nebula.cli.simulate")
    assert not {m for m in loaded if m.split(".")[0] in ("aiohttp", "lxml")}
