"""Every Prometheus metric of Nebula, defined once, namespace "nebula", with bounded labels.

Label values come from fixed sets (request kinds, decisions, statuses) or from operator-made
names (groups), never from what a host sends: an unknown event type is counted as "other".
Imports nothing of Nebula. Instance counts per status are gauges read from the database at
scrape time by nebula.web.status (see `InstanceCounts`).

With several workers (`nebula serve --workers N`) every worker counts into files of its own in
the directory the parent made (prometheus_client's multiprocess mode: the parent puts
PROMETHEUS_MULTIPROC_DIR into each worker's environment, so values are file-backed from the
first import), and whichever worker answers a scrape sums all of them: counters and histograms
are totals over the workers, including workers that have exited since (a counter never goes
back), `nebula_leader` is the sum over the live ones. The process_* metrics describe one
process, so they are left out there; gauges read from the database are the same from any worker.

What every Omaha request counts (`count_omaha_request`, `count_check`, `count_event`,
`observe_http`) first waits in a plain dict of this object, by what it will be added to (a
counter's child; a histogram child's bucket, found with bisect, or its sum), not in
prometheus_client's values, whose every increment takes a lock (and with workers writes to a
file). `flush` adds what waits to them:
- at every `render`, so that a scrape of a single process is always exact;
- once a second from the app's publish loop (a value read from prometheus_client's objects
  rather than a render may be that much behind), and at the app's cleanup so that nothing is
  lost;
- with workers, also once per turn of the event loop that counted (one flush for all the
  requests answered in that turn): a scrape answered by another worker sees a request's counts
  once its worker's loop has turned after it, not up to a second later.
Only the event loop's thread counts and flushes: the tallies have no lock.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Sequence
from functools import cache
from math import inf
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

KNOWN_EVENT_TYPES = frozenset({"3", "13", "14"})
KNOWN_RESULTS = frozenset({"0", "1", "2"})
# Base error codes worth a label of their own (contract §3); the rest count as "other".
KNOWN_ERROR_CODES = frozenset({"5", "9", "10", "11", "18", "34", "44"})

OMAHA_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60)


class _Adds(Protocol):
    """What a flush adds to: a counter (or its child), or one value of a histogram."""

    def inc(self, amount: float) -> None: ...


def _bounds(buckets: Sequence[float]) -> tuple[float, ...]:
    """A histogram's upper bounds as Histogram keeps them: floats, +Inf last. bisect_left on
    them finds the first bound >= a value, its bucket (`le` is inclusive, as in
    Histogram.observe; a NaN would land in the first bucket there, in none in Histogram: the
    values observed are durations, never NaN)."""
    return (*map(float, buckets), inf)


def _histogram_parts(histogram: Histogram) -> tuple[Sequence[_Adds], _Adds]:
    """The per-bucket values (not cumulative) and the sum that Histogram.observe increments.
    prometheus_client has no public way to add several observations at once, so the tallies
    add to these: tests/test_metrics_tally.py pins that this is what observe does."""
    return histogram._buckets, histogram._sum


class Metrics:
    """One set of metrics on its own registry, so that tests and several apps do not collide."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        version: str = "",
        multiprocess_dir: str | None = None,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # What a scrape renders: this process's registry, or with workers the sum of all of
        # theirs (their files) plus what is the same in every process (build info, gauges read
        # from the database at scrape time; see `register`).
        self.exposed = r
        if multiprocess_dir is None:
            # process_* (CPU, memory, open files) and python_info, as the default registry has.
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        else:
            self.exposed = CollectorRegistry()
            MultiProcessCollector(self.exposed, path=multiprocess_dir)  # type: ignore[no-untyped-call]
            PlatformCollector(registry=self.exposed)
        self.build = Info("nebula_build", "Nebula's version", registry=r)
        self.build.info({"version": version})
        if self.exposed is not r:
            self.exposed.register(self.build)  # an Info is not file-backed: the same everywhere
        self.omaha_requests = Counter(
            "nebula_omaha_requests_total",
            "Omaha requests by outcome",
            ["outcome"],
            registry=r,  # ok, bad_request, too_large, timeout, error
        )
        self.omaha_duration = Histogram(
            "nebula_omaha_request_duration_seconds",
            "Time to answer an Omaha request",
            registry=r,
            buckets=OMAHA_BUCKETS,
        )
        self.update_checks = Counter(
            "nebula_update_checks_total",
            "Update checks by decision and reason",
            ["decision", "reason"],
            registry=r,
        )
        self.grants = Counter(
            "nebula_updates_granted_total",
            "New update grants by group and arch",
            ["group", "arch"],
            registry=r,
        )
        self.events = Counter(
            "nebula_events_total", "Events hosts reported", ["type", "result"], registry=r
        )
        self.failures = Counter(
            "nebula_update_failures_total",
            "Failure events by group, arch and base error code",
            ["group", "arch", "code"],
            registry=r,
        )
        self.payload_requests = Counter(
            "nebula_payload_requests_total",
            "Payload file requests by HTTP status",
            ["status"],
            registry=r,
        )
        self.payload_bytes = Counter(
            "nebula_payload_bytes_sent_total",
            "Payload bytes handed to the network, counted as they are written (an aborted "
            "download counts what went out, not its Content-Length)",
            registry=r,
        )
        self.http_duration = Histogram(
            "nebula_http_request_duration_seconds",
            "Time from a request's arrival to the last byte of its answer, by route pattern",
            ["route", "method"],
            registry=r,
            buckets=HTTP_BUCKETS,
        )
        self.db_pool_in_use = Gauge(
            "nebula_db_pool_connections_in_use",
            "Database connections checked out of the pool (summed over a server's workers)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.db_pool_waiting = Gauge(
            "nebula_db_pool_waiting",
            "Transactions waiting for a connection of the pool (summed over a server's workers)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.checkin_batch_size = Histogram(
            "nebula_checkin_batch_size",
            "Steady-state check-ins written per batch",
            registry=r,
            buckets=(1, 10, 100, 1000, 5000, 20000, 50000),
        )
        self.checkin_flush_seconds = Histogram(
            "nebula_checkin_flush_seconds",
            "Time to write one batch of steady-state check-ins",
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
        )
        self.uploads = Counter(
            "nebula_payload_uploads_total", "Payload uploads by outcome", ["outcome"], registry=r
        )
        self.leader = Gauge(
            "nebula_leader",
            "1 in the process that runs the deployment's jobs (timeout sweep, retirement, event "
            "retention); summed over a server's workers, and over replicas it must be 1",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.host_cache_lookups = Counter(
            "nebula_host_cache_lookups_total",
            "Update checks whose host state was in the process's memory (hit) or was read from "
            "the database (miss)",
            ["result"],
            registry=r,
        )
        self.host_cache_hosts = Gauge(
            "nebula_host_cache_hosts",
            "Hosts held in the host cache (summed over a server's workers)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._cache_seen = (0, 0)
        self.sweeps = Counter(
            "nebula_timeout_sweeps_total", "Passes of the timeout sweeper", registry=r
        )
        # The children a check-in counts into, by label values (positional, in the labels'
        # order): labels() validates its arguments and takes a lock on every call, 3% of a
        # steady check-in's CPU. Every label set is bounded, so what is kept is too.
        self._request_child = cache(self.omaha_requests.labels)
        self._check_child = cache(self.update_checks.labels)
        self._grant_child = cache(self.grants.labels)
        self._event_child = cache(self.events.labels)
        self._failure_child = cache(self.failures.labels)
        self._omaha_bounds = _bounds(OMAHA_BUCKETS)
        self._omaha_parts = _histogram_parts(self.omaha_duration)
        self._http_bounds = _bounds(HTTP_BUCKETS)

        @cache
        def http_parts(route: str, method: str) -> tuple[Sequence[_Adds], _Adds]:
            return _histogram_parts(self.http_duration.labels(route, method))

        self._http_parts = http_parts
        # What the hot path counted and a flush has yet to add, by what it is added to (a
        # counter's child, a histogram child's bucket or sum): the keys are as bounded as the
        # label sets, and a flush needs no lookup.
        self._pending: dict[_Adds, float] = {}
        # True when a count must ask the event loop for a flush: with workers, while none is
        # asked for; never in a single process, where only its own scrape reads the values.
        self._unscheduled = multiprocess_dir is not None

    def register(self, collector: Collector) -> None:
        """A collector whose values are the same in every process (read from the database)."""
        self.registry.register(collector)
        if self.exposed is not self.registry:
            self.exposed.register(collector)

    def render(self) -> bytes:
        """The text exposition of everything a scrape shows, this process's tallies included."""
        self.flush()
        return generate_latest(self.exposed)

    def flush(self) -> None:
        """Move what the hot path tallied into the metrics (with workers: into this worker's
        files, where every worker's scrape reads it)."""
        pending = self._pending
        for target, amount in pending.items():
            target.inc(amount)
        pending.clear()

    def _schedule_flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop would run it (a script): now
            self.flush()
            return
        self._unscheduled = False
        loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._unscheduled = True
        self.flush()

    def observe_batch(self, size: int, seconds: float) -> None:
        """One flush of coalesced check-ins (nebula.store.seen)."""
        self.checkin_batch_size.observe(size)
        self.checkin_flush_seconds.observe(seconds)

    def observe_host_cache(self, hits: int, misses: int, size: int) -> None:
        """The host cache's running totals (nebula.store.hostcache), published periodically:
        only what grew since the last call is added."""
        last_hits, last_misses = self._cache_seen
        if hits > last_hits:
            self.host_cache_lookups.labels(result="hit").inc(hits - last_hits)
        if misses > last_misses:
            self.host_cache_lookups.labels(result="miss").inc(misses - last_misses)
        self._cache_seen = (hits, misses)
        self.host_cache_hosts.set(size)

    def observe_pool(self, in_use: int, waiting: int) -> None:
        """The database pool of this process (nebula.store.db.pool_usage), published
        periodically and at each scrape."""
        self.db_pool_in_use.set(in_use)
        self.db_pool_waiting.set(waiting)

    def count_omaha_request(self, outcome: str, seconds: float) -> None:
        """One Omaha request answered with `outcome` after `seconds`."""
        pending = self._pending
        counter = self._request_child(outcome)
        pending[counter] = pending.get(counter, 0) + 1
        buckets, total = self._omaha_parts
        bucket = buckets[bisect_left(self._omaha_bounds, seconds)]
        pending[bucket] = pending.get(bucket, 0) + 1
        pending[total] = pending.get(total, 0) + seconds
        if self._unscheduled:
            self._schedule_flush()

    def count_check(self, decision: str, reason: str) -> None:
        """One app's update check and what was decided."""
        pending = self._pending
        counter = self._check_child(decision, reason)
        pending[counter] = pending.get(counter, 0) + 1
        if self._unscheduled:
            self._schedule_flush()

    def count_grant(self, group: str, arch: str) -> None:
        """One new grant in `group` (its name) and `arch`."""
        self._grant_child(group, arch).inc()

    def observe_http(self, route: str, method: str, seconds: float) -> None:
        """One HTTP request of `route` (its pattern) answered in `seconds`."""
        pending = self._pending
        buckets, total = self._http_parts(route, method)
        bucket = buckets[bisect_left(self._http_bounds, seconds)]
        pending[bucket] = pending.get(bucket, 0) + 1
        pending[total] = pending.get(total, 0) + seconds
        if self._unscheduled:
            self._schedule_flush()

    def count_event(
        self, event_type: int, result: int, error_code: int | None, group: str, arch: str
    ) -> None:
        """One event a host reported in `group` (its name) and `arch`."""
        t = str(event_type)
        res = str(result)
        pending = self._pending
        counter = self._event_child(
            t if t in KNOWN_EVENT_TYPES else "other",
            res if res in KNOWN_RESULTS else "other",
        )
        pending[counter] = pending.get(counter, 0) + 1
        if result == 0:
            code = "none" if error_code is None else str(error_code & 0x0FFFFFFF)
            counter = self._failure_child(
                group,
                arch,
                code if code in KNOWN_ERROR_CODES or code == "none" else "other",
            )
            pending[counter] = pending.get(counter, 0) + 1
        if self._unscheduled:
            self._schedule_flush()
