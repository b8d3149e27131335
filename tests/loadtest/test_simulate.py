"""`nebula simulate` against a real Nebula on a 127.0.0.1 socket (the `server` fixture, its
database on SQLite and on PostgreSQL): after each run the simulator's report and Nebula's
database must tell the same story (grants, completions, each host's version, the error events).
Payload hosts that misbehave on purpose (a corrupted file, a connection cut halfway, Range
ignored) are a small raw HTTP server here, registered in Nebula as the packages' base URL.

Runs end when they have nothing left to see (every host on the version, or the rollout
stalled), not after a time: no assertion depends on timing. The server's clock is the test's
FakeClock and does not move, so a rate limit's period never ends during a run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.cli.main import main
from nebula.loadtest.simulate import Options, Report, make_hosts, run_async
from nebula.policy import rollout_bucket
from nebula.store.db import session_factory
from nebula.store.models import Completion, Event, Grant, InstanceApp
from tests.factories import assert_status_counts_match, payload_file

OLD, FLOOR, NEW = "3815.2.0", "4081.2.0", "4152.2.3"
SELF_HOSTED = 1 << 28
RESUMED = 1 << 30
NAME = "flatcar_production_update.gz"

# Compressed time: a host checks every 50 ms and reboots 100 ms after installing.
FAST = {"check_interval": 0.05, "reboot_delay": 0.1, "progress_every": 1.0, "timeout": 5.0}
# An upper bound only: every run below ends as soon as it settled or stalled.
LONGEST = 60.0


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def upload(server: str, token: str, path: Path, version: str) -> None:
    async with aiohttp.ClientSession() as http:
        form = aiohttp.FormData()
        form.add_field("payload", path.read_bytes(), filename=path.name)
        async with http.post(
            f"{server}/api/v1/packages/upload",
            params={"version": version, "arch": "amd64"},
            data=form,
            headers=auth(token),
        ) as resp:
            assert resp.status == 201, await resp.text()


async def add_external(server: str, token: str, base_url: str, data: bytes) -> None:
    """Register a payload that Nebula does not host: hosts fetch it from `base_url`."""
    files = [
        {
            "name": NAME,
            "size": len(data),
            "sha1": hashlib.sha1(data).hexdigest(),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    ]
    body = {"version": NEW, "arch": "amd64", "base_url": base_url, "files": files}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{server}/api/v1/packages", json=body, headers=auth(token)) as resp,
    ):
        assert resp.status == 201, await resp.text()


async def admin(server: str, token: str, method: str, path: str, body: dict[str, Any]) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, f"{server}{path}", params={"arch": "amd64"}, json=body, headers=auth(token)
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()


async def point_stable_at(server: str, token: str, version: str) -> None:
    await admin(
        server, token, "PUT", "/api/v1/channels/stable", {"arch": "amd64", "version": version}
    )


async def simulate(server: str, **kwargs: Any) -> Report:
    options = Options(url=f"{server}/v1/update/", **{"duration": LONGEST, **FAST, **kwargs})
    return await run_async(options, lambda line: None)


@dataclass
class Recorded:
    """What Nebula's database says about the fleet."""

    versions: dict[str, str]
    statuses: Counter[str]
    grants: Counter[str]  # by version
    completions: Counter[str]  # by version
    errors: list[int]  # error codes of the 3/0 events, as sent
    events: Counter[tuple[int, int]] = field(default_factory=Counter)
    # The 3/2 events of first checks after a reboot, by the version they name.
    rebooted_from: Counter[str] = field(default_factory=Counter)

    @property
    def update_events(self) -> int:
        """The events a host sends on their own (13/1, 14/1, 3/1, 3/0), not in a check."""
        return sum(n for kind, n in self.events.items() if kind != (3, 2))


async def recorded(engine: AsyncEngine) -> Recorded:
    async with session_factory(engine)() as session:
        apps = (await session.execute(select(InstanceApp))).scalars().all()
        grants = (
            await session.execute(select(Grant.version, func.count()).group_by(Grant.version))
        ).all()
        done = (
            await session.execute(
                select(Completion.version, func.count()).group_by(Completion.version)
            )
        ).all()
        events = (await session.execute(select(Event))).scalars().all()
    return Recorded(
        versions={a.instance_id: a.version or "" for a in apps},
        statuses=Counter(a.status for a in apps),
        grants=Counter({v: int(n) for v, n in grants}),
        completions=Counter({v: int(n) for v, n in done}),
        errors=[e.error_code or 0 for e in events if (e.event_type, e.event_result) == (3, 0)],
        events=Counter((e.event_type, e.event_result) for e in events),
        rebooted_from=Counter(
            e.previous_version
            for e in events
            if (e.event_type, e.event_result) == (3, 2) and e.previous_version
        ),
    )


