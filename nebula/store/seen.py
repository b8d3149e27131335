"""Coalesced last-seen writes: a steady-state check-in is remembered here and written with all
the others of the last interval in one statement (SQLite: two, in one transaction).

Only the columns that say when and from where a host was last heard from are written
(instances.last_seen_at and ip, instance_apps.last_check_at and boot_id), never a status, so a
batch cannot undo what a transaction of any process decided. A batch entry older than what is
stored is skipped: the Omaha transaction of a later request of the same host has written newer
values already. On PostgreSQL the batch skips rows that such a transaction holds locked right
now (SKIP LOCKED: that transaction writes newer values), so it never waits on the hot path and
takes part in no deadlock. After a crash at most one interval of last-seen times is lost; a
clean shutdown flushes. Query functions never commit; `flush` runs its own transaction.
Imports nebula.store.db and nebula.store.models.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nebula.store.db import transaction
from nebula.store.models import UTCDateTime

log = logging.getLogger(__name__)


class Seen(NamedTuple):
    at: datetime
    ip: str | None
    boot_id: str | None
    checked: bool  # an update check (sets last_check_at); else a ping or event-only request


_PG_FLUSH = text(
    """
WITH v AS (
    SELECT * FROM unnest(
        CAST(:ids AS text[]), CAST(:apps AS text[]), CAST(:seen AS timestamptz[]),
        CAST(:ips AS text[]), CAST(:boots AS text[]), CAST(:checked AS boolean[])
    ) AS v(id, app, seen, ip, boot, checked)
),
inst AS (
    SELECT i.id, max(v.seen) AS seen
    FROM instances i JOIN v ON v.id = i.id
    WHERE i.last_seen_at < v.seen
    GROUP BY i.id
),
locked AS (
    SELECT i.id FROM instances i JOIN inst ON inst.id = i.id FOR UPDATE OF i SKIP LOCKED
),
apps AS (
    UPDATE instance_apps s
    SET boot_id = COALESCE(v.boot, s.boot_id),
        last_check_at = CASE WHEN v.checked THEN v.seen ELSE s.last_check_at END
    FROM v JOIN locked ON locked.id = v.id JOIN inst ON inst.id = v.id AND inst.seen = v.seen
    WHERE s.instance_id = v.id AND s.app_id = v.app
)
UPDATE instances i
SET last_seen_at = v.seen, ip = COALESCE(v.ip, i.ip)
FROM v JOIN locked ON locked.id = v.id JOIN inst ON inst.id = v.id AND inst.seen = v.seen
WHERE i.id = v.id
"""
)

# SQLite: one process writes (the in-process writer lock orders it with the Omaha
# transactions), so plain statements in one transaction are enough.
_SQLITE_APPS = text(
    "UPDATE instance_apps SET boot_id = COALESCE(:boot, boot_id), "
    "last_check_at = CASE WHEN :checked THEN :seen ELSE last_check_at END "
    "WHERE instance_id = :id AND app_id = :app "
    "AND (SELECT last_seen_at FROM instances WHERE id = :id) < :seen"
).bindparams(bindparam("seen", type_=UTCDateTime()))
_SQLITE_INSTANCES = text(
    "UPDATE instances SET last_seen_at = :seen, ip = COALESCE(:ip, ip) "
    "WHERE id = :id AND last_seen_at < :seen"
).bindparams(bindparam("seen", type_=UTCDateTime()))


# SQLite 3.38 and later (UPDATE ... FROM since 3.33, JSON built in since 3.38): the batch is
# one statement per table, its rows one JSON parameter that SQLite walks in C. executemany
# bound every row in Python holding the GIL, and the event loop, waiting for it on each of its
# system calls, answered steady check-ins 100 ms late at each flush.
SQLITE_JSON_BATCH = sqlite3.sqlite_version_info >= (3, 38, 0)
_SQLITE_APPS_JSON = text(
    """
UPDATE instance_apps AS s
SET boot_id = COALESCE(v.boot, s.boot_id),
    last_check_at = CASE WHEN v.checked THEN v.seen ELSE s.last_check_at END
FROM (
    SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS app,
           json_extract(value, '$[2]') AS seen, json_extract(value, '$[3]') AS boot,
           json_extract(value, '$[4]') AS checked
    FROM json_each(:batch)
) AS v
WHERE s.instance_id = v.id AND s.app_id = v.app
  AND (SELECT last_seen_at FROM instances WHERE id = v.id) < v.seen
