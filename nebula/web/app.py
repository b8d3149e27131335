"""The aiohttp application factory: wires settings, database, catalog, service and routes.

`create_app(settings)` returns an application whose cleanup context opens the database engine
(migrating it first when settings.migrate is on), prepares the payload store and disposes of
everything on shutdown. Tests hand in their own engine and clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula import __version__
from nebula.config import Settings
from nebula.durations import parse_duration
from nebula.errors import ConfigError
from nebula.jobs.history import run_history
from nebula.jobs.leader import Job, Leader
from nebula.jobs.retention import retention_ages, run_retention
from nebula.jobs.retirement import INTERVAL, run_retirement
from nebula.jobs.sweeper import run_sweeper
from nebula.metrics import Metrics
from nebula.payload import TrustedKey, default_trusted_keys, load_trusted_key
from nebula.service import OmahaService
from nebula.store import db
from nebula.store.blobs import BlobStore
from nebula.store.catalog import CatalogCache
from nebula.store.changes import HostChanges
from nebula.store.hostcache import HostCache
from nebula.store.seen import SeenWriter
from nebula.sysext import admin as sysext_admin
from nebula.sysext import hosts as sysext_hosts
from nebula.web import (
    admin,
    eventlog,
    ignition,
    instances,
    integrity,
    omaha,
    payloads,
    release,
    rollout,
    status,
    tokens,
)
from nebula.web.access import echo_request_id
from nebula.web.api import security_headers
from nebula.web.edge import add_prepare_hook, edge_middleware
from nebula.web.errors import OUTAGE_LOG, LogThrottle
from nebula.web.forwarded import parse_networks
from nebula.web.keys import (
    AUTH_FAILURES,
    BLOBS,
    CATALOG,
    CLOCK,
    ENGINE,
    HOST_CACHE,
    HOST_CHANGES,
    LEADER,
    METRICS,
    READ_SESSIONS,
    SERVICE,
    SESSIONS,
    SETTINGS,
    TRUSTED_KEYS,
    TRUSTED_PROXIES,
)
from nebula.web.openapi import document as openapi_document
from nebula.web.ratelimit import FailureLimiter

log = logging.getLogger(__name__)


def load_keys(settings: Settings) -> list[TrustedKey]:
    keys = default_trusted_keys() if settings.trust_flatcar_key else []
    for path in settings.trusted_key:
        try:
            pem = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"trusted key {path}: {exc.strerror}") from None
        keys.append(load_trusted_key(pem, Path(path).name))
    if not keys:
        raise ConfigError("no trusted payload keys: every upload would be refused")
    return keys


def utcnow() -> datetime:
    return datetime.now(UTC)


async def publish_gauges(
    hosts: HostCache, engine: AsyncEngine, metrics: Metrics, every: float = 1.0
) -> None:
    """The host cache counts in plain ints on the hot path, the pool's use is the pool's, and
    the metrics' own tallies wait for a flush: all reach the metrics here (and at each scrape),
    so that with several workers each one's share is in its files."""
    while True:
        await asyncio.sleep(every)
        metrics.observe_host_cache(hosts.hits, hosts.misses, len(hosts))
        metrics.observe_pool(*db.pool_usage(engine))
        metrics.flush()


