"""The host cache before and during the bench's steady phase.

A fleet's servers have been up for hours: almost every check of a current host is answered
from the process's memory (nebula.store.hostcache). A bench that starts the server and cycles
through 100,000 hosts for ten seconds would measure the first visit of each instead, a read
from the database. So before the steady phase every known host is checked once from here
(untimed; the server runs in its own process, this loads it from the bench's), and the
server's own counters (`nebula_host_cache_lookups_total`) say what share of the measured
checks were answered from memory, so the report says which figure it is.

With several workers each process has a cache of its own and connections land on a worker
at random, so a pass warms each host in one worker only: passes go on over new connections
until one of them finds its hosts in memory (at most `max_passes`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp

from nebula.loadtest.workload import PATH, Phase, fill, machine_id

CONCURRENCY = 32
SETTLE = 1.2  # seconds: longer than a worker's publishing interval (nebula.web.app)
HIT = 'nebula_host_cache_lookups_total{result="hit"}'
MISS = 'nebula_host_cache_lookups_total{result="miss"}'


@dataclass(frozen=True, slots=True)
class Lookups:
    hits: float
    misses: float

    def since(self, before: Lookups) -> Lookups:
        return Lookups(self.hits - before.hits, self.misses - before.misses)

    @property
    def hit_share(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


def parse_lookups(text: str) -> Lookups:
    values = {HIT: 0.0, MISS: 0.0}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in values:
            values[name] = float(value)
    return Lookups(values[HIT], values[MISS])


async def lookups(url: str) -> Lookups:
    """The server's totals so far (summed over its workers). Each worker publishes its counts
    once a second (the one answering the scrape at once): wait for that first."""
    await asyncio.sleep(SETTLE)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=10)) as resp,
    ):
        resp.raise_for_status()
        return parse_lookups(await resp.text())


async def _one_pass(url: str, phase: Phase, fresh_connections: bool) -> None:
    assert phase.pool is not None and len(phase.templates) == 1
    template = phase.templates[0]
    connector = aiohttp.TCPConnector(limit=CONCURRENCY, force_close=fresh_connections)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        numbers = iter(range(phase.pool))

        async def worker() -> None:
            for n in numbers:
                body = fill(template, machine_id(phase.prefix, n))
                headers = {"Content-Type": "text/xml"}
                async with session.post(url + PATH, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"warming the host cache: HTTP {resp.status}")

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


@dataclass(frozen=True, slots=True)
class Warmed:
    passes: int
    hosts: int
    seconds: float
    last_hit_share: float  # of the last pass: near 1 once the caches hold the hosts

    def describe(self) -> str:
        return (
            f"host cache warmed: {self.passes} pass{'es' * (self.passes != 1)} over "
            f"{self.hosts} known hosts in {self.seconds:.1f} s "
            f"(the last pass found {100 * self.last_hit_share:.1f}% in memory)"
        )


async def warm(url: str, phase: Phase, workers: int, max_passes: int = 8) -> Warmed:
    """Check every host of the steady `phase` until a pass is answered from memory (one pass
    suffices with one worker; then the report's hit share says the rest)."""
    started = time.monotonic()
    passes, share = 0, 0.0
    before = await lookups(url)
    while passes < max(1, max_passes):
        await _one_pass(url, phase, fresh_connections=workers > 1)
        passes += 1
        after = await lookups(url)
        share = after.since(before).hit_share
        before = after
        if workers <= 1 or share >= 0.99:
            break
    return Warmed(passes, phase.pool or 0, time.monotonic() - started, share)