"""
)
_SQLITE_INSTANCES_JSON = text(
    """
UPDATE instances AS i
SET last_seen_at = v.seen, ip = COALESCE(v.ip, i.ip)
FROM (
    SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS seen,
           json_extract(value, '$[2]') AS ip
    FROM json_each(:batch)
) AS v
WHERE i.id = v.id AND i.last_seen_at < v.seen
"""
)


def sqlite_time(value: datetime) -> str:
    """A time as SQLAlchemy's SQLite DATETIME stores it (UTC, microseconds): text that sorts
    as the times do, and compares equal to what the ORM writes."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


async def write_seen(
    session: AsyncSession, batch: dict[tuple[str, str], Seen], *, json_batch: bool | None = None
) -> None:
    """Write one batch, keyed by (machine id, app id), in the caller's transaction."""
    if not batch:
        return
    if session.bind.dialect.name == "postgresql":
        keys = list(batch)
        values = list(batch.values())
        await session.execute(
            _PG_FLUSH,
            {
                "ids": [k[0] for k in keys],
                "apps": [k[1] for k in keys],
                "seen": [v.at for v in values],
                "ips": [v.ip for v in values],
                "boots": [v.boot_id for v in values],
                "checked": [v.checked for v in values],
            },
        )
        return
    if SQLITE_JSON_BATCH if json_batch is None else json_batch:
        await _write_seen_sqlite_json(session, batch)
        return
    rows: list[dict[str, Any]] = [
        {"id": k[0], "app": k[1], "seen": v.at, "ip": v.ip, "boot": v.boot_id, "checked": v.checked}
        for k, v in batch.items()
    ]
    # Apps first: they compare with the instance's last_seen_at before it moves.
    await session.execute(_SQLITE_APPS, rows)
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["id"] not in latest or latest[row["id"]]["seen"] < row["seen"]:
            latest[row["id"]] = row
    await session.execute(_SQLITE_INSTANCES, list(latest.values()))


async def _write_seen_sqlite_json(
    session: AsyncSession, batch: dict[tuple[str, str], Seen]
) -> None:
    apps = []
    latest: dict[str, tuple[str, str, str | None]] = {}
    for (machine_id, app_id), seen in batch.items():
        at = sqlite_time(seen.at)
        apps.append((machine_id, app_id, at, seen.boot_id, seen.checked))
        if machine_id not in latest or latest[machine_id][1] < at:
            latest[machine_id] = (machine_id, at, seen.ip)
    # Apps first: they compare with the instance's last_seen_at before it moves.
    await session.execute(_SQLITE_APPS_JSON, {"batch": json.dumps(apps)})
    await session.execute(_SQLITE_INSTANCES_JSON, {"batch": json.dumps(list(latest.values()))})


class SeenWriter:
    """Collects steady-state check-ins and writes them every `interval` seconds."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        interval: float = 1.0,
        max_pending: int = 50_000,
        observe: Callable[[int, float], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self.interval = interval
        self.max_pending = max_pending  # an early flush beyond this many hosts
        self._observe = observe  # (batch size, seconds) of every flush, for /metrics
        self._pending: dict[tuple[str, str], Seen] = {}
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, machine_id: str, app_id: str, seen: Seen) -> None:
        self._pending[(machine_id, app_id)] = seen  # the latest of a host's requests wins
        if len(self._pending) >= self.max_pending:
            self._wake.set()

    async def flush(self) -> int:
        """Write what is pending now; on failure keep it (unless newer came) for next time."""
        async with self._flushing:
            batch, self._pending = self._pending, {}
            if not batch:
                return 0
            started = time.perf_counter()
            try:
                async with transaction(self._sessions) as session:
                    await write_seen(session, batch)
            except Exception:
                for key, seen in batch.items():
                    self._pending.setdefault(key, seen)
                raise
            if self._observe is not None:
                self._observe(len(batch), time.perf_counter() - started)
            return len(batch)

    async def run(self) -> None:
        """Flush every interval (or early when many are pending) until cancelled; then the
        caller flushes once more (`flush`), so a clean shutdown loses nothing."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            self._wake.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A lost database must not end the loop; what is pending is kept.
                log.warning("last-seen batch of %d hosts not written: %s", len(self), exc)
