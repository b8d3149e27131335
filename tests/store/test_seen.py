"""nebula.store.seen on both databases: a batch writes last-seen times only, never older ones,
never a status; a failed flush keeps what it could not write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.store import db
from nebula.store.models import Instance, InstanceApp
from nebula.store.seen import Seen, SeenWriter, write_seen

APP = "e96281a6-d1af-4bde-9a0a-97b76e56dc57"
T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


async def _host(engine: AsyncEngine, machine_id: str, seen: datetime, status: str) -> None:
    async with db.transaction(db.session_factory(engine)) as session:
        session.add(Instance(id=machine_id, created_at=T0, last_seen_at=seen, ip="10.0.0.9"))
        await session.flush()
        session.add(
            InstanceApp(
                instance_id=machine_id,
                app_id=APP,
                status=status,
                status_changed_at=T0,
                created_at=T0,
                held=False,
                boot_id="old-boot",
            )
        )


async def _read(engine: AsyncEngine, machine_id: str) -> tuple[object, ...]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    Instance.last_seen_at,
                    Instance.ip,
                    InstanceApp.last_check_at,
                    InstanceApp.boot_id,
                    InstanceApp.status,
                )
                .join(InstanceApp, InstanceApp.instance_id == Instance.id)
                .where(Instance.id == machine_id)
            )
        ).one()
    return tuple(row)


async def test_batch_writes_last_seen_only_and_never_goes_back(engine: AsyncEngine) -> None:
    """Catches a batch that writes a status (it would undo a grant another process made after
    the check-in was queued), one that moves last-seen backwards over what a later request's
    transaction wrote, and a ping that sets last_check_at (only update checks do)."""
    await _host(engine, "a" * 32, T0, "idle")
    await _host(engine, "b" * 32, T0 + timedelta(minutes=5), "idle")  # newer than its batch
    await _host(engine, "c" * 32, T0, "installed")
    # Meanwhile another process granted host a: the batch must not touch that.
    async with db.transaction(db.session_factory(engine)) as session:
        state = await session.get(InstanceApp, ("a" * 32, APP))
        assert state is not None
        state.status = "granted"
    at = T0 + timedelta(minutes=1)
    async with db.transaction(db.session_factory(engine)) as session:
        await write_seen(
            session,
            {
                ("a" * 32, APP): Seen(at, "10.0.0.1", "new-boot", True),
                ("b" * 32, APP): Seen(at, "10.0.0.2", "new-boot", True),
                ("c" * 32, APP): Seen(at, None, None, False),
            },
        )
    assert await _read(engine, "a" * 32) == (at, "10.0.0.1", at, "new-boot", "granted")
    assert await _read(engine, "b" * 32) == (
        T0 + timedelta(minutes=5),
        "10.0.0.9",
        None,
        "old-boot",
        "idle",
    )
    # A ping without an address: seen, the stored address and boot id kept, not "checked".
    assert await _read(engine, "c" * 32) == (at, "10.0.0.9", None, "old-boot", "installed")


async def test_writer_coalesces_and_flushes(engine: AsyncEngine) -> None:
    """Catches a writer that writes every check-in it was given (the latest of a host's
    requests is the one that counts) or that loses entries at flush."""
    await _host(engine, "d" * 32, T0, "complete")
    writer = SeenWriter(db.session_factory(engine), interval=60)
    for minute in (1, 3, 2):  # out of order: the last added wins, as requests come in order
        writer.add("d" * 32, APP, Seen(T0 + timedelta(minutes=minute), "10.0.0.4", None, True))
    assert len(writer) == 1
    assert await writer.flush() == 1
    assert len(writer) == 0
    last = T0 + timedelta(minutes=2)
    assert (await _read(engine, "d" * 32))[:3] == (last, "10.0.0.4", last)
    assert await writer.flush() == 0


@pytest.mark.postgres
async def test_failed_flush_keeps_the_batch(pg_server: object) -> None:
    """A flush to a database that is gone raises and keeps what it could not write (unless a
    newer check-in of the host came meanwhile). Catches a writer that drops a batch on error."""
    if pg_server is None:
        pytest.skip("PostgreSQL unavailable")
    from sqlalchemy.engine import make_url

    from tests.conftest import PG_ADMIN_URL

    url = make_url(PG_ADMIN_URL).set(database="nebula_no_such_database").render_as_string(False)
    engine = db.create_engine(url)
    try:
        writer = SeenWriter(db.session_factory(engine), interval=60)
        writer.add("e" * 32, APP, Seen(T0, None, None, True))
        with pytest.raises(Exception, match="does not exist"):
            await writer.flush()
        assert len(writer) == 1
    finally:
        await engine.dispose()