def simulated_versions(report: Report) -> dict[str, str]:
    return {h.machine_id: h.version for h in report.fleet.hosts}


# -- against Nebula ---------------------------------------------------------------------------


async def test_fleet_follows_rate_limit_percentage_and_concurrency(
    server: str, admin_token: str, tmp_path: Path, signing_key: RSAPrivateKey, engine: AsyncEngine
) -> None:
    """20 hosts on OLD, stable at NEW under a 60% rollout, 6 updates per hour and 2 at once
    (the hour never ends: the server's clock stands still). Exactly the 6 hosts granted update,
    all inside the 60%, never more than 2 at once, and the run stops once the rest are only
    ever answered noupdate. Nebula's grants, completions and each host's version agree with
    the report. Catches a simulator that does not name the old version after its reboot (no
    completion recorded), that counts grants or completions it did not see, that tells a host's
    version wrong, or a server whose limits leak under a fleet's concurrent checks."""
    limit, at_once, percentage = 6, 2, 60
    await upload(server, admin_token, payload_file(tmp_path, NAME, signing_key, size=40_000), NEW)
    await point_stable_at(server, admin_token, NEW)
    await admin(
        server,
        admin_token,
        "PATCH",
        "/api/v1/groups/stable/policy",
        {
            "max_updates_per_period": limit,
            "period": "1h",
            "max_concurrent": at_once,
            "percentage": percentage,
        },
    )
    options = dict(hosts=20, version=OLD, seed=7, stall_checks=3)
    ids = [h.view.machine_id for h in make_hosts(Options(url=server, **options))]  # type: ignore[arg-type]
    eligible = {m for m in ids if rollout_bucket(m, NEW) < percentage}
    assert limit < len(eligible) < len(ids)  # both rules bite with this seed

    report = await simulate(server, **options)

    fleet = report.fleet
    assert report.ok, report.summary()
    assert report.versions == Counter({NEW: limit, OLD: 20 - limit})
    updated = {h.machine_id for h in fleet.hosts if h.version == NEW}
    assert updated <= eligible
    assert (fleet.offers, fleet.completions) == (limit, limit)
    assert 1 <= fleet.max_in_flight <= at_once
    assert fleet.error_codes == Counter() and fleet.protocol_errors == 0

    db = await recorded(engine)
    assert db.versions == simulated_versions(report)
    assert db.grants == Counter({NEW: limit})
    assert db.completions == Counter({NEW: limit})
    assert db.rebooted_from == Counter({OLD: limit})
    assert db.update_events == fleet.events == 3 * limit
    assert db.statuses["complete"] == limit
    assert db.errors == []


async def test_fleet_passes_a_floor_and_failures_are_recorded(
    server: str,
    admin_token: str,
    tmp_path: Path,
    signing_key: RSAPrivateKey,
    engine: AsyncEngine,
    db_url: str,
) -> None:
    """No limits, a floor between OLD and NEW, and 2 of the 16 hosts whose downloads always
    fail: the 14 others update twice (OLD -> FLOOR -> NEW, the second offer coming in the
    first check after the reboot), the 2 report 3/0 error 9 with the self-hosted flag, and the
    run ends once it settled. Nebula recorded exactly the grants, completions and error events
    the simulator counted. Catches a host that stops after one update, error events lost or
    sent without their flags, and a report whose counts are not what the server heard (the end
    of the run must let requests under way be answered)."""
    path = payload_file(tmp_path, NAME, signing_key, size=30_000)
    await upload(server, admin_token, path, FLOOR)
    await upload(server, admin_token, path, NEW)
    await point_stable_at(server, admin_token, NEW)
    await admin(
        server, admin_token, "PATCH", "/api/v1/groups/stable/policy", {"add_floors": [FLOOR]}
    )

    report = await simulate(
        server, hosts=16, version=OLD, seed=3, fail_rate=0.125, expect_version=NEW
    )

    fleet = report.fleet
    assert report.ok, report.summary()
    assert report.versions == Counter({NEW: 14, OLD: 2})
    assert fleet.completions == 28
    failed = fleet.error_codes[9]
    assert fleet.error_codes == Counter({9: failed}) and failed >= 2
    assert fleet.injected_failures == failed
    assert fleet.protocol_errors == 0

    db = await recorded(engine)
    assert db.versions == simulated_versions(report)
    assert db.completions == Counter({FLOOR: 14, NEW: 14})
    assert db.rebooted_from == Counter({OLD: 14, FLOOR: 14})
    assert db.update_events == fleet.events
    assert db.grants[NEW] == 14
    # A failed host is offered the floor again (perhaps once more as the run ends).
    assert db.grants[FLOOR] == fleet.offers - 14 >= 14 + failed
    assert db.errors == [9 | SELF_HOSTED] * failed
    assert db.statuses["complete"] == 14
    await assert_status_counts_match(db_url)


