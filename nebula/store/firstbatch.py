"""Several new hosts' first check-ins of one group, each of which may get a grant, written in
one PostgreSQL statement, in autocommit: one lock of the group, one count of its limits, one
commit (and one WAL flush) for the lot. Grants in a group without limits (the group's shared
lock, nothing counted) are batched too: one commit and one round trip for several.

Counted grants of a group take turns on the group's lock, which each holds through its commit's
WAL flush; one at a time, the flush bounds their rate. Granting several hosts under one lock
divides that bound by the batch's size (nebula.service.grantbatch collects them).

Each host is what nebula.store.firstcheck writes for one (`FirstCheck` plans with the same
group, catalog stamp and limits); the statement does for the batch what that statement does for
one, and decides as if the hosts had come one after another in the batch's order: the host of
rank r among those written (hosts with stored state are skipped and handed back, as there)
sees the gate's counts plus the r grants before it, so the first r that the limits allow are
granted and the rest held, with the reason the first held one was held for (the counts do not
move past it). The counts returned for each host are those its statement alone would have read,
for nebula.policy.decide to name the decision from. The gate counts from the earliest `since`
and `cutoff` of the batch: at least what any one of its hosts would count, never less, so a
limit cannot be passed (a grant that expires within the batch's spread of a few milliseconds
counts for its whole batch). A host whose state another process wrote meanwhile (the insert
finds a row) is not written, as there, but keeps its rank: the hosts after it are decided as if
it had been granted, which may hold them, never grants them past a limit. Query functions never
commit. Imports nebula.store.firstcheck, counts and hosts.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ARRAY, BigInteger, Boolean, DateTime, Integer, String, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from nebula.store.counts import shard_of
from nebula.store.firstcheck import (
    LOCK_EXCLUSIVE,
    LOCK_SHARE,
    FirstCheck,
    GroupPlan,
    Written,
    gate_params,
)
from nebula.store.hosts import StoredHost

# The reason a host is held for with the gate's counts plus `r` grants before it (the order of
# nebula.policy.decide and of firstcheck's verdict).
REASON = """CASE
    WHEN CAST(:max_grants AS integer) IS NOT NULL AND gate.grants + {r} >= :max_grants
        THEN 'rate_limit'
    WHEN CAST(:max_concurrent AS integer) IS NOT NULL AND gate.in_flight + {r} >= :max_concurrent
        THEN 'concurrency'
    WHEN CAST(:safe_target AS text) IS NOT NULL AND gate.target_completed = 0
        AND gate.target_in_flight + {r} > 0 THEN 'canary'
    END"""

# How many of a batch are granted (up to the first rank the limits hold), and each host's
# verdict: the part of the statement new hosts' and known hosts' batches share. Needs the
# `ranked` (the batch, rank 0 first) and `gate` (nebula_grant_gate's row) CTEs before it.
DECIDE = f"""granting AS MATERIALIZED (
    SELECT coalesce(min(ranked.rank) FILTER (WHERE {REASON.format(r="ranked.rank")} IS NOT NULL),
                    count(*)) AS n
    FROM ranked, gate
),
decided AS MATERIALIZED (
    SELECT ranked.*, least(ranked.rank, granting.n) AS before,
           ranked.rank < granting.n AS ok,
           CASE WHEN ranked.rank >= granting.n
                THEN {REASON.format(r="granting.n")} END AS held_by
    FROM ranked, granting, gate WHERE gate.fresh
),"""

_SQL = f"""
WITH input AS MATERIALIZED (
    SELECT * FROM unnest(
        CAST(:machine_id AS text[]), CAST(:ip AS text[]), CAST(:alias AS text[]),
        CAST(:oem AS text[]), CAST(:oem_version AS text[]), CAST(:aleph_version AS text[]),
        CAST(:board AS text[]), CAST(:track AS text[]), CAST(:version AS text[]),
        CAST(:boot_id AS text[]), CAST(:status AS text[]), CAST(:hold_reason AS text[]),
        CAST(:granted_version AS text[]), CAST(:granted_package_id AS text[]),
        CAST(:now AS timestamptz[]), CAST(:last_check_at AS timestamptz[]),
        CAST(:shard AS integer[])
    ) WITH ORDINALITY AS i(machine_id, ip, alias, oem, oem_version, aleph_version, board,
                           track, version, boot_id, status, hold_reason, granted_version,
                           granted_package_id, now, last_check_at, shard, ord)
),
stored AS MATERIALIZED (
    SELECT input.ord, instance_apps.group_id, instance_apps.track, instance_apps.version,
           instance_apps.status, instance_apps.granted_version, instance_apps.held,
           instances.alias, instances.oem, instances.oem_version, instances.aleph_version,
           instances.board, instance_apps.retired_at IS NOT NULL AS retired
    FROM input
    JOIN instance_apps ON instance_apps.instance_id = input.machine_id
        AND instance_apps.app_id = :app_id
    JOIN instances ON instances.id = input.machine_id
),
ranked AS MATERIALIZED (
    SELECT input.*, row_number() OVER (ORDER BY input.ord) - 1 AS rank
    FROM input WHERE input.ord NOT IN (SELECT ord FROM stored)
),
gate AS MATERIALIZED (
    SELECT * FROM nebula_grant_gate(
        :group_id, :stamp,
        CASE WHEN EXISTS (SELECT 1 FROM ranked) THEN :lock ELSE 'skip' END,
        :since, :max_grants, :max_concurrent, :working, :cutoff,
        :installed_counts, :safe_target, :in_progress, '')
),
{DECIDE}
host AS (
    INSERT INTO instances (id, ip, created_at, last_seen_at, alias, oem, oem_version,
                           aleph_version, board)
    SELECT machine_id, ip, now, now, alias, oem, oem_version, aleph_version, board
    FROM decided ORDER BY machine_id
    ON CONFLICT (id) DO UPDATE SET
        ip = excluded.ip,
        last_seen_at = excluded.last_seen_at,
        alias = coalesce(excluded.alias, instances.alias),
        oem = coalesce(excluded.oem, instances.oem),
        oem_version = coalesce(excluded.oem_version, instances.oem_version),
        aleph_version = coalesce(excluded.aleph_version, instances.aleph_version),
        board = coalesce(excluded.board, instances.board)
    RETURNING id
),
state AS (
    INSERT INTO instance_apps (instance_id, app_id, group_id, track, version, status, boot_id,
                               granted_version, granted_package_id, granted_at,
                               status_changed_at, last_check_at, hold_reason, held, created_at)
    SELECT d.machine_id, :app_id, :group_id, d.track, d.version,
           CASE WHEN d.ok THEN 'granted' ELSE d.status END,
           d.boot_id,
           CASE WHEN d.ok THEN d.granted_version END,
           CASE WHEN d.ok THEN d.granted_package_id END,
           CASE WHEN d.ok THEN d.now END,
           d.now, d.last_check_at,
           CASE WHEN d.ok THEN NULL ELSE coalesce(d.held_by, d.hold_reason) END,
           false, d.now
    FROM decided AS d JOIN host ON host.id = d.machine_id
    ORDER BY d.machine_id
    ON CONFLICT (instance_id, app_id) DO NOTHING
    RETURNING instance_id, status, version
),
granted AS (
    INSERT INTO grants (group_id, instance_id, version, granted_at)
    SELECT :group_id, d.machine_id, d.granted_version, d.now
    FROM state JOIN decided AS d ON d.machine_id = state.instance_id
    WHERE state.status = 'granted'
    RETURNING id
),
counted AS (
    -- One row per count key: an upsert may not touch the same row twice.
    INSERT INTO status_counts (group_id, status, version, shard, count)
    SELECT :group_id, state.status, coalesce(state.version, ''), d.shard, count(*)
    FROM state JOIN decided AS d ON d.machine_id = state.instance_id
    GROUP BY state.status, coalesce(state.version, ''), d.shard
    -- In key order, as every writer of counts locks them (nebula.store.counts): two batches
    -- of a group upserting the same rows in different orders deadlocked (1 s each).
    ORDER BY state.status COLLATE "C", coalesce(state.version, '') COLLATE "C", d.shard
    ON CONFLICT (group_id, status, version, shard) DO UPDATE
        SET count = status_counts.count + excluded.count
    RETURNING 1
)
SELECT input.ord, gate.fresh AND stored.ord IS NULL, state.status, decided.held_by,
       -- A host's counts as its statement alone would read them: capped at its limit as the
       -- gate counts, zeros for a host with state (that statement skips the gate).
       CASE WHEN stored.ord IS NOT NULL THEN 0
            WHEN CAST(:max_grants AS integer) IS NULL THEN gate.grants
            ELSE least(gate.grants + coalesce(decided.before, 0), :max_grants) END,
       CASE WHEN stored.ord IS NOT NULL THEN 0
            WHEN CAST(:max_concurrent AS integer) IS NULL THEN gate.in_flight
            ELSE least(gate.in_flight + coalesce(decided.before, 0), :max_concurrent) END,
       CASE WHEN stored.ord IS NOT NULL THEN 0 ELSE gate.target_completed END,
       CASE WHEN stored.ord IS NOT NULL THEN 0
            WHEN CAST(:safe_target AS text) IS NULL THEN gate.target_in_flight
            ELSE least(gate.target_in_flight + coalesce(decided.before, 0), 1) END,
       stored.group_id, stored.track, stored.version, stored.status, stored.granted_version,
       stored.held, stored.alias, stored.oem, stored.oem_version, stored.aleph_version,
       stored.board, stored.retired
