"""The catalog cache's expiry, on both databases: `expire()` (another process changed the
catalog) makes the next `get()` re-read the stamp, however young the machine is."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.store.catalog import CatalogCache, bump_stamp
from nebula.store.db import session_factory, transaction


@pytest.mark.parametrize("uptime", [30.0, 1e6])
async def test_expire_rereads_the_stamp_on_a_freshly_booted_machine(
    engine: AsyncEngine, uptime: float
) -> None:
    """time.monotonic() counts from boot. A cache that marked itself stale with a check time
    of 0.0 looked fresh for its whole ttl on a machine up for less than the ttl, so a catalog
    change heard from another process was ignored for up to an hour (a test failed on a
    machine booted 50 minutes before). The cache's clock is injected: 30 s and 11 days after
    boot (patching time.monotonic itself would also stop the event loop's timers)."""
    sessions = session_factory(engine)
    cache = CatalogCache(sessions, "http://nebula.test", ttl=3600.0, monotonic=lambda: uptime)
    first = await cache.get()
    async with transaction(sessions) as session:
        await bump_stamp(session)
    assert (await cache.get()).stamp == first.stamp  # within the ttl: the snapshot serves
    cache.expire()
    assert (await cache.get()).stamp == first.stamp + 1
