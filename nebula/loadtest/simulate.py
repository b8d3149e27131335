"""`nebula simulate`: a fleet of simulated Flatcar hosts running the real update cycle against
any Omaha server (Nebula, Nebraska, ...) at compressed time.

Each host is one asyncio task that does what update_engine does (contract §3), with minutes
turned into seconds: an update check (ping + updatecheck + 3/2) every `check_interval` seconds,
jittered; on `ok` the answer is read as update_engine reads it (error 34 when it lacks a field),
then 13/1, the payload download (nebula.loadtest.download: in full, checked against size and
SHA-256, resumed with Range after a cut; or `range`: only a first and a last chunk), 14/1, 3/1,
pings while it waits for its reboot, the reboot (new boot id, the offered version) and the first
check after it, which names the old version. Any failure after the offer is reported once as
3/0 with the error code and the 1<<28 flag a self-hosted server sees. The server's PollInterval
is ignored: it is in real minutes.

A run ends at `duration`, or earlier once it has nothing left to see: every host on
`expect_version` (settled), or with `stall_checks` N, no host updating and every host answered
noupdate N times since the rollout last moved (stalled: the server holds the rest back), or
when no check was answered and twice as many failed as there are hosts (unanswered). At the
end, sleeps and downloads are cancelled but Omaha requests under way are answered first, so the
report counts what the server heard: its database and the report can be compared.

The simulator speaks only the Omaha protocol (POSTs to `url` exactly as given) and GETs payload
URLs; it never uses Nebula's admin API, so it works against any Omaha server. It is bounded:
at most MAX_HOSTS hosts and MAX_DURATION seconds, `concurrency` requests at once, a timeout on
every request, and answers read up to a size limit. Machine and boot ids are drawn from `seed`.

Imports aiohttp and the rest of nebula.loadtest's pure modules; never nebula.web, nebula.store
or nebula.service (the server's code is none of its business).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from nebula import __version__
from nebula.loadtest.download import MODES, Downloader, is_http, read_at_most
from nebula.loadtest.fleetstate import Fleet, HostView, Report
from nebula.loadtest.update_engine import (
    ERROR_DOWNLOAD,
    ERROR_INVALID_RESPONSE,
    FLAG_SELF_HOSTED,
    MAX_ANSWER,
    Host,
    Offer,
    http_error_code,
    read_ack,
    read_answer,
    safe_token,
)

__all__ = [
    "ARCHES",
    "MAX_DURATION",
    "MAX_HOSTS",
    "MODES",
    "Options",
    "OptionsError",
    "Report",
    "run",
    "run_async",
]

MAX_HOSTS = 10_000
MAX_DURATION = 3600.0
ARCHES = ("amd64", "arm64")

# Errors double the wait before the next check (update_engine: up to 4 h from 45 min).
_BACKOFF_CAP = 16
_XML = {"Content-Type": "text/xml"}
_BASE_CODE = 0x0FFFFFFF


class OptionsError(ValueError):
    """Options that cannot run; the message is one line naming the option."""


@dataclass(frozen=True, slots=True)
class Options:
    """One simulation; refused on construction (OptionsError) unless it is bounded and sane."""

    url: str
    hosts: int = 100
    duration: float = 300.0
    version: str = "3815.2.0"
    group: str = "stable"
    arch: str = "amd64"
    check_interval: float = 2.0
    reboot_delay: float = 3.0
    download: str = "full"
    fail_rate: float = 0.0
    expect_version: str | None = None
    stall_checks: int = 0
    seed: int = 0
    concurrency: int = 100
    progress_every: float = 5.0
    timeout: float = 10.0

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem is not None:
            raise OptionsError(problem)

    def _problem(self) -> str | None:
        if not is_http(self.url):
            return f"--url must be an http:// or https:// URL with a host, not {self.url[:200]!r}"
        bounds: list[tuple[str, float, float, float]] = [
            ("--hosts", self.hosts, 1, MAX_HOSTS),
            ("--duration", self.duration, 0.1, MAX_DURATION),
            ("--check-interval", self.check_interval, 0.01, 3600),
            ("--reboot-delay", self.reboot_delay, 0, 3600),
            ("--fail-rate", self.fail_rate, 0, 1),
            ("--stall-checks", self.stall_checks, 0, 1000),
            ("--concurrency", self.concurrency, 1, 1000),
            ("--progress-every", self.progress_every, 0.1, 3600),
            ("--timeout", self.timeout, 0.1, 600),
        ]
        for name, value, low, high in bounds:
            if not low <= value <= high:  # also refuses NaN
                return f"{name} must be from {low:g} to {high:g}, not {value:g}"
        for name, token in [
            ("--version", self.version),
            ("--group", self.group),
            ("--expect-version", self.expect_version),
        ]:
            # These go into the XML of every request: refused rather than escaped.
            if token is not None and not safe_token(token):
                return f"{name} must be letters, digits and ._+- (up to 64), not {token[:70]!r}"
        if self.arch not in ARCHES:
            return f"--arch must be one of {', '.join(ARCHES)}, not {self.arch[:20]!r}"
        if self.download not in MODES:
            return f"--download must be one of {', '.join(MODES)}, not {self.download[:20]!r}"
        return None


def _boot_id(rng: random.Random) -> str:
    return "{" + str(uuid.UUID(int=rng.getrandbits(128), version=4)) + "}"


@dataclass(slots=True)
class _Host:
    view: HostView
    wire: Host
    ids: random.Random  # machine and boot ids: the same for the same seed
    timing: random.Random  # jitter, drawn as often as the run's timing makes it
    fails: bool  # one of --fail-rate's hosts: every download it tries fails
    previous_version: str = ""  # named in the next check once, after a reboot into an update
    posting: bool = False  # in the middle of an Omaha request: the end of the run waits for it
    quiet_epoch: int = -1  # Fleet.changes when `quiet` began counting
    quiet: int = 0  # noupdate answers since the fleet last changed


def make_hosts(options: Options) -> list[_Host]:
    """The fleet of a run: the same machine ids (and failing hosts) for the same seed."""
    n = options.hosts
    picker = random.Random(f"nebula-simulate:{options.seed}:fail")
    failing = set(picker.sample(range(n), round(n * options.fail_rate)))
    hosts = []
    for i in range(n):
        ids = random.Random(f"nebula-simulate:{options.seed}:{i}")
        machine_id = f"{ids.getrandbits(128):032x}"
        wire = Host(
            machine_id=machine_id,
            version=options.version,
            track=options.group,
            board=f"{options.arch}-usr",
            boot_id=_boot_id(ids),
        )
        hosts.append(
            _Host(
                view=HostView(machine_id, options.version),
                wire=wire,
                ids=ids,
                timing=random.Random(f"nebula-simulate:{options.seed}:{i}:timing"),
                fails=i in failing,
            )
        )
    return hosts


class _Simulator:
    def __init__(self, options: Options, http: aiohttp.ClientSession, fleet: Fleet) -> None:
        self.o = options
        self.http = http
        self.fleet = fleet
        self.stopping = False
        self.gate = asyncio.Semaphore(options.concurrency)
        self.omaha_timeout = aiohttp.ClientTimeout(
            total=options.timeout, sock_connect=options.timeout
        )
        # A download may take long, but never stalls longer than `timeout` on a read, and never
        # outlives the run (the run's end cancels it anyway).
        download_timeout = aiohttp.ClientTimeout(
            total=options.duration, sock_connect=options.timeout, sock_read=options.timeout
        )
        self.downloader = Downloader(
            http, self.gate, fleet, download_timeout, mode=options.download
        )

    # -- requests -------------------------------------------------------------------------------

    async def _post(self, host: _Host, body: bytes) -> tuple[int, bytes] | None:
        """One Omaha POST: (status, body), or None when the server could not be reached. The
        end of the run lets a POST under way finish (`posting`), so that what the simulator
        counts is what the server heard."""
        loop = asyncio.get_running_loop()
        host.posting = True
        try:
            async with self.gate:
                sent = loop.time()
                async with self.http.post(
                    self.o.url, data=body, headers=_XML, timeout=self.omaha_timeout
                ) as resp:
                    data = await read_at_most(resp, MAX_ANSWER + 1)
                self.fleet.latency.record(loop.time() - sent)
        except (aiohttp.ClientError, TimeoutError):
            self.fleet.unreachable += 1
            return None
        finally:
            host.posting = False
        if resp.status != 200:
            self.fleet.http_errors[resp.status] += 1
        return resp.status, data

    async def _acknowledged(self, host: _Host, body: bytes, element: str) -> None:
        """An event or a ping-only request; an answer that does not acknowledge it is counted
        (update_engine goes on all the same)."""
        got = await self._post(host, body)
        if got is None or got[0] != 200:
            return
        problem = read_ack(got[1], element)
        if problem is not None:
            self.fleet.bad_acks += 1
            self.fleet.problem(problem)

    async def _event(self, host: _Host, event_type: int, result: int, code: int = 0) -> None:
        # An event that does not get through is counted (as unreachable or an HTTP error) and
        # the update goes on, as update_engine's does. None is sent once the run is ending.
        if self.stopping:
            return
        await self._acknowledged(
            host, host.wire.event(event_type, result, code if result == 0 else None), "event"
        )
        self.fleet.events += 1
        if result == 0:
            self.fleet.error_codes[code & _BASE_CODE] += 1

    async def _check(self, host: _Host) -> Offer | str:
        """One update check: the offer, or "noupdate", "failed" (the client could not use the
        answer and reported 34) or "retry" (no answer: back off)."""
        got = await self._post(host, host.wire.check(previous_version=host.previous_version))
        self.fleet.checks += 1
        if got is None:
            return "retry"
        status, data = got
        if status != 200:
            # update_engine reports a failed check as an error event too (2000 + status).
            await self._event(host, 3, 0, http_error_code(status))
            return "retry"
        # The server heard the check; update_engine names the old version only in this one.
        host.previous_version = ""
        if not host.view.confirmed:
            host.view.confirmed = True
            self.fleet.completions += 1
            self.fleet.changes += 1
        answer = read_answer(data)
        if answer.problem is not None:
            self.fleet.invalid_answers += 1
            self.fleet.problem(answer.problem)
            self.fleet.move(host.view, "failed")
            self.fleet.changes += 1
            await self._event(host, 3, 0, ERROR_INVALID_RESPONSE | FLAG_SELF_HOSTED)
            return "failed"
        if answer.offer is None:
            self.fleet.noupdates += 1
            if host.quiet_epoch != self.fleet.changes:
                host.quiet_epoch, host.quiet = self.fleet.changes, 0
            host.quiet += 1
            return "noupdate"
        self.fleet.offers += 1
        if not host.fails:
            self.fleet.changes += 1
        # The host counts as updating from the answer on (the server granted it before
        # answering) until just before it sends the request that ends the update on the server
        # (3/0, or the check after the reboot): so the simulator never sees more hosts updating
        # at once than the server counts, and a run that ends right after this answer still
        # counts the host the server has granted.
        self.fleet.move(host.view, "updating")
        return answer.offer

    # -- one host's life ------------------------------------------------------------------------

    async def live(self, host: _Host) -> None:
        """Poll and update until the run ends (it cancels the sleeps and the downloads, and
        lets an Omaha request under way finish)."""
        # Real hosts first check 2-12 min after boot: spread the fleet's first checks.
        await asyncio.sleep(host.timing.uniform(0, self.o.check_interval))
        misses = 0
        while not self.stopping:
            outcome = await self._check(host)
            if self.stopping:
                return
            if isinstance(outcome, Offer):
                misses = 0
                if await self._update(host, outcome):
                    # Booted into the update: the check naming the old version goes out now,
                    # with no pause at which the end of the run could leave the host rebooted
                    # while the server still counts it as installed.
                    continue
                if self.stopping:
                    return
            elif outcome == "retry":
                misses += 1
            else:
                misses = 0
            backoff = min(2**misses, _BACKOFF_CAP)
            await asyncio.sleep(self.o.check_interval * backoff * host.timing.uniform(0.8, 1.2))

    async def _update(self, host: _Host, offer: Offer) -> bool:
        """From an offer to the reboot; whether the host rebooted into the offered version.
        Stops after any request once the run is ending."""
        await self._event(host, 13, 1)
        if self.stopping:
            return False
        if host.fails:
            self.fleet.injected_failures += 1
            code: int | None = ERROR_DOWNLOAD
        else:
            code = await self.downloader.fetch(offer)
            if code is not None:
                self.fleet.payload_errors += 1
                self.fleet.changes += 1
        if code is not None:
            host.view.failures += 1
            self.fleet.move(host.view, "failed")
            await self._event(host, 3, 0, code | FLAG_SELF_HOSTED)
            return False
        await self._event(host, 14, 1)
        if self.stopping:
            return False
        await self._event(host, 3, 1)
        self.fleet.move(host.view, "installed")
        if self.stopping:
            return False
        # Waiting for locksmithd (or kured): ping-only requests at the check interval.
        pings = max(1, round(self.o.reboot_delay / self.o.check_interval))
        for _ in range(pings):
            await asyncio.sleep(self.o.reboot_delay / pings * host.timing.uniform(0.8, 1.2))
            await self._acknowledged(host, host.wire.ping(), "ping")
            self.fleet.pings += 1
            if self.stopping:
                return False
        host.previous_version = host.wire.version
        host.wire.version = offer.version
        host.wire.boot_id = _boot_id(host.ids)
        host.view.version = offer.version
        host.view.updates += 1
        host.view.confirmed = False
        self.fleet.move(host.view, "updated")
        return True

    # -- the run --------------------------------------------------------------------------------

    def settled(self, hosts: list[_Host]) -> bool:
        """Nothing left to watch for: every host is on --expect-version and the server heard
        so, or is one of the hosts made to fail and has failed."""
        want = self.o.expect_version
        if want is None:
            return False
        return all(
            (h.view.version == want and h.view.confirmed) or (h.fails and h.view.failures)
            for h in hosts
        )

    def stalled(self, hosts: list[_Host]) -> bool:
        """With --stall-checks N: the rollout stopped moving. No host is between an offer and
        its reboot, and every host (but those made to fail) was answered noupdate N times
        since the last offer, completion or failure: the server holds them back (a rate limit
        of a period longer than the run, a percentage, a pause, or nothing left to do)."""
        n = self.o.stall_checks
        if not n or self.fleet.in_flight or not self.fleet.noupdates:
            return False
        changes = self.fleet.changes
        return all(h.fails or (h.quiet_epoch == changes and h.quiet >= n) for h in hosts)

    def unanswered(self) -> bool:
        """No update check answered yet, and twice as many checks failed as there are hosts:
        the server is down or --url is wrong; waiting out --duration would show nothing more."""
        f = self.fleet
        return f.offers + f.noupdates + f.invalid_answers == 0 and f.checks >= 2 * len(f.hosts)


async def run_async(options: Options, emit: Callable[[str], None]) -> Report:
    """Run the fleet until --duration is over, or until it settled (--expect-version) or
    stalled (--stall-checks); `emit` gets a progress line every `progress_every` seconds."""
    hosts = make_hosts(options)
    fleet = Fleet([h.view for h in hosts])
    loop = asyncio.get_running_loop()
    start = loop.time()
    connector = aiohttp.TCPConnector(limit=options.concurrency)
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=options.timeout, sock_connect=options.timeout),
        # The bytes of the payload as stored: update_engine asks for no compression either.
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding",),
        headers={"User-Agent": f"nebula-simulate/{__version__}"},
    ) as http:
        sim = _Simulator(options, http, fleet)
        tasks = [asyncio.create_task(sim.live(h)) for h in hosts]
        try:
            await _watch(sim, hosts, tasks, start, emit)
        finally:
            await _stop(sim, hosts, tasks)
    elapsed = loop.time() - start
    emit(fleet.progress_line(elapsed))
    return fleet.report(elapsed, options.expect_version, sum(h.fails for h in hosts))


async def _watch(
    sim: _Simulator,
    hosts: list[_Host],
    tasks: list[asyncio.Task[None]],
    start: float,
    emit: Callable[[str], None],
) -> None:
    loop = asyncio.get_running_loop()
    deadline = start + sim.o.duration
    next_line = start + sim.o.progress_every
    tick = min(0.05, sim.o.progress_every)
    while (now := loop.time()) < deadline and not (
        sim.settled(hosts) or sim.stalled(hosts) or sim.unanswered()
    ):
        for task in tasks:
            # A host's loop only ends when the run does: a task done now is a bug, shown as one.
            if task.done():
                task.result()
        if now >= next_line:
            emit(sim.fleet.progress_line(now - start))
            next_line += sim.o.progress_every
        await asyncio.sleep(min(tick, max(deadline - now, 0)))


async def _stop(sim: _Simulator, hosts: list[_Host], tasks: list[asyncio.Task[None]]) -> None:
    """End the run: cancel the hosts that sleep or download, let the Omaha requests under way
    be answered (at most `timeout` more), then cancel what is left."""
    sim.stopping = True
    for host, task in zip(hosts, tasks, strict=True):
        if not host.posting:
            task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=sim.o.timeout + 1.0)
    for task in pending:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            raise result  # a bug in a host's loop, not a cancellation


def run(options: Options, emit: Callable[[str], None]) -> Report:
    """`run_async` in an event loop of its own (for the CLI)."""
    return asyncio.run(run_async(options, emit))
