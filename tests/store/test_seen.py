"""nebula.store.seen on both databases: a batch writes last-seen times only, never older ones,
never a status; a failed flush keeps what it could not write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.store import db
from nebula.store.models import Instance, InstanceApp
from nebula.store.seen import SQLITE_JSON_BATCH, Seen, SeenWriter, sqlite_time, write_seen

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


# SQLite has two ways to write a batch: one statement per table with the rows as JSON (SQLite
# 3.38 and later), and executemany (older SQLite); both must write the same. PostgreSQL has one.
SQLITE_WAYS = [
    pytest.param(True, id="json", marks=pytest.mark.skipif(not SQLITE_JSON_BATCH, reason="old")),
    pytest.param(False, id="executemany"),
]


@pytest.mark.parametrize("json_batch", SQLITE_WAYS)
async def test_batch_writes_last_seen_only_and_never_goes_back(
    engine: AsyncEngine, json_batch: bool
) -> None:
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
            json_batch=json_batch,
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


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.skipif(not SQLITE_JSON_BATCH, reason="SQLite before 3.38 writes with executemany")
async def test_sqlite_json_batch_writes_the_text_the_orm_writes(engine: AsyncEngine) -> None:
    """SQLite keeps times as text and compares them as text (`last_seen_at < :seen`, ordered
    listings): the JSON batch must write the very text SQLAlchemy writes for the same time, in
    UTC. Catches an ISO 'T' separator, a missing microsecond part or a local time offset, each
    of which would sort wrongly against the times transactions write."""
    at = datetime(2026, 12, 2, 13, 4, 5, 60, tzinfo=timezone(timedelta(hours=2)))
    await _host(engine, "f" * 32, at, "idle")  # written by the ORM
    async with engine.connect() as conn:
        orm_text = (
            await conn.execute(
                text("SELECT last_seen_at FROM instances WHERE id = :i"), {"i": "f" * 32}
            )
        ).scalar_one()
    assert orm_text == sqlite_time(at) == "2026-12-02 11:04:05.000060"
    later = at + timedelta(microseconds=1)
    async with db.transaction(db.session_factory(engine)) as session:
        await write_seen(session, {("f" * 32, APP): Seen(later, None, None, True)}, json_batch=True)
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT i.last_seen_at, a.last_check_at FROM instances i JOIN instance_apps a"
                    " ON a.instance_id = i.id WHERE i.id = :i"
                ),
                {"i": "f" * 32},
            )
        ).one()
    assert tuple(row) == (sqlite_time(later), sqlite_time(later))
    assert (await _read(engine, "f" * 32))[:3] == (later, "10.0.0.9", later)


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