async def test_run_cut_short_counts_what_the_server_heard(
    server: str, admin_token: str, tmp_path: Path, signing_key: RSAPrivateKey, engine: AsyncEngine
) -> None:
    """--duration ends the run in the middle of a rollout (30 hosts, 5 at once): the requests
    under way are answered before the report is made, so its grants,
    completions and events are exactly those in Nebula's database, and the hosts it counts as
    updating are those Nebula has in progress. Catches an end of run that cancels requests in
    flight (the server then holds events the report does not count) or sends new ones."""
    await upload(server, admin_token, payload_file(tmp_path, NAME, signing_key, size=20_000), NEW)
    await point_stable_at(server, admin_token, NEW)
    await admin(server, admin_token, "PATCH", "/api/v1/groups/stable/policy", {"max_concurrent": 5})

    report = await simulate(
        server, hosts=30, version=OLD, duration=1.5, check_interval=0.1, reboot_delay=0.3
    )

    fleet = report.fleet
    db = await recorded(engine)
    assert fleet.offers > 0, report.summary()  # no agreement to check without a grant
    assert fleet.offers == db.grants.total()
    assert fleet.completions == db.completions.total() == db.rebooted_from[OLD]
    assert fleet.events == db.update_events
    assert db.versions == simulated_versions(report)
    in_progress = {"granted", "downloading", "downloaded", "installed"}
    assert report.states["updating"] + report.states["installed"] == sum(
        db.statuses[s] for s in in_progress
    )


async def test_range_mode_against_nebula_payload_route(
    server: str, admin_token: str, tmp_path: Path, signing_key: RSAPrivateKey, engine: AsyncEngine
) -> None:
    """`--download range`: each host fetches only both ends of the payload, and Nebula's payload
    route answers each Range exactly; the fleet updates. Catches a range download that sends no
    Range header (Nebula would send the whole file) or reads more than it asked for."""
    await upload(server, admin_token, payload_file(tmp_path, NAME, signing_key, size=300_000), NEW)
    await point_stable_at(server, admin_token, NEW)

    report = await simulate(server, hosts=4, version=OLD, download="range", expect_version=NEW)

    assert report.ok, report.summary()
    # Two 64 KiB ends per host, not the 300 kB file.
    assert report.fleet.bytes_downloaded == 4 * 2 * 64 * 1024
    assert (await recorded(engine)).completions == Counter({NEW: 4})


# -- payload hosts that misbehave -------------------------------------------------------------


class PayloadHost:
    """A raw HTTP/1.1 file server on 127.0.0.1 serving one payload, wrong on purpose: its
    bytes corrupted (same size), its first answer cut after `cut_at` bytes, or Range ignored.
    It records the Range header of every GET."""

    def __init__(
        self,
        data: bytes,
        *,
        corrupt: bool = False,
        cut_at: int | None = None,
        honour_range: bool = True,
    ) -> None:
        self.data = bytes([data[0] ^ 0xFF]) + data[1:] if corrupt else data
        self.cut_at = cut_at
        self.honour_range = honour_range
        self.ranges: list[str | None] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/payloads/"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = dict(
                (k.strip().lower(), v.strip())
                for k, v in (line.split(":", 1) for line in head[1:] if ":" in line)
            )
            wanted = headers.get("range")
            first = not self.ranges
            self.ranges.append(wanted)
            size = len(self.data)
            status, part, extra = "200 OK", self.data, ""
            if wanted is not None and self.honour_range:
                low, _, high = wanted.removeprefix("bytes=").partition("-")
                start, end = int(low), int(high) if high else size - 1
                status, part = "206 Partial Content", self.data[start : end + 1]
                extra = f"Content-Range: bytes {start}-{end}/{size}\r\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Length: {len(part)}\r\n{extra}"
                "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n".encode()
            )
            if first and self.cut_at is not None:
                part = part[: self.cut_at]  # the connection drops mid-body
            writer.write(part)
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def payload_hosts() -> AsyncIterator[list[PayloadHost]]:
    started: list[PayloadHost] = []
    yield started
    for host in started:
        await host.close()


