"""Operational routes, no token: `/healthz` (the process answers), `/readyz` (the database too),
`/metrics` (Prometheus; behind `metrics_token` when one is set). Host counts per group and
status come from the status_counts rows the server maintains as statuses change (never a scan
of the hosts), cached for a few seconds so that several scrapers cost one query.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select, text

from nebula.errors import AuthError
from nebula.store.counts import counts_by_group
from nebula.store.db import transaction
from nebula.store.models import Group
from nebula.store.rollouts import policy_of, reboot_wait
from nebula.web.keys import CLOCK, HOST_CACHE, METRICS, READ_SESSIONS, SETTINGS

_COUNTS_TTL = 10.0


class InstanceCounts(Collector):
    """nebula_instances{group, arch, status}, nebula_group_paused{group, arch} and
    nebula_reboot_overdue_instances{group, arch}: filled by `_refresh_counts`, read by the
    registry."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, int]] = []
        self.paused: list[tuple[str, str, bool]] = []
        self.overdue: list[tuple[str, str, int]] = []
        self.at = 0.0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "nebula_instances",
            "Hosts by group and update status",
            labels=["group", "arch", "status"],
        )
        for group, arch, status, n in self.rows:
            family.add_metric([group, arch, status], n)
        yield family
        paused = GaugeMetricFamily(
            "nebula_group_paused",
            "1 while a group's updates are paused (by an operator or the failure gate)",
            labels=["group", "arch"],
        )
        for group, arch, is_paused in self.paused:
            paused.add_metric([group, arch], 1 if is_paused else 0)
        yield paused
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


async def _refresh_counts(app: web.Application) -> None:
    collector = app[COUNTS]
    if time.monotonic() - collector.at < _COUNTS_TTL:
        return
    async with transaction(app[READ_SESSIONS]) as session:
        collector.rows = await counts_by_group(session)
        groups = (await session.execute(select(Group))).scalars().all()
        collector.paused = [(g.name, g.arch, not g.updates_enabled) for g in groups]
        # Only groups with a reboot timeout; each one read from the (group, status) index.
        now = app[CLOCK]()
        collector.overdue = [
            (g.name, g.arch, (await reboot_wait(session, g.id, policy_of(g), now)).overdue)
            for g in groups
            if g.reboot_timeout_seconds
        ]
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


async def metrics(request: web.Request) -> web.Response:
    _check_metrics_token(request)
    app = request.app
    await _refresh_counts(app)
    hosts = app.get(HOST_CACHE)
    if hosts is not None:
        app[METRICS].observe_host_cache(hosts.hits, hosts.misses, len(hosts))
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
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
