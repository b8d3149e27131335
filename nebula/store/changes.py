"""The host change feed: every process hears when any process changed a host's state, and drops
its cached snapshot (nebula.store.hostcache).

A transaction that changes hosts calls `announce` before it commits: on PostgreSQL that is a
NOTIFY on one channel, delivered to every listening process at commit (and never when the
transaction rolls back). After the commit the caller calls `applied`, which updates this
process's own cache at once. Each process LISTENs on a connection of its own; while that
connection is down nothing is cached (the feed may have missed changes), and when it comes back
the cache starts empty. SQLite serves one process, whose own `applied` calls are the whole feed.
The same connection hears catalog changes (CATALOG_CHANNEL) and passes them on to a callback.
Imports nebula.store.hostcache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from nebula.store.hostcache import HostCache, Snapshot

log = logging.getLogger(__name__)

CHANNEL = "nebula_hosts"
CATALOG_CHANNEL = "nebula_catalog"  # notified by nebula.store.catalog.bump_stamp
# NOTIFY payloads are limited to 8000 bytes: machine ids go in chunks well below that.
_CHUNK = 100
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


class HostChanges:
    """This process's side of the feed."""

    def __init__(
        self, cache: HostCache, dialect: str, on_catalog: Callable[[], None] | None = None
    ) -> None:
        self.cache = cache
        # Called when another process changed the catalog (nebula.store.catalog.bump_stamp),
        # and whenever the feed (re)connects, since changes may have gone unheard meanwhile.
        self.on_catalog = on_catalog or (lambda: None)
        self.dialect = dialect
        self.origin = secrets.token_hex(8)  # to recognize (and skip) our own notifications
        self.received = 0
        if dialect == "postgresql":
            cache.suspend()  # until the listener is connected

    async def announce(self, session: AsyncSession, machine_ids: Sequence[str]) -> None:
        """Inside the transaction that changes these hosts, before it commits."""
        if self.dialect != "postgresql" or not machine_ids:
            return
        for start in range(0, len(machine_ids), _CHUNK):
            chunk = ",".join(machine_ids[start : start + _CHUNK])
            await session.execute(
                _NOTIFY, {"channel": CHANNEL, "payload": f"{self.origin}:{chunk}"}
            )

    def applied(
        self,
        machine_ids: Sequence[str],
        snapshots: dict[str, Snapshot] | None = None,
        since: int = 0,
    ) -> None:
        """After the commit: keep the committed snapshots (see HostCache.replace), forget the
        hosts whose new state this process does not know."""
        for machine_id in machine_ids:
            entry = snapshots.get(machine_id) if snapshots else None
            if entry is None:
                self.cache.evict((machine_id,))
            else:
                self.cache.replace(machine_id, entry, since)

    def on_notify(self, payload: str) -> None:
        origin, _, ids = payload.partition(":")
        self.received += 1
        if origin != self.origin and ids:
            self.cache.evict(ids.split(","))

    async def listen(self, db_url: str, retry: float = 2.0, keepalive: float = 30.0) -> None:
        """Keep a LISTEN connection until cancelled; reconnect when it drops."""
        import asyncpg  # type: ignore[import-untyped]  # only PostgreSQL deployments need it

        dsn = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
        warned = False
        while True:
            conn: Any = None
            try:
                conn = await asyncpg.connect(dsn, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, lambda _c, _pid, _ch, p: self.on_notify(p))
                await conn.add_listener(CATALOG_CHANNEL, lambda *_: self.on_catalog())
                self.cache.resume()
                self.on_catalog()
                if warned:
                    log.info("host change feed connected again: caching host state")
                warned = False
                while not lost.is_set():
                    # A connection cut without a word (a partition) shows only when used.
                    try:
                        await asyncio.wait_for(lost.wait(), timeout=keepalive)
                    except TimeoutError:
                        await conn.fetchval("SELECT 1", timeout=5)
                raise ConnectionError("connection closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.cache.suspend()
                if not warned:
                    log.warning(
                        "host change feed unavailable (%s): every check reads the host's state "
                        "from the database until it is back",
                        exc,
                    )
                    warned = True
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            await asyncio.sleep(retry)