FROM input CROSS JOIN gate
LEFT JOIN decided ON decided.ord = input.ord
LEFT JOIN state ON state.instance_id = input.machine_id
LEFT JOIN stored ON stored.ord = input.ord
ORDER BY input.ord
"""

_TEXTS = (
    *("machine_id", "ip", "alias", "oem", "oem_version", "aleph_version", "board", "track"),
    *("version", "boot_id", "status", "hold_reason", "granted_version", "granted_package_id"),
)
_STATEMENT = text(_SQL).bindparams(
    *(bindparam(name, type_=ARRAY(String())) for name in _TEXTS),
    *(bindparam(name, type_=ARRAY(DateTime(timezone=True))) for name in ("now", "last_check_at")),
    bindparam("shard", type_=ARRAY(Integer())),
    *(bindparam(name, type_=String()) for name in ("app_id", "group_id", "lock", "safe_target")),
    *(bindparam(name, type_=DateTime(timezone=True)) for name in ("since", "cutoff")),
    bindparam("stamp", type_=BigInteger()),
    *(bindparam(name, type_=Integer()) for name in ("max_grants", "max_concurrent")),
    bindparam("installed_counts", type_=Boolean()),
    *(bindparam(name, type_=ARRAY(String())) for name in ("working", "in_progress")),
)

_FACTS = ("alias", "oem", "oem_version", "aleph_version", "board")


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _earliest(values: Sequence[datetime | None]) -> datetime | None:
    present = [v for v in values if v is not None]
    return _utc(min(present)) if present else None


def group_params(plans: Sequence[GroupPlan], key: Callable[[Any], Hashable]) -> dict[str, Any]:
    """The parameters a batch's plans share (group, catalog stamp, lock, limits; the limits'
    windows from the earliest request, so that no host counts fewer than alone), once it is
    checked that they may go together: one `key`, each host once."""
    first = plans[0]
    if any(key(p) != key(first) for p in plans):
        raise ValueError("a batch's plans must share group, stamp and limits")
    if len({p.machine_id for p in plans}) != len(plans):
        raise ValueError("a batch writes each host once")
    return {
        **gate_params(first),
        "since": _earliest([p.limits.since for p in plans]),
        "cutoff": _earliest([p.limits.cutoff for p in plans]),
    }


def batch_key(plan: FirstCheck) -> tuple[Any, ...]:
    """What the plans written together must share: group, app, catalog stamp, lock and limits
    (all but the times, which differ by when each request came)."""
    limits = plan.limits.params()
    times = ("since", "cutoff")
    return (
        plan.group_id,
        plan.app_id,
        plan.stamp,
        plan.lock,
        tuple(
            (name, tuple(value) if isinstance(value, list) else value)
            for name, value in limits.items()
            if name not in times
        ),
    )


async def write_first_checks(conn: AsyncConnection, plans: Sequence[FirstCheck]) -> list[Written]:
    """Run the statement for `plans` (one batch_key, distinct hosts, a grant possible: the
    group's exclusive or shared lock) on `conn` in autocommit; what each plan's statement alone
    would return, in order."""
    first = plans[0]
    if first.lock not in (LOCK_EXCLUSIVE, LOCK_SHARE):
        raise ValueError("only first checks that may be granted are written in batches")
    params: dict[str, Any] = {
        **group_params(plans, batch_key),
        "machine_id": [p.machine_id for p in plans],
        "ip": [p.ip for p in plans],
        **{name: [p.facts.get(name) for p in plans] for name in _FACTS},
        "track": [p.track for p in plans],
        "version": [p.version for p in plans],
        "boot_id": [p.boot_id for p in plans],
        "status": [p.status for p in plans],
        "hold_reason": [p.hold_reason for p in plans],
        "granted_version": [p.granted_version for p in plans],
        "granted_package_id": [p.granted_package_id for p in plans],
        "now": [_utc(p.now) for p in plans],
        "last_check_at": [_utc(p.last_check_at) for p in plans],
        "shard": [shard_of(p.machine_id) for p in plans],
    }
    rows = (await conn.execute(_STATEMENT, params)).all()
    if len(rows) != len(plans):
        raise AssertionError(f"a batch of {len(plans)} answered {len(rows)} rows")
    out = []
    for row in rows:
        fresh, status, held_by, grants, in_flight, completed, target_in_flight = row[1:8]
        written = bool(fresh) and status is not None
        stored = None if row[11] is None else StoredHost(*row[8:])  # status is never NULL
        out.append(
            Written(
                stored=stored,
                written=written,
                granted=written and status == "granted",
                hold_reason=held_by if written else None,
                grants=int(grants),
                in_flight=int(in_flight),
                target_completed=int(completed),
                target_in_flight=int(target_in_flight),
            )
        )
    return out