async def external(
    server: str, token: str, hosts: list[PayloadHost], data: bytes, **kwargs: Any
) -> PayloadHost:
    host = PayloadHost(data, **kwargs)
    hosts.append(host)
    await add_external(server, token, await host.start(), data)
    await point_stable_at(server, token, NEW)
    return host


async def test_corrupted_payload_reports_hash_mismatch(
    server: str, admin_token: str, payload_hosts: list[PayloadHost], engine: AsyncEngine
) -> None:
    """The payload host serves one flipped byte (the size is right): the host reports 3/0 with
    error 10 and the self-hosted flag each time it is offered the update, never 14/1 or 3/1,
    and stays on OLD; the run fails (a protocol error). Once both hosts failed, the failure gate
    pauses the group and the run stops. Nebula recorded each of those events. Catches a download
    that is not checked against the offer's SHA-256 (the host would update), the wrong error
    code (9 or 11) or a missing flag."""
    data = b"CrAU" + bytes(range(256)) * 200
    await external(server, admin_token, payload_hosts, data, corrupt=True)
    await admin(
        server, admin_token, "PATCH", "/api/v1/groups/stable/policy", {"pause_on_failures": ["2"]}
    )

    report = await simulate(server, hosts=2, version=OLD, stall_checks=2)

    fleet = report.fleet
    failures = fleet.error_codes[10]
    assert fleet.error_codes == Counter({10: failures}) and failures >= 2
    assert fleet.payload_errors == failures
    assert report.versions == Counter({OLD: 2}) and fleet.completions == 0
    assert not report.ok
    assert any("SHA-256" in p for p in fleet.problems)

    db = await recorded(engine)
    assert db.errors == [10 | SELF_HOSTED] * failures
    assert db.events[(14, 1)] == 0 and db.events[(3, 1)] == 0
    assert db.versions == simulated_versions(report)


async def test_cut_download_resumes_with_range(
    server: str, admin_token: str, payload_hosts: list[PayloadHost], engine: AsyncEngine
) -> None:
    """The first GET of the payload drops after 1000 bytes: the host asks again with
    `Range: bytes=1000-`, gets the rest, checks the whole file and completes. Catches a resume
    that starts over from 0 (no Range), one that asks from the wrong offset (the payload host
    would send the wrong bytes: hash mismatch), and a cut taken as the end of the file."""
    data = b"CrAU" + bytes(range(256)) * 100
    host = await external(server, admin_token, payload_hosts, data, cut_at=1000)

    report = await simulate(server, hosts=1, version=OLD, expect_version=NEW)

    assert report.ok, report.summary()
    assert host.ranges == [None, "bytes=1000-"]
    assert report.fleet.resumes == 1
    assert report.fleet.bytes_downloaded == len(data)
    db = await recorded(engine)
    assert db.completions == Counter({NEW: 1}) and db.versions == simulated_versions(report)


async def test_resume_against_a_host_ignoring_range_is_a_size_mismatch(
    server: str, admin_token: str, payload_hosts: list[PayloadHost], engine: AsyncEngine
) -> None:
    """After the cut, the payload host ignores Range and sends the whole file again with 200:
    appended to the first 1000 bytes it is longer than offered. The host reports error 11 with
    the resumed and self-hosted flags (what update_engine sends after a resumed download); the
    next offer's download is not cut and completes. Catches a downloader that appends a 200 as
    if it were the rest, or forgets the flag."""
    data = b"CrAU" + bytes(range(256)) * 100
    host = await external(server, admin_token, payload_hosts, data, cut_at=1000, honour_range=False)

    report = await simulate(server, hosts=1, version=OLD, expect_version=NEW)

    assert host.ranges == [None, "bytes=1000-", None]
    assert report.fleet.error_codes == Counter({11: 1}) and report.fleet.completions == 1
    assert not report.ok  # the server's payload host broke a download
    db = await recorded(engine)
    assert db.errors == [11 | RESUMED | SELF_HOSTED]
    assert db.completions == Counter({NEW: 1})


