"""Leadership: the background jobs that must run once per deployment (the timeout sweep,
retention) run in one process only, however many workers and replicas serve.

On PostgreSQL every process competes for a session advisory lock (`pg_try_advisory_lock`) on a
connection of its own, outside the pool. The process holding it runs the jobs; the others try
again every `retry` seconds. The lock lives as long as that connection: when it drops (the
server restarted, the network went, the process died), PostgreSQL releases the lock, the old
leader cancels its jobs as soon as it notices (a keepalive query every `keepalive` seconds
finds a connection cut without a word), and another process takes over. Two leaders at once
are thus at most a window of a lost connection, and harmless: the jobs are idempotent (an
UPDATE of rows still in progress, a DELETE of old rows). On SQLite the one process is the
leader. Imports nothing of Nebula.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

# Any constant works; only every Nebula process on one database has to use the same one (and
# another than the migration lock's).
LEADER_LOCK_KEY = 0x4E45_4C44  # "NELD"

Job = Callable[[], Coroutine[Any, Any, None]]


class Leader:
    """Runs `jobs` while this process leads. `db_url` None: no competition (SQLite)."""

    def __init__(
        self,
        db_url: str | None,
        jobs: Sequence[Job],
        *,
        names: str = "",
        retry: float = 5.0,
        keepalive: float = 10.0,
        on_change: Callable[[bool], None] = lambda _leading: None,
    ) -> None:
        self.db_url = db_url
        self.jobs = list(jobs)
        self.names = names
        self.retry = retry
        self.keepalive = keepalive
        self.on_change = on_change
        self.leading = False

    async def run(self) -> None:
        """Until cancelled."""
        if self.db_url is None:
            await self._lead(asyncio.Event())
            return
        import asyncpg  # type: ignore[import-untyped]  # only PostgreSQL deployments need it

        dsn = make_url(self.db_url).set(drivername="postgresql")
        dsn_text = dsn.render_as_string(hide_password=False)
        warned = False
        while True:
            conn: Any = None
            try:
                conn = await asyncpg.connect(dsn_text, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                warned = False
                while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY):
                    _raise_if_cancelled()
                    await asyncio.sleep(self.retry)
                watch = asyncio.create_task(self._watch(conn, lost))
                try:
                    await self._lead(lost)
                finally:
                    watch.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watch
                log.warning("leadership lost (its database connection went): jobs stopped")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not warned:
                    log.warning("cannot take part in the leader election (%s): retrying", exc)
                    warned = True
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            _raise_if_cancelled()
            await asyncio.sleep(self.retry)

    async def _watch(self, conn: Any, lost: asyncio.Event) -> None:
        """Set `lost` when the lock's connection fails; a cut without a word shows only in use."""
        try:
            while not lost.is_set():
                try:
                    await asyncio.wait_for(lost.wait(), timeout=self.keepalive)
                except TimeoutError:
                    await conn.fetchval("SELECT 1", timeout=5)
        except asyncio.CancelledError:
            raise
        except Exception:
            lost.set()

    async def _lead(self, lost: asyncio.Event) -> None:
        """Run the jobs until `lost` is set (or cancelled)."""
        self.leading = True
        self.on_change(True)
        log.info("leader: process %d runs %s", os.getpid(), self.names or "the jobs")
        tasks = [asyncio.create_task(job()) for job in self.jobs]
        try:
            await lost.wait()
        finally:
            self.leading = False
            self.on_change(False)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


def _raise_if_cancelled() -> None:
    """Stop when this task was asked to, even if the request was lost on the way.

    A cancellation that lands while asyncpg connects or closes can be swallowed inside it (its
    timeouts; seen on Python 3.11): the task then goes on looping, and the shutdown that
    cancelled it and awaits it hangs for good (a test teardown did). The task still says it is
    being cancelled; honour that before sleeping again.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
