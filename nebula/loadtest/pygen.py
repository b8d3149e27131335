"""Nebula's own load generator, for machines without wrk: aiohttp clients in K processes.

    python -m nebula.loadtest.pygen SPEC.json     (prints one JSON line: the measurement)

The bench runs it as a subprocess, as it runs wrk, so that no request is made from the event loop
of the process that orchestrates (or of the server). The parent forks K workers before any event
loop exists; each opens its share of the connections, says it is ready, and all start at once
on a shared signal, so process start-up and imports are not timed. Each worker sends the phase's
bodies (nebula.loadtest.workload, the arithmetic wrk's script uses too, worker number = thread
number), checks every answer (a 200 holding the expected fragment) and stops at the deadline;
the parent merges the latencies into exact percentiles. Every request has a timeout, and the
parent gives up on a worker well after the deadline.

Imports nebula.loadtest.workload only.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import re
import subprocess
import sys
import time
from array import array
from dataclasses import asdict, dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import aiohttp

from nebula.loadtest.workload import PATH, Measurement, Phase, body_of

_XML = {"Content-Type": "text/xml"}


@dataclass(frozen=True, slots=True)
class Spec:
    url: str  # the server's base, http://127.0.0.1:PORT
    phase: Phase
    processes: int
    connections: int
    duration: float
    timeout: float


def _share(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


async def _load(spec: Spec, tid: int, ready: Barrier) -> tuple[int, array[float], float]:
    conns = _share(spec.connections, spec.processes, tid)
    connector = aiohttp.TCPConnector(limit=conns)
    timeout = aiohttp.ClientTimeout(total=spec.timeout)
    expect = spec.phase.expect.encode()
    url = spec.url + PATH
    latencies: array[float] = array("d")
    errors = 0
    k = 0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        # Every worker waits here (in a thread: the barrier blocks) until all are ready.
        await asyncio.to_thread(ready.wait, 60)
        deadline = time.monotonic() + spec.duration

        async def connection() -> None:
            nonlocal errors, k
            while time.monotonic() < deadline:
                body = body_of(spec.phase, tid, spec.processes, spec.connections, k)
                k += 1
                started = time.perf_counter()
                try:
                    async with http.post(url, data=body, headers=_XML) as resp:
                        answer = await resp.read()
                    ok = resp.status == 200 and expect in answer
                    latencies.append(time.perf_counter() - started)
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                errors += not ok

        started = time.monotonic()
        await asyncio.gather(*(connection() for _ in range(conns)))
        elapsed = time.monotonic() - started
    return errors, latencies, elapsed


def _worker(spec: Spec, tid: int, ready: Barrier, results: Any) -> None:
    errors, latencies, elapsed = asyncio.run(_load(spec, tid, ready))
    results.put((tid, errors, latencies.tobytes(), elapsed))


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (NaN for none)."""
    if not ordered:
        return math.nan
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def measure(spec: Spec) -> Measurement:
    """Fork the workers, start them together, merge what they measured."""
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Barrier(spec.processes, timeout=60)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(spec, tid, ready, results), daemon=True)
        for tid in range(spec.processes)
    ]
    for w in workers:
        w.start()
    latencies: list[float] = []
    errors = 0
    elapsed = 0.0
    cap = 60 + spec.duration + spec.timeout + 30  # ready, run, the last requests, slack
    try:
        for _ in workers:
            _, errs, raw, secs = results.get(timeout=cap)
            chunk: array[float] = array("d")
            chunk.frombytes(raw)
            latencies.extend(chunk)
            errors += errs
            elapsed = max(elapsed, secs)
    finally:
        for w in workers:
            w.join(timeout=5)
            if w.is_alive():
                w.kill()
    latencies.sort()
    # As in wrk: a request that got no answer (timeout, connection error) is an error with no
    # latency, not a request; a bad answer is both.
    return Measurement(
        requests=len(latencies),
        seconds=elapsed,
        p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        errors=errors,
    )


def write_spec(spec: Spec, path: Path) -> None:
    path.write_text(json.dumps(asdict(spec)))


def read_spec(path: Path) -> Spec:
    data = json.loads(path.read_text())
    phase = data.pop("phase")
    phase["templates"] = tuple(phase["templates"])
    return Spec(phase=Phase(**phase), **data)


def run(spec: Spec, work: Path) -> Measurement:
    """Measure in a subprocess of its own (this process may run an event loop, or be a test)."""
    path = work / f"pygen-{spec.phase.name}.json"
    write_spec(spec, path)
    cmd = [sys.executable, "-m", "nebula.loadtest.pygen", str(path)]
    cap = 60 + spec.duration + spec.timeout + 60
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=cap)
    match = re.search(r"^NEBULA_PYGEN (.*)$", out.stdout, re.M)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"the Python generator failed ({out.returncode}): {out.stderr[-2000:]}")
    return Measurement(**json.loads(match.group(1)))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m nebula.loadtest.pygen SPEC.json", file=sys.stderr)
        return 2
    result = measure(read_spec(Path(args[0])))
    print("NEBULA_PYGEN " + json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