def create_app(
    settings: Settings,
    *,
    engine: AsyncEngine | None = None,
    clock: Callable[[], datetime] = utcnow,
    multiprocess_dir: str | None = None,
) -> web.Application:
    """The app; `multiprocess_dir` is where a worker of several counts its metrics."""
    app = web.Application(
        middlewares=[edge_middleware],
        client_max_size=1 << 20,
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics(version=__version__, multiprocess_dir=multiprocess_dir)
    app[CLOCK] = clock
    app[TRUSTED_KEYS] = load_keys(settings)
    app[BLOBS] = BlobStore(settings.payload_dir)
    app[TRUSTED_PROXIES] = parse_networks(settings.trusted_proxy)
    app[AUTH_FAILURES] = FailureLimiter(settings.auth_failure_limit, settings.auth_failure_window)
    app[OUTAGE_LOG] = LogThrottle(10.0)
    add_prepare_hook(app, echo_request_id)
    add_prepare_hook(app, security_headers)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        own_engine = engine is None
        eng = engine or db.create_engine(settings.db, settings.db_pool_size)
        try:
            await db.check_connection(eng)  # one line, not a traceback, if it is not there
            if settings.migrate:
                await db.upgrade(eng)
            app[BLOBS].prepare()
            sessions = db.session_factory(eng)
            read_sessions = db.session_factory(eng, read_only=True)
            catalog = CatalogCache(read_sessions, settings.host_base_url, settings.cache_ttl)
            hosts = HostCache(settings.host_cache_size)
            changes = HostChanges(hosts, eng.dialect.name, on_catalog=catalog.expire)
            metrics = app[METRICS]
            seen = SeenWriter(sessions, settings.checkin_interval, observe=metrics.observe_batch)
            app[READ_SESSIONS] = read_sessions
            app[ENGINE] = eng
            app[SESSIONS] = sessions
            app[CATALOG] = catalog
            app[HOST_CHANGES] = changes
            app[HOST_CACHE] = hosts
            app[SERVICE] = OmahaService(
                sessions,
                catalog,
                metrics,
                settings.poll_interval,
                read_sessions=read_sessions,
                hosts=hosts,
                changes=changes,
                seen=seen,
            )
            await catalog.get()  # fail at start, not on the first host, if the schema is wrong
            # The sweep and retention run once per deployment: in the process that leads.
            jobs: list[Job] = [
                lambda: run_sweeper(
                    sessions,
                    catalog,
                    clock,
                    settings.sweep_interval,
                    changes,
                    observe=metrics.sweeps.inc,
                )
            ]
            jobs.append(
                lambda: run_retirement(
                    sessions, clock, min(settings.sweep_interval, INTERVAL), changes
                )
            )
            ages = retention_ages(settings)
            jobs.append(lambda: run_retention(sessions, clock, ages))
            jobs.append(
                lambda: run_history(
                    sessions,
                    clock,
                    settings.history_interval,
                    parse_duration(settings.history_retention),
                )
            )
            leader = Leader(
                None if db.is_sqlite(eng) else eng.url.render_as_string(hide_password=False),
                jobs,
                names="the timeout sweep, retirement, retention and rollout history",
                on_change=lambda leading: metrics.leader.set(1 if leading else 0),
            )
            app[LEADER] = leader
            tasks = [
                asyncio.create_task(leader.run()),
                asyncio.create_task(seen.run()),
                asyncio.create_task(publish_gauges(hosts, eng, metrics)),
            ]
            if eng.dialect.name == "postgresql":
                tasks.append(asyncio.create_task(changes.listen(settings.db)))
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await app[SERVICE].close()  # grants being written are answered first
                # What steady-state check-ins are pending reaches the database before the
                # engine goes: a clean shutdown loses no last-seen time.
                try:
                    await seen.flush()
                except Exception as exc:
                    log.error("last-seen times of %d hosts lost at shutdown: %s", len(seen), exc)
                metrics.flush()  # with workers, into this one's files: the totals keep them
        finally:
            if own_engine:
                await eng.dispose()

    app.cleanup_ctx.append(resources)
    omaha.add_routes(app)
    payloads.add_routes(app)
    ignition.add_routes(app)
    release.add_routes(app)
    sysext_hosts.add_routes(app)
    status.add_routes(app)
    integrity.add_routes(app)
    admin.add_routes(app)
    rollout.add_routes(app)
    instances.add_routes(app)
    eventlog.add_routes(app)
    tokens.add_routes(app)
    sysext_admin.add_routes(app)
    openapi_document.add_routes(app)
    return app