async def test_range_mode_against_a_host_ignoring_range(
    server: str, admin_token: str, payload_hosts: list[PayloadHost], engine: AsyncEngine
) -> None:
    """`--download range` against a payload host that answers every Range with 200 and the
    whole file: error 11 (a client resuming there would get a file of another size), and the
    failure gate of 1 host pauses the group, which ends the run. Catches a range download that
    takes a 200 as good."""
    data = b"CrAU" + bytes(range(256)) * 600
    await external(server, admin_token, payload_hosts, data, honour_range=False)
    await admin(
        server, admin_token, "PATCH", "/api/v1/groups/stable/policy", {"pause_on_failures": ["1"]}
    )

    report = await simulate(server, hosts=1, version=OLD, download="range", stall_checks=2)

    assert report.fleet.error_codes == Counter({11: 1}) and not report.ok
    assert (await recorded(engine)).errors == [11 | SELF_HOSTED]


# -- the command ------------------------------------------------------------------------------


async def invoke(*args: str) -> Any:
    # The command runs its own event loop: in a thread, so that this loop's server answers.
    return await asyncio.to_thread(CliRunner().invoke, main, ["simulate", *args])


async def test_command_prints_summary_and_json(
    server: str, admin_token: str, tmp_path: Path, signing_key: RSAPrivateKey
) -> None:
    """The command's summary names hosts by version and state, grants, completions, error
    codes and latency, and exits 0; --json is one JSON document with the same figures."""
    await upload(server, admin_token, payload_file(tmp_path, NAME, signing_key, size=10_000), NEW)
    await point_stable_at(server, admin_token, NEW)
    common = ["--url", f"{server}/v1/update/", "--hosts", "3", "--version", OLD]
    common += ["--check-interval", "0.05", "--reboot-delay", "0.05", "--expect-version", NEW]

    result = await invoke(*common, "--seed", "1")
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"on {NEW}: 3 of 3 hosts" in out
    assert f"versions: {NEW}: 3" in out
    assert "grants 3, completions 3" in out
    assert "latency of " in out and "p99" in out
    assert "protocol errors 0" in out

    result = await invoke(*common, "--seed", "2", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] is True and doc["versions"] == {NEW: 3}
    assert (doc["grants"], doc["completions"], doc["reached"]) == (3, 3, 3)
    assert doc["latency"]["count"] > 0 and doc["latency"]["p50"] <= doc["latency"]["p99"]


async def test_command_fails_on_protocol_errors(server: str) -> None:
    """A URL that is not the Omaha endpoint (404 to every POST): exit status 1, the HTTP errors
    counted, and the run gives up once twice as many checks failed as there are hosts instead
    of polling for its whole --duration. Catches a run that passes quietly when nothing was
    answered, and one that keeps a broken server busy (with 30 s at a 50 ms interval, backing
    off to 0.8 s, each host would check dozens of times)."""
    args = ["--url", f"{server}/v1/nowhere/", "--hosts", "2", "--check-interval", "0.05"]
    result = await invoke(*args, "--duration", "30")
    assert result.exit_code == 1, result.output
    assert "HTTP 404:" in result.output
    assert "FAILED: no update check was answered" in result.output

    result = await invoke(*args, "--duration", "30", "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["protocol_errors"]["http"]["404"] >= 4
    assert doc["requests"]["checks"] < 20


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "ftp://127.0.0.1/"], "--url must be an http"),
        (["--url", "http://127.0.0.1:1/", "--hosts", "10001"], "--hosts"),
        (["--url", "http://127.0.0.1:1/", "--version", 'x"/><a b="'], "--version must be"),
    ],
)
def test_command_refuses_unbounded_or_unsafe_options(args: list[str], message: str) -> None:
    """Refused before any request: a URL that is not http(s), more hosts than the bound, a
    version that would break out of the request's XML attribute."""
    result = CliRunner().invoke(main, ["simulate", *args])
    assert result.exit_code == 2
    assert message in result.output
