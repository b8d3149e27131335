"""Typed keys for what the aiohttp application holds. Imports only types."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from nebula.config import Settings
from nebula.jobs.leader import Leader
from nebula.metrics import Metrics
from nebula.payload import TrustedKey
from nebula.service import OmahaService
from nebula.store.blobs import BlobStore
from nebula.store.catalog import CatalogCache
from nebula.store.changes import HostChanges
from nebula.store.hostcache import HostCache
from nebula.web.forwarded import Network
from nebula.web.ratelimit import FailureLimiter

SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", AsyncEngine)
SESSIONS: web.AppKey[async_sessionmaker[AsyncSession]] = web.AppKey("sessions")
# Sessions for transactions that only read: on SQLite they do not queue behind writers.
READ_SESSIONS: web.AppKey[async_sessionmaker[AsyncSession]] = web.AppKey("read_sessions")
CATALOG = web.AppKey("catalog", CatalogCache)
SERVICE = web.AppKey("service", OmahaService)
# Where changes to hosts made outside the Omaha transaction (holds, sweeps) are announced.
HOST_CHANGES = web.AppKey("host_changes", HostChanges)
METRICS = web.AppKey("metrics", Metrics)
# Per-process snapshots of hosts' state (published to the metrics by nebula.web.app).
HOST_CACHE = web.AppKey("host_cache", HostCache)
# Whether this process runs the once-per-deployment jobs.
LEADER = web.AppKey("leader", Leader)
BLOBS = web.AppKey("blobs", BlobStore)
TRUSTED_KEYS: web.AppKey[Sequence[TrustedKey]] = web.AppKey("trusted_keys")
TRUSTED_PROXIES: web.AppKey[tuple[Network, ...]] = web.AppKey("trusted_proxies")
CLOCK: web.AppKey[Callable[[], datetime]] = web.AppKey("clock")
# Bad admin tokens per address, in this process's memory.
AUTH_FAILURES = web.AppKey("auth_failures", FailureLimiter)
