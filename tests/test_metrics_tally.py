"""The hot path's metric tallies (nebula.metrics): what a request counts waits in a plain dict
and reaches prometheus_client's values at a flush (every render, the publish loop, the app's
cleanup, and with workers every turn of the event loop). Each test's docstring names the wrong
implementations it catches. Nothing is timed: waits are bounded polls.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from nebula.config import Settings
from nebula.metrics import HTTP_BUCKETS, Metrics, _bounds, _histogram_parts
from nebula.store import db
from nebula.store.hostcache import HostCache
from nebula.web.app import create_app, publish_gauges
from nebula.web.keys import METRICS
from tests.conftest import FakeClock

REPO = Path(__file__).resolve().parent.parent
BOUND = 30.0  # seconds: a liveness bound for polls, never an expectation
TALLIED = (
    "nebula_omaha_requests",
    "nebula_omaha_request_duration_seconds",
    "nebula_update_checks",
    "nebula_events",
    "nebula_update_failures",
    "nebula_http_request_duration_seconds",
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str, families: tuple[str, ...] = TALLIED) -> Samples:
    """The samples of `families` in an exposition, _created aside (a time, not a count)."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        if family.name in families:
            for s in family.samples:
                if not s.name.endswith("_created"):
                    found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def in_files(directory: str) -> Samples:
    """What a scrape of a server with workers would show of `directory`'s files."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in registry.collect()
        for s in family.samples
    }


def checks(metrics: Metrics, decision: str = "noupdate", reason: str = "current") -> float:
    """An update-check count as prometheus_client holds it (no render, so no flush)."""
    return float(metrics.update_checks.labels(decision, reason)._value.get())


# Every bound, the floats just either side of it, zero, and beyond the largest bound: an
# observation equal to a bound is in that bucket (`le` is inclusive), its neighbour above in
# the next one.
EDGES = sorted(
    {0.0, 61.0, 1e6}
    | {float(b) for b in HTTP_BUCKETS}
    | {math.nextafter(b, math.inf) for b in HTTP_BUCKETS}
    | {math.nextafter(b, -math.inf) for b in HTTP_BUCKETS}
)
# (event type, result, error code), and the labels the event and failure counters get.
EVENTS = [
    ((3, 1, None), ("3", "1"), None),
    ((14, 2, None), ("14", "2"), None),
    ((800, 9, None), ("other", "other"), None),
    ((3, 0, None), ("3", "0"), "none"),
    ((3, 0, 0x10000009), ("3", "0"), "9"),
    ((13, 0, 12345), ("13", "0"), "other"),
]


def test_tallies_show_what_prometheus_client_itself_counts() -> None:
    """The same mixed observations, once through Metrics' hot path and once straight into
    prometheus_client's objects (a reference Metrics): every bucket, count and counter of the
    scrapes is the same, the sums too (to rounding: a flush adds a sum of several values).
    Catches bisect_right or `<` (a value on a bound in the next bucket), a missing +Inf bucket,
    counts lost or doubled at a flush, a sum left out, label values mapped otherwise; and, as
    prometheus_client has no public way to add n observations, pins the internals used
    (Histogram's per-bucket values and sum): it fails if that library changes them."""
    metrics, reference = Metrics(), Metrics()
    routes = [("/v1/update/", "POST"), ("/metrics", "GET")]
    outcomes = ["ok", "bad_request", "timeout"]
    for n, value in enumerate(EDGES):
        for _ in range(n % 3 + 1):  # some values several times
            outcome, (route, method) = outcomes[n % 3], routes[n % 2]
            metrics.count_omaha_request(outcome, value)
            reference.omaha_requests.labels(outcome).inc()
            reference.omaha_duration.observe(value)
            metrics.observe_http(route, method, value)
            reference.http_duration.labels(route, method).observe(value)
            metrics.count_check("noupdate", outcome)
            reference.update_checks.labels("noupdate", outcome).inc()
        if n == len(EDGES) // 2:  # a flush midway: what follows adds to it
            metrics.flush()
    for (event_type, result, code), labels, failure in EVENTS:
        metrics.count_event(event_type, result, code, "stable", "amd64")
        reference.events.labels(*labels).inc()
        if failure is not None:
            reference.failures.labels("stable", "amd64", failure).inc()

    got = samples(metrics.render().decode())
    want = samples(reference.render().decode())
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key[0].endswith("_sum"):
            assert got[key] == pytest.approx(value, rel=1e-12), key
        else:
            assert got[key] == value, key
    # Not vacuous: every bucket of the HTTP histogram has observations of its own.
    post = {("route", "/v1/update/"), ("method", "POST")}
    cumulative = [
        got[("nebula_http_request_duration_seconds_bucket", frozenset(post | {("le", le)}))]
        for le in map(floatToGoString, _bounds(HTTP_BUCKETS))
    ]
    assert all(a < b for a, b in itertools.pairwise(cumulative)), cumulative


def test_the_internals_a_flush_adds_to_are_what_observe_increments() -> None:
    """One observation per bucket into a plain Histogram: its `_buckets` (one value each,
    not cumulative) and `_sum` are what Histogram.observe changed, in the order of the bounds
    the tallies bisect. Catches a prometheus_client whose histograms keep their counts
    otherwise (cumulative, or elsewhere), with a message that says so."""
    buckets = (0.5, 1, 2)
    histogram = Histogram("h", "h", registry=CollectorRegistry(), buckets=buckets)
    bounds = _bounds(buckets)
    assert list(bounds) == histogram._upper_bounds
    parts, total = _histogram_parts(histogram)
    for value in (0.5, 1.0, 1.5, 9.0):
        histogram.observe(value)
    assert [v.get() for v in parts] == [1.0, 1.0, 1.0, 1.0]  # type: ignore[attr-defined]
    assert total.get() == 12.0  # type: ignore[attr-defined]


def test_a_scrape_in_one_process_is_exact_at_once() -> None:
    """Counts wait outside prometheus_client until a render, which shows them all at once;
    a second render adds only what came since. Catches a render that does not flush (a scrape
    a second behind), a flush that leaves what it added pending (counted twice), and a hot
    path that increments prometheus_client's values itself (the cost this avoids)."""
    metrics = Metrics()
    metrics.count_check("noupdate", "current")
    metrics.count_check("noupdate", "current")
    assert checks(metrics) == 0  # waiting in the tally
    key = (
        "nebula_update_checks_total",
        frozenset({("decision", "noupdate"), ("reason", "current")}),
    )
    assert samples(metrics.render().decode())[key] == 2
    metrics.count_check("noupdate", "current")
    assert samples(metrics.render().decode())[key] == 3


async def test_the_publish_loop_flushes(tmp_path: Path) -> None:
    """What waits reaches prometheus_client's values from the once-a-second loop, without a
    scrape. Catches a publish loop that does not flush (with workers, counts then wait for a
    scrape of that very worker)."""
    metrics = Metrics()
    engine = db.create_engine(f"sqlite:///{tmp_path / 'unused.db'}")
    metrics.count_check("noupdate", "current")
    assert checks(metrics) == 0
    task = asyncio.create_task(publish_gauges(HostCache(), engine, metrics, every=0.01))
    try:
        async with asyncio.timeout(BOUND):
            while checks(metrics) == 0:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await engine.dispose()
    assert checks(metrics) == 1


async def test_the_app_flushes_at_cleanup(settings: Settings, clock: FakeClock) -> None:
    """What the app counted just before it stops reaches prometheus_client's values in its
    cleanup (with workers: the worker's files, which outlive it). Catches a cleanup without
    the flush."""
    server = TestServer(create_app(settings, clock=clock))
    await server.start_server()
    metrics = server.app[METRICS]
    try:
        metrics.count_check("noupdate", "current")
        assert checks(metrics) == 0
    finally:
        await server.close()
    assert checks(metrics) == 1


def _run_worker(script: str, directory: str, *args: str) -> str:
    """`script` in a process of its own, as a worker of `nebula serve --workers N` runs:
    PROMETHEUS_MULTIPROC_DIR set before prometheus_client is imported."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), directory, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


OK = frozenset({("outcome", "ok")})
CURRENT = frozenset({("decision", "noupdate"), ("reason", "current")})


def test_with_workers_counts_reach_the_files_when_the_loop_turns(tmp_path: Path) -> None:
    """A worker's counts are in its files once its event loop has turned after them (one
    flush for all it answered in that turn), not only at its own scrapes or a second later:
    a scrape answered by another worker right after the answer shows them. Catches a worker
    that flushes only at render and once a second (the two-worker test then sees a request
    missing), and a hot path writing to the files at every count."""
    script = """
        import asyncio, json, sys
        from nebula.metrics import Metrics
        from tests.test_metrics_tally import in_files

        directory = sys.argv[1]
        metrics = Metrics(multiprocess_dir=directory)

        def rows(samples):
            return [[name, sorted(labels), v] for (name, labels), v in samples.items()]

        async def main():
            metrics.count_omaha_request("ok", 0.002)
            metrics.count_check("noupdate", "current")
            metrics.count_event(3, 0, None, "stable", "amd64")
            metrics.observe_http("/v1/update/", "POST", 0.0025)
            before = rows(in_files(directory))
            await asyncio.sleep(0)
            print(json.dumps([before, rows(in_files(directory))]))

        asyncio.run(main())
    """
    out = _run_worker(script, str(tmp_path))
    before, after = (
        {(name, frozenset(map(tuple, labels))): value for name, labels, value in s}
        for s in json.loads(out)
    )
    assert before.get(("nebula_omaha_requests_total", OK), 0) == 0
    assert before.get(("nebula_update_checks_total", CURRENT), 0) == 0
    assert after[("nebula_omaha_requests_total", OK)] == 1
    assert after[("nebula_update_checks_total", CURRENT)] == 1
    assert after[("nebula_events_total", frozenset({("type", "3"), ("result", "0")}))] == 1
    failure = frozenset({("group", "stable"), ("arch", "amd64"), ("code", "none")})
    assert after[("nebula_update_failures_total", failure)] == 1
    omaha = "nebula_omaha_request_duration_seconds"
    assert after[(omaha + "_bucket", frozenset({("le", "0.001")}))] == 0
    assert after[(omaha + "_bucket", frozenset({("le", "0.0025")}))] == 1
    assert after[(omaha + "_count", frozenset())] == 1
    assert after[(omaha + "_sum", frozenset())] == 0.002
    http = "nebula_http_request_duration_seconds"
    route = {("route", "/v1/update/"), ("method", "POST")}
    assert after[(http + "_bucket", frozenset(route | {("le", "0.001")}))] == 0
    assert after[(http + "_bucket", frozenset(route | {("le", "0.0025")}))] == 1  # on the bound


def test_with_workers_nothing_counted_is_lost_when_a_worker_exits(
    tmp_path: Path, sqlite_template: Path, key_file: Path
) -> None:
    """A worker's app answers a check-in and a health check and shuts down, never scraped:
    its files have the counts. Catches a worker whose tallies wait for a scrape or for the
    once-a-second loop and die with it."""
    db_path = tmp_path / "nebula.db"
    shutil.copy(sqlite_template, db_path)
    directory = tmp_path / "metrics"
    directory.mkdir()
    script = """
        import asyncio, sys
        from pathlib import Path
        from aiohttp.test_utils import TestClient, TestServer
        from nebula.web.access import RequestLog
        from nebula.web.app import create_app
        from tests.factories import Host, make_settings

        directory, db_url, tmp, key = sys.argv[1:]

        async def main():
            settings = make_settings(db_url, Path(tmp), Path(key))
            server = TestServer(create_app(settings, multiprocess_dir=directory))
            await server.start_server(access_log_class=RequestLog)
            async with TestClient(server) as client:
                resp = await client.post("/v1/update/", data=Host(machine_id="a" * 32).check())
                assert resp.status == 200, await resp.text()
                assert (await client.get("/healthz")).status == 200

        asyncio.run(main())
    """
    _run_worker(script, str(directory), f"sqlite:///{db_path}", str(tmp_path), str(key_file))
    files = in_files(str(directory))
    assert files[("nebula_omaha_requests_total", OK)] == 1
    assert sum(v for (n, _), v in files.items() if n == "nebula_update_checks_total") == 1
    http = "nebula_http_request_duration_seconds_count"
    assert sum(v for (n, _), v in files.items() if n == http) == 2
