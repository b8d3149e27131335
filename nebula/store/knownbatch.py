"""Several known hosts' grants of one group written in one PostgreSQL statement, in autocommit:
one lock of the group, one count of its limits, one commit for the lot (the fleet's rollout
path; nebula.service.grantbatch collects them). Grants in a group without limits (the group's
shared lock, nothing counted) are batched too: one commit for several.

Each host is what nebula.store.knowngrant writes for one (`KnownGrant` plans with the same group,
catalog stamp and limits): the host's row locked first (all of them, in id order), then the
gate, then each host's state updated only where it still is what the plan expects, the grant
row, the status count moved and the change feed's NOTIFY. It decides as if the hosts had come
one after another in the batch's order, as nebula.store.firstbatch does: the host of rank r
among those whose state is as expected sees the gate's counts plus the r grants before it.

Of counted grants, only hosts that hold no slot of the limits go in a batch (a status outside
lifecycle.IN_PROGRESS: not in flight, not installed, no canary): their statement alone counts
the others with the host itself left out, which for such a host is everything, so one count
serves all of them. A host in flight (a newer version while it downloads the last one) is
written alone. A host whose state changes meanwhile (the update finds another status) is not
written but keeps its rank, which may hold the hosts after it, never grant them past a limit.
Query functions never commit. Imports nebula.store.knowngrant and counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Any

from sqlalchemy import ARRAY, BigInteger, Boolean, DateTime, Integer, String, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from nebula import lifecycle
from nebula.store.counts import shard_of
from nebula.store.firstbatch import DECIDE, group_params
from nebula.store.firstcheck import LOCK_EXCLUSIVE, LOCK_SHARE
from nebula.store.knowngrant import KnownGrant, Outcome, outcome_of

_SQL = f"""
WITH input AS MATERIALIZED (
    SELECT * FROM unnest(
        CAST(:machine_id AS text[]), CAST(:ip AS text[]), CAST(:track AS text[]),
        CAST(:boot_id AS text[]), CAST(:version AS text[]), CAST(:status AS text[]),
        CAST(:granted_version AS text[]), CAST(:held AS boolean[]),
        CAST(:new_version AS text[]), CAST(:package_id AS text[]),
        CAST(:now AS timestamptz[]), CAST(:shard AS integer[]), CAST(:payload AS text[])
    ) WITH ORDINALITY AS i(machine_id, ip, track, boot_id, version, status, granted_version,
                           held, new_version, package_id, now, shard, payload, ord)
),
host AS MATERIALIZED (
    -- The hosts' rows first, in id order, as every other writer of hosts takes them.
    SELECT id FROM instances WHERE id IN (SELECT machine_id FROM input)
    ORDER BY id FOR NO KEY UPDATE
),
gate AS MATERIALIZED (
    SELECT g.* FROM (SELECT count(*) AS n FROM host) AS locked, LATERAL nebula_grant_gate(
        :group_id, :stamp, CASE WHEN locked.n > 0 THEN :lock ELSE 'skip' END, :since,
        :max_grants, :max_concurrent, :working, :cutoff, :installed_counts, :safe_target,
        :in_progress, '') AS g
),
expected AS MATERIALIZED (
    -- Hosts whose state is what the plan says (the update checks it again on the newest row).
    SELECT input.* FROM input
    JOIN host ON host.id = input.machine_id
    JOIN instance_apps AS ia ON ia.instance_id = input.machine_id AND ia.app_id = :app_id
    WHERE ia.group_id = :group_id AND ia.status = input.status
      AND ia.version IS NOT DISTINCT FROM input.version
      AND ia.granted_version IS NOT DISTINCT FROM input.granted_version
      AND ia.held = input.held AND ia.retired_at IS NULL
),
ranked AS MATERIALIZED (
    SELECT expected.*, row_number() OVER (ORDER BY expected.ord) - 1 AS rank FROM expected
),
{DECIDE}
state AS (
    UPDATE instance_apps SET
        status = CASE WHEN d.ok THEN 'granted' ELSE instance_apps.status END,
        status_changed_at = CASE WHEN d.ok AND instance_apps.status <> 'granted'
            THEN d.now ELSE instance_apps.status_changed_at END,
        granted_version = CASE WHEN d.ok THEN d.new_version
            ELSE instance_apps.granted_version END,
        granted_package_id = CASE WHEN d.ok THEN d.package_id
            ELSE instance_apps.granted_package_id END,
        granted_at = CASE WHEN d.ok THEN d.now ELSE instance_apps.granted_at END,
        completed_at = CASE WHEN d.ok THEN NULL ELSE instance_apps.completed_at END,
        installed_at = CASE WHEN d.ok THEN NULL ELSE instance_apps.installed_at END,
        hold_reason = d.held_by,
        last_check_at = d.now,
        track = d.track,
        boot_id = coalesce(d.boot_id, instance_apps.boot_id)
    FROM decided AS d
    WHERE instance_apps.instance_id = d.machine_id AND instance_apps.app_id = :app_id
      AND instance_apps.group_id = :group_id AND instance_apps.status = d.status
      AND instance_apps.version IS NOT DISTINCT FROM d.version
      AND instance_apps.granted_version IS NOT DISTINCT FROM d.granted_version
      AND instance_apps.held = d.held AND instance_apps.retired_at IS NULL
    RETURNING d.ord, d.ok
),
granted AS (
    INSERT INTO grants (group_id, instance_id, version, granted_at)
    SELECT :group_id, d.machine_id, d.new_version, d.now
    FROM state JOIN decided AS d ON d.ord = state.ord WHERE state.ok
    RETURNING id
),
counted AS (
    -- One row per count key: an upsert may not touch the same row twice.
    INSERT INTO status_counts (group_id, status, version, shard, count)
    SELECT :group_id, moved.status, coalesce(d.version, ''), d.shard, sum(moved.delta)
    FROM state JOIN decided AS d ON d.ord = state.ord,
         LATERAL (VALUES (d.status, -1), ('granted', 1)) AS moved(status, delta)
    WHERE state.ok AND d.status <> 'granted'
    GROUP BY moved.status, coalesce(d.version, ''), d.shard
    -- In key order, as every writer of counts locks them (nebula.store.counts): two batches
    -- of a group upserting the same rows in different orders deadlocked (1 s each).
    ORDER BY moved.status COLLATE "C", coalesce(d.version, '') COLLATE "C", d.shard
    ON CONFLICT (group_id, status, version, shard) DO UPDATE
        SET count = status_counts.count + excluded.count
    RETURNING 1
),
seen AS (
    UPDATE instances SET ip = d.ip, last_seen_at = d.now
    FROM state JOIN decided AS d ON d.ord = state.ord WHERE instances.id = d.machine_id
    RETURNING 1
),
announced AS MATERIALIZED (
    SELECT pg_notify(:channel, d.payload)
    FROM state JOIN decided AS d ON d.ord = state.ord WHERE state.ok
)
SELECT input.ord, gate.fresh AND host.id IS NOT NULL, state.ok, decided.held_by,
       -- A host's counts as its statement alone would read them (capped as the gate counts;
       -- zeros for a host that is gone, whose statement returns no row).
       CASE WHEN host.id IS NULL THEN 0
            WHEN CAST(:max_grants AS integer) IS NULL THEN gate.grants
            ELSE least(gate.grants + coalesce(decided.before, 0), :max_grants) END,
       CASE WHEN host.id IS NULL THEN 0
            WHEN CAST(:max_concurrent AS integer) IS NULL THEN gate.in_flight
            ELSE least(gate.in_flight + coalesce(decided.before, 0), :max_concurrent) END,
       CASE WHEN host.id IS NULL THEN 0 ELSE gate.target_completed END,
       CASE WHEN host.id IS NULL THEN 0
            WHEN CAST(:safe_target AS text) IS NULL THEN gate.target_in_flight
            ELSE least(gate.target_in_flight + coalesce(decided.before, 0), 1) END,
       (SELECT count(*) FROM announced) AS announced
