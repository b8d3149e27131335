"""Counted grants written several to a statement (nebula.service.grantbatch; new hosts'
first check-ins by nebula.store.firstbatch, known hosts' grants by nebula.store.knownbatch):
exactly up to the limits in request order, one statement for the batch, the same answers as one
host at a time, and a batch the database rolls back neither lost nor granted twice.

A batch forms only while a statement of its group is in flight. The tests make one stay in
flight by holding the group's lock in a transaction of their own (as a counted grant of another
process would), and read how many requests wait from the batcher and whether the statement
waits from pg_locks: never from a clock.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.omaha.model import arch_of
from nebula.omaha.parse import parse_request
from nebula.service.transition import plan_first_check, plan_known_grant
from nebula.store import db
from nebula.store.firstbatch import write_first_checks
from nebula.store.firstcheck import LOCK_SHARE, FirstCheck, write_first_check
from nebula.store.knownbatch import batchable, write_known_grants
from nebula.store.knowngrant import KnownGrant, write_known_grant
from nebula.store.rollouts import lock_group
from nebula.web.keys import CATALOG, ENGINE, HOST_CACHE, SERVICE
from tests.factories import Host, assert_status_counts_match
from tests.statements import statements
from tests.test_first_check import lock_waiters
from tests.test_rollout import NEW, STABLE_ID, add_version, check, hosts, point, set_policy

pytestmark = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)

BOUND = 30.0  # seconds: a liveness bound, far above any honest wait here

# (policy, how many of the group's hosts it lets have the update at once, the reason of the rest)
LIMITS = {
    "concurrency": ({"max_concurrent": 3}, 3, "concurrency"),
    "rate": ({"max_updates_per_period": 3, "period": "1h"}, 3, "rate_limit"),
    "both": ({"max_updates_per_period": 4, "period": "1h", "max_concurrent": 3}, 3, "concurrency"),
    # No limits: the grants share the group's lock and count nothing; batched all the same.
    "none": ({}, 8, None),
}
# How many of the batch in the "alone" tests are granted (one host was granted before).
IN_BATCH = {"concurrency": 2, "rate": 2, "both": 2, "none": 7, "safe": 1}


async def until(condition: Any) -> None:
    """Wait (within BOUND) until `condition()` is true."""
    async with asyncio.timeout(BOUND):
        while not await condition():
            await asyncio.sleep(0.02)


async def grants_of(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text("SELECT instance_id, count(*) FROM grants GROUP BY instance_id")
        )
        return {machine_id: int(n) for machine_id, n in result}


async def reasons_of(engine: AsyncEngine, machines: list[str]) -> list[tuple[str, str | None]]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT instance_id, status, hold_reason FROM instance_apps "
                "WHERE instance_id = ANY(:m)"
            ),
            {"m": machines},
        )
        by_host = {m: (s, r) for m, s, r in result}
    return [by_host[m] for m in machines]


PATHS = ("new", "known")


async def known_hosts(client: Any, group_hosts: list[Host], path: str) -> None:
    """For the known path: the hosts check in before the release (known, idle, cached)."""
    if path == "known":
        for host in group_hosts:
            assert await check(client, host) is None


async def queued_behind_the_lock(
    client: Any, engine: AsyncEngine, group_hosts: list[Host], path: str = "new"
) -> tuple[asyncio.Future[str | None], list[asyncio.Future[str | None]]]:
    """The first host's check sent alone, waiting for the group's lock the caller holds; the
    others sent one at a time, each once the one before waits in the batcher: their order is
    the request order."""
    service = client.app[SERVICE]
    batcher = service.grant_batches if path == "new" else service.known_grant_batches
    first, *rest = group_hosts
    alone = asyncio.ensure_future(check(client, first))

    async def waiting() -> bool:
        assert not alone.done(), "the first grant did not wait for the group's lock"
        return await lock_waiters(engine) > 0

    await until(waiting)
    queued: list[asyncio.Future[str | None]] = []
    for n, host in enumerate(rest, 1):
        queued.append(asyncio.ensure_future(check(client, host)))

        async def in_queue(n: int = n) -> bool:
            return batcher.queued() == n

        await until(in_queue)
    return alone, queued


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("limits", LIMITS, ids=list(LIMITS))
async def test_a_batch_grants_exactly_up_to_the_limit_in_request_order(
    client: Any, admin_token: str, engine: AsyncEngine, db_url: str, limits: str, path: str
) -> None:
    """Eight hosts at once (new, or known and idle); the first is written alone, the seven
    that arrive meanwhile in one statement. Catches a batch that grants all it holds (no rank
    added to the counts: eight granted), grants out of request order, or writes its hosts one
    statement each; and a held host written without its reason or with a grant row."""
    policy, allowed, reason = LIMITS[limits]
    group_hosts = hosts(8)
    await known_hosts(client, group_hosts, path)
    await add_version(client, admin_token, NEW)
    await point(client, admin_token, NEW)
    await set_policy(client, admin_token, **policy)
    machines = [h.machine_id for h in group_hosts]
    app_engine = client.app[ENGINE]
    with statements(app_engine, lambda s: "nebula_grant_gate" in s) as sent:
        async with db.session_factory(engine)() as session, session.begin():
            await lock_group(session, STABLE_ID)
            alone, queued = await queued_behind_the_lock(client, engine, group_hosts, path)
        answers = [await asyncio.wait_for(t, BOUND) for t in (alone, *queued)]
    assert len(sent) == 2, sent  # the first alone, the seven in one statement
    assert "unnest" in sent[1]
    assert answers == [NEW] * allowed + [None] * (8 - allowed)
    assert await grants_of(engine) == {m: 1 for m in machines[:allowed]}
    assert await reasons_of(engine, machines) == [("granted", None)] * allowed + [
        ("idle", reason)
    ] * (8 - allowed)
    await assert_status_counts_match(db_url, by_version=True)


def _deadlock_at(engine: AsyncEngine, marker: str, times: int) -> list[str]:
    """The first `times` statements containing `marker` fail as a deadlock's victim would
    (SQLSTATE 40P01 from a DO block sent just before each; the statement never runs)."""
    failed: list[str] = []

    def before(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if marker in statement and len(failed) < times:
            failed.append(statement)
            conn.exec_driver_sql(
                "DO $$ BEGIN RAISE EXCEPTION 'injected deadlock' "
                "USING ERRCODE = 'deadlock_detected'; END $$"
            )

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    return failed


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("times", [1, 2], ids=["once, run again", "twice, split"])
async def test_a_batch_rolled_back_as_a_deadlocks_victim_loses_and_doubles_nothing(
    client: Any, admin_token: str, engine: AsyncEngine, db_url: str, times: int, path: str
) -> None:
    """The batch statement is a deadlock's victim once (run again as a batch) or twice (split:
    each host written alone). Catches a 500 to the hosts of a failed batch, a request never
    answered, and a second run that grants a host twice or past the limit."""
    group_hosts = hosts(6)
    await known_hosts(client, group_hosts, path)
    await add_version(client, admin_token, NEW)
    await point(client, admin_token, NEW)
    await set_policy(client, admin_token, max_concurrent=3)
    machines = [h.machine_id for h in group_hosts]
    failed = _deadlock_at(client.app[ENGINE], "unnest", times)
    with statements(client.app[ENGINE], lambda s: "nebula_grant_gate" in s) as sent:
        async with db.session_factory(engine)() as session, session.begin():
            await lock_group(session, STABLE_ID)
            alone, queued = await queued_behind_the_lock(client, engine, group_hosts, path)
        answers = [await asyncio.wait_for(t, BOUND) for t in (alone, *queued)]
    assert len(failed) == times, "the injected fault never fired"
    batches = [s for s in sent if "unnest" in s]  # those that ran (the failed did not)
    # Once: the batch is run again as a batch. Twice: the five are written one by one.
    assert (len(batches), len(sent) - len(batches)) == (2 - times, 1 if times == 1 else 6)
    assert answers == [NEW] * 3 + [None] * 3
    assert await grants_of(engine) == {m: 1 for m in machines[:3]}
    assert (
        await reasons_of(engine, machines)
        == [("granted", None)] * 3 + [("idle", "concurrency")] * 3
    )
    await assert_status_counts_match(db_url, by_version=True)


async def _plans(client: Any, group_hosts: list[Host], now: Any) -> list[FirstCheck]:
    catalog = await client.app[CATALOG].get()
    plans = []
    for host in group_hosts:
        request = parse_request(host.check())
        (app,) = request.apps
        group = catalog.find_group(app.app_id, "stable", arch_of(request, app))
        planned = plan_first_check(group, app, host.machine_id, "127.0.0.1", now, catalog.stamp)
        assert planned is not None
        plans.append(planned[0])
    return plans


async def _forget(engine: AsyncEngine, machines: list[str]) -> None:
    """Delete what the batch wrote of these hosts, for the same hosts to be written again."""
    async with engine.begin() as conn:
        for table, column in (("grants", "instance_id"), ("instance_apps", "instance_id")):
            await conn.execute(
                text(f"DELETE FROM {table} WHERE {column} = ANY(:m)"), {"m": machines}
            )
        await conn.execute(text("DELETE FROM instances WHERE id = ANY(:m)"), {"m": machines})


SAFE = ({"safe_mode": True}, 1, "canary")


@pytest.mark.parametrize("limits", [*LIMITS, "safe"], ids=[*LIMITS, "safe"])
async def test_a_batch_answers_what_each_host_would_get_alone(
    client: Any, admin_token: str, engine: AsyncEngine, clock: Any, limits: str
) -> None:
    """One host granted before, then a batch of seven new hosts with a known host among them:
    written in one statement, then (rows deleted) one host at a time in the same order. Every
    host's outcome, the counts it was decided on (from which decide() names the reason) and
    the known host's stored state handed back must be the same. Catches counts returned
    without the grants before the host in the batch, a known host taking a rank (the hosts
    after it held one too early), and a reason other than the one alone (safe mode's canary
    granted to several)."""
    policy, _, _ = SAFE if limits == "safe" else LIMITS[limits]
    earlier, known, *fresh = hosts(9)
    assert await check(client, known) is None  # known: checked in before the release
    await add_version(client, admin_token, NEW)
    await point(client, admin_token, NEW)
    await set_policy(client, admin_token, **policy)
    if limits != "safe":
        assert await check(client, earlier) == NEW
    batch = [fresh[0], known, *fresh[1:]]
    plans = await _plans(client, batch, clock.now)
    sessions = db.session_factory(engine)
    async with db.single_statement(sessions) as conn:
        together = await write_first_checks(conn, plans)
    rows_together = await reasons_of(engine, [h.machine_id for h in fresh])
    await _forget(engine, [h.machine_id for h in fresh])
    alone = []
    for plan in plans:
        async with db.single_statement(sessions) as conn:
            alone.append(await write_first_check(conn, plan))
    assert together == alone
    assert rows_together == await reasons_of(engine, [h.machine_id for h in fresh])
    assert together[1].stored is not None and not together[1].written
    assert sum(w.granted for w in together) == IN_BATCH[limits]


async def _known_plans(client: Any, group_hosts: list[Host], now: Any) -> list[KnownGrant]:
    catalog = await client.app[CATALOG].get()
    cache = client.app[HOST_CACHE]
    plans = []
    for host in group_hosts:
        request = parse_request(host.check())
        (app,) = request.apps
        group = catalog.find_group(app.app_id, "stable", arch_of(request, app))
        known = cache.get(host.machine_id, app.app_id)
        assert known is not None
        planned = plan_known_grant(
            known, group, app, host.machine_id, "127.0.0.1", now, catalog.stamp, "test"
        )
        assert planned is not None
        plans.append(planned[0])
    return plans


async def _ungrant(engine: AsyncEngine, machines: list[str]) -> None:
    """Put these hosts back as they were before the batch (idle, nothing granted)."""
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM grants WHERE instance_id = ANY(:m)"), {"m": machines})
        await conn.execute(
            text(
                "UPDATE instance_apps SET status = 'idle', granted_version = NULL, "
                "granted_package_id = NULL, granted_at = NULL, hold_reason = NULL "
                "WHERE instance_id = ANY(:m)"
            ),
            {"m": machines},
        )


@pytest.mark.parametrize("limits", [*LIMITS, "safe"], ids=[*LIMITS, "safe"])
async def test_a_known_batch_answers_what_each_host_would_get_alone(
    client: Any, admin_token: str, engine: AsyncEngine, clock: Any, limits: str
) -> None:
    """Seven known idle hosts and one host granted before: their grants written in one
    statement, then (put back) one host at a time in the same order. Every outcome and the
    counts it was decided on must be the same. Catches counts returned without the grants
    before the host in the batch, and a reason other than the one alone."""
    policy, _, _ = SAFE if limits == "safe" else LIMITS[limits]
    earlier, *batch = hosts(8)
    await known_hosts(client, batch, "known")
    await add_version(client, admin_token, NEW)
    await point(client, admin_token, NEW)
    await set_policy(client, admin_token, **policy)
    if limits != "safe":
        assert await check(client, earlier) == NEW
    plans = await _known_plans(client, batch, clock.now)
    assert all(batchable(p) for p in plans)
    machines = [h.machine_id for h in batch]
    sessions = db.session_factory(engine)
    async with db.single_statement(sessions) as conn:
        together = await write_known_grants(conn, plans)
    rows_together = await reasons_of(engine, machines)
    await _ungrant(engine, machines)
    alone = []
    for plan in plans:
        async with db.single_statement(sessions) as conn:
            alone.append(await write_known_grant(conn, plan))
    assert together == alone
    assert rows_together == await reasons_of(engine, machines)
    assert sum(o.granted for o in together) == IN_BATCH[limits]


async def test_a_host_that_holds_a_slot_is_granted_alone(
    client: Any, admin_token: str, clock: Any
) -> None:
    """A known host in flight (or installed) counts in the limits of every other host's grant
    but not of its own; one count cannot serve it and the hosts beside it. Catches batching it:
    the others would be decided without its slot, and pass the concurrency limit."""
    (host,) = hosts(1)
    await known_hosts(client, [host], "known")
    await add_version(client, admin_token, NEW)
    await point(client, admin_token, NEW)
    await set_policy(client, admin_token, max_concurrent=3)
    (plan,) = await _known_plans(client, [host], clock.now)
    assert batchable(plan)
    for status in ("granted", "downloading", "downloaded", "installed"):
        assert not batchable(replace(plan, status=status)), status
    # A grant that counts nothing (a group without limits) is batched whatever the status.
    assert batchable(replace(plan, lock=LOCK_SHARE, status="downloading"))
