"""Operational routes, no token: `/healthz` (the process answers), `/readyz` (the database too),
`/metrics` (Prometheus; behind `metrics_token` when one is set). Host counts per group,
version and status come from the status_counts rows the server maintains as statuses change
(never a scan of the hosts), read again at most every few seconds so that several scrapers cost
one read. Retired hosts are out of those counts (nebula.jobs.retirement): the fleet /metrics
shows is the live one. The policy holds, which need each group's rollout status, are read
beside the scrapes, at most every _HOLDS_TTL seconds, so that a scrape never waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select, text

from nebula.errors import AuthError
from nebula.store.catalog import Catalog
from nebula.store.counts import fleet_counts
from nebula.store.db import pool_usage, transaction
from nebula.store.models import Group
from nebula.store.rollouts import AUTOMATIC, policy_of, reboot_wait, rollout_status
from nebula.versions import try_parse_version
from nebula.web.keys import CATALOG, CLOCK, ENGINE, HOST_CACHE, METRICS, READ_SESSIONS, SETTINGS

_COUNTS_TTL = 10.0
_HOLDS_TTL = 30.0

log = logging.getLogger(__name__)
# Versions labelled one by one per group and status; the rarer ones (and whatever does not
# parse as a version: hosts send anything) are summed under "other", so that a host cannot
# make the label set grow. Hosts that sent no version are "unknown".
MAX_VERSIONS_PER_GROUP = 20
PAUSE_KINDS = ("operator", "failure_gate")

InstanceRow = tuple[str, str, str, str, str, str, int]  # app, group, arch, channel, version, status


def version_labels(rows: list[tuple[str, str | None, int]]) -> dict[str | None, str]:
    """The label of each version of one group ({version: label}), from (status, version, hosts)
    rows: the MAX_VERSIONS_PER_GROUP versions with the most hosts keep their name."""
    hosts: Counter[str] = Counter()
    for _, version, n in rows:
        if version is not None and try_parse_version(version) is not None:
            hosts[version] += n
    kept = {v for v, _ in hosts.most_common(MAX_VERSIONS_PER_GROUP)}
    labels: dict[str | None, str] = {None: "unknown"}
    for _, version, _ in rows:
        if version is not None:
            labels[version] = version if version in kept else "other"
    return labels


def on_target(version: str | None, target: str) -> bool:
    """Whether a host on `version` runs `target` (3815.2.0 and 3815.2.0+0 alike)."""
    if version == target:
        return True
    have = try_parse_version(version)
    return have is not None and have == try_parse_version(target)


class InstanceCounts(Collector):
    """The fleet as /metrics shows it, read from the database by `_refresh_counts` (at most
    every _COUNTS_TTL seconds) and rebuilt at each scrape from what was read: a label set that
    is no longer read (a version nobody runs, a deleted group) is gone from the next scrape.

    Registered on the exposed registry itself, never in a worker's files: every worker reads
    the same rows, and a sum over the workers would multiply them."""

    def __init__(self) -> None:
        self.rows: list[InstanceRow] = []
        self.paused: list[tuple[str, str, str | None]] = []  # group, arch, pause kind or None
        self.overdue: list[tuple[str, str, int]] = []
        self.progress: list[tuple[str, str, float]] = []
        self.holds: list[tuple[str, str, str, int]] = []
        self.at = -math.inf  # never read (monotonic time counts from boot: 0 may be recent)
        self.holds_at = 0.0  # 0: never read
        self.holds_task: asyncio.Task[None] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "nebula_instances",
            "Hosts by application, group, arch, channel, version and update status; retired "
            "hosts (silent longer than their group's retire_after) are not counted",
            labels=["app", "group", "arch", "channel", "version", "status"],
        )
        for app, group, arch, channel, version, status, n in self.rows:
            family.add_metric([app, group, arch, channel, version, status], n)
        yield family
        paused = GaugeMetricFamily(
            "nebula_group_paused",
            "1 while a group's updates are paused (by an operator or the failure gate)",
            labels=["group", "arch"],
        )
        kinds = GaugeMetricFamily(
            "nebula_rollout_paused",
            "1 while a group's updates are paused, by the kind of pause: operator or "
            "failure_gate (each group has both series, at most one of them 1)",
            labels=["group", "arch", "kind"],
        )
        for group, arch, kind in self.paused:
            paused.add_metric([group, arch], 0 if kind is None else 1)
            for k in PAUSE_KINDS:
                kinds.add_metric([group, arch, k], 1 if kind == k else 0)
        yield paused
        yield kinds
        progress = GaugeMetricFamily(
            "nebula_rollout_progress_ratio",
            "Hosts running the group's target version over the group's hosts (groups with a "
            "target and hosts only)",
            labels=["group", "arch"],
        )
        for group, arch, ratio in self.progress:
            progress.add_metric([group, arch], ratio)
        yield progress
        holds = GaugeMetricFamily(
            "nebula_policy_holds",
            "Hosts behind the group's target that the policy in force holds now, by reason "
            "(as `nebula rollout status` counts them)",
            labels=["group", "arch", "reason"],
        )
        for group, arch, reason, n in self.holds:
            holds.add_metric([group, arch, reason], n)
        yield holds
        overdue = GaugeMetricFamily(
            "nebula_reboot_overdue_instances",
            "Hosts installed and waiting for their reboot longer than their group's reboot "
            "timeout (a warning: their reboot strategy may never reboot them)",
            labels=["group", "arch"],
        )
        for group, arch, n in self.overdue:
            overdue.add_metric([group, arch], n)
        yield overdue


COUNTS = web.AppKey("instance_counts", InstanceCounts)


def _instance_rows(
    fleet: list[tuple[str, str, str, str, str, str | None, str, int]],
) -> list[InstanceRow]:
    by_group: dict[str, list[tuple[str, str | None, int]]] = defaultdict(list)
    for _, gid, _, _, _, version, status, n in fleet:
        by_group[gid].append((status, version, n))
    labels = {gid: version_labels(rows) for gid, rows in by_group.items()}
    summed: Counter[InstanceRow] = Counter()
    for app, gid, group, arch, channel, version, status, n in fleet:
        summed[(app, group, arch, channel, labels[gid][version], status, 0)] += n
    return [(*key[:6], n) for key, n in sorted(summed.items()) if n]


async def _refresh_counts(app: web.Application) -> None:
    collector = app[COUNTS]
    if time.monotonic() - collector.at < _COUNTS_TTL:
        return
    catalog = await app[CATALOG].get()
    now = app[CLOCK]()
    async with transaction(app[READ_SESSIONS]) as session:
        fleet = await fleet_counts(session)
        groups = (await session.execute(select(Group))).scalars().all()
        paused: list[tuple[str, str, str | None]] = []
        progress: list[tuple[str, str, float]] = []
        targets = {g.id: _target_of(catalog, g) for g in groups}
        hosts: Counter[str] = Counter()
        current: Counter[str] = Counter()
        for _, gid, _, _, _, version, _, n in fleet:
            hosts[gid] += n
            target = targets.get(gid)
            if target is not None and on_target(version, target):
                current[gid] += n
        for g in groups:
            kind = None
            if not g.updates_enabled:
                kind = "failure_gate" if g.paused_by == AUTOMATIC else "operator"
            paused.append((g.name, g.arch, kind))
            if targets[g.id] is not None and hosts[g.id]:
                progress.append((g.name, g.arch, current[g.id] / hosts[g.id]))
        # Only groups with a reboot timeout; each one read from the (group, status) index.
        overdue = [
            (g.name, g.arch, (await reboot_wait(session, g.id, policy_of(g), now)).overdue)
            for g in groups
            if g.reboot_timeout_seconds
        ]
    collector.rows = _instance_rows(fleet)
    collector.paused = paused
    collector.progress = progress
    collector.overdue = overdue
    collector.at = time.monotonic()


def _check_metrics_token(request: web.Request) -> None:
    """With metrics_token set, /metrics answers only a request that carries it (compared in
    constant time: a timing difference would give it away a byte at a time)."""
    expected = request.app[SETTINGS].metrics_token
    if not expected:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), expected.encode()
    ):
        raise AuthError("/metrics needs 'Authorization: Bearer <metrics_token>'")


async def _read_holds(app: web.Application) -> None:
    """nebula_policy_holds: per group with a target, the hosts its rollout status says the
    policy holds. Hosts held are known per host only; rollout status reads from its indexes
    just the hosts it must single out, yet that is tens of milliseconds per group at a million
    hosts: so this runs beside the scrapes (`_expire_holds`), never inside one."""
    collector = app[COUNTS]
    catalog = await app[CATALOG].get()
    now = app[CLOCK]()
    holds: list[tuple[str, str, str, int]] = []
    async with transaction(app[READ_SESSIONS]) as session:
        for g in (await session.execute(select(Group))).scalars().all():
            entry = catalog.groups.get((g.app_id, g.id, g.arch))
            if entry is None or entry.final is None:
                continue
            status = await rollout_status(session, g, entry.final, now, entry.floors)
            holds += [(g.name, g.arch, r, n) for r, n in sorted(status.held.items()) if n]
    collector.holds = holds
    collector.holds_at = time.monotonic()


def _expire_holds(app: web.Application) -> None:
    """Start reading the holds again when they are older than _HOLDS_TTL (and no read runs)."""
    collector = app[COUNTS]
    running = collector.holds_task
    if running is not None and not running.done():
        return
    if collector.holds_at and time.monotonic() - collector.holds_at < _HOLDS_TTL:
        return

    async def read() -> None:
        try:
            await _read_holds(app)
        except Exception:
            log.exception("cannot read the policy holds for /metrics")
            collector.holds_at = time.monotonic()  # not again at every scrape

    collector.holds_task = asyncio.create_task(read())


async def _stop_holds(app: web.Application) -> None:
    task = app[COUNTS].holds_task
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _target_of(catalog: Catalog, group: Group) -> str | None:
    entry = catalog.groups.get((group.app_id, group.id, group.arch))
    return entry.final if entry is not None else None


async def metrics(request: web.Request) -> web.Response:
    _check_metrics_token(request)
    app = request.app
    await _refresh_counts(app)
    _expire_holds(app)
    hosts = app.get(HOST_CACHE)
    if hosts is not None:
        app[METRICS].observe_host_cache(hosts.hits, hosts.misses, len(hosts))
    engine = app.get(ENGINE)
    if engine is not None:
        app[METRICS].observe_pool(*pool_usage(engine))
    body = app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(_request: web.Request) -> web.Response:
    # The pid tells an operator (and the tests) which worker answered.
    return web.json_response({"status": "ok", "pid": os.getpid()})


async def readyz(request: web.Request) -> web.Response:
    async with transaction(request.app[READ_SESSIONS]) as session:
        await session.execute(text("SELECT 1"))
    return web.json_response({"status": "ready"})


def add_routes(app: web.Application) -> None:
    counts = InstanceCounts()
    app[COUNTS] = counts
    app[METRICS].register(counts)
    app.on_shutdown.append(_stop_holds)  # before the engine goes
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