FROM input CROSS JOIN gate
LEFT JOIN host ON host.id = input.machine_id
LEFT JOIN decided ON decided.ord = input.ord
LEFT JOIN state ON state.ord = input.ord
ORDER BY input.ord
"""

_TEXTS = (
    *("machine_id", "ip", "track", "boot_id", "version", "status", "granted_version"),
    *("new_version", "package_id", "payload"),
)
_STATEMENT = text(_SQL).bindparams(
    *(bindparam(name, type_=ARRAY(String())) for name in _TEXTS),
    bindparam("now", type_=ARRAY(DateTime(timezone=True))),
    bindparam("held", type_=ARRAY(Boolean())),
    bindparam("shard", type_=ARRAY(Integer())),
    *(bindparam(n, type_=String()) for n in ("app_id", "group_id", "lock", "safe_target")),
    bindparam("channel", type_=String()),
    *(bindparam(name, type_=DateTime(timezone=True)) for name in ("since", "cutoff")),
    bindparam("stamp", type_=BigInteger()),
    *(bindparam(name, type_=Integer()) for name in ("max_grants", "max_concurrent")),
    bindparam("installed_counts", type_=Boolean()),
    *(bindparam(name, type_=ARRAY(String())) for name in ("working", "in_progress")),
)


def batchable(plan: KnownGrant) -> bool:
    """Whether `plan` may go in a batch: a grant that counts nothing (the group's shared lock),
    or a counted grant of a host that holds no slot."""
    if plan.lock == LOCK_SHARE:
        return True
    return plan.lock == LOCK_EXCLUSIVE and plan.status not in lifecycle.IN_PROGRESS


def batch_key(plan: KnownGrant) -> tuple[Any, ...]:
    """What the plans written together must share: group, app, catalog stamp, lock, limits
    (all but the times, which differ by when each request came) and the feed's channel."""
    limits = plan.limits.params()
    return (
        plan.group_id,
        plan.app_id,
        plan.stamp,
        plan.lock,
        plan.notify_channel,
        tuple(
            (name, tuple(value) if isinstance(value, list) else value)
            for name, value in limits.items()
            if name not in ("since", "cutoff")
        ),
    )


async def write_known_grants(conn: AsyncConnection, plans: Sequence[KnownGrant]) -> list[Outcome]:
    """Run the statement for `plans` (batchable, one batch_key, distinct hosts) on `conn` in
    autocommit; what each plan's statement alone would return, in order."""
    first = plans[0]
    if not all(batchable(p) for p in plans):
        raise ValueError("a counted grant of a host that holds a slot is not batched")
    params: dict[str, Any] = {
        **group_params(plans, batch_key),
        "channel": first.notify_channel,
        "machine_id": [p.machine_id for p in plans],
        "ip": [p.ip for p in plans],
        "track": [p.track for p in plans],
        "boot_id": [p.boot_id for p in plans],
        "version": [p.version for p in plans],
        "status": [p.status for p in plans],
        "granted_version": [p.granted_version for p in plans],
        "held": [p.held for p in plans],
        "new_version": [p.new_version for p in plans],
        "package_id": [p.package_id for p in plans],
        "now": [p.now.astimezone(UTC) for p in plans],
        "shard": [shard_of(p.machine_id) for p in plans],
        "payload": [p.notify_payload for p in plans],
    }
    rows = (await conn.execute(_STATEMENT, params)).all()
    if len(rows) != len(plans):
        raise AssertionError(f"a batch of {len(plans)} answered {len(rows)} rows")
    return [outcome_of(tuple(row[1:8])) for row in rows]
