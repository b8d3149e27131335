"""A known host's update check that may be granted, written in one PostgreSQL statement, in
autocommit.

The host has state this process knows (its snapshot); the caller has screened it eligible on
that snapshot and chosen the package. The statement takes the group's lock and the counts its
limits need through nebula_grant_gate (migration 0015: counts with snapshots taken after the
lock), then updates the host's state only where it still is what the snapshot says (group,
status, version, granted version, held, not retired): a host another process changed meanwhile
is left alone, the statement writes nothing, and the caller takes the general path. Granted, it
moves the status count, records the grant row and announces the change on the host change feed
(nebula.store.changes), all in the one statement; held by a limit, it records the reason. Query
functions never commit. Imports nebula.store.firstcheck and counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, BigInteger, Boolean, Integer, String, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from nebula.store.counts import shard_of
from nebula.store.firstcheck import Limits, gate_params
from nebula.store.models import UTCDateTime


@dataclass(frozen=True, slots=True)
class KnownGrant:
    """The expected state of a known host, and what its grant writes."""

    machine_id: str
    app_id: str
    group_id: str
    stamp: int  # the catalog stamp this was decided on
    lock: str  # firstcheck.LOCK_SHARE or LOCK_EXCLUSIVE
    limits: Limits
    now: datetime
    ip: str | None
    track: str | None
    boot_id: str | None
    # The state the decision was made on: the update applies only while it still holds.
    version: str | None
    status: str
    granted_version: str | None  # before the grant
    held: bool
    new_version: str  # what is granted
    package_id: str
    notify_channel: str
    notify_payload: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the statement did. `written` is False when nothing was (stale catalog or the host
    changed meanwhile)."""

    written: bool
    granted: bool
    hold_reason: str | None
    grants: int
    in_flight: int
    target_completed: int
    target_in_flight: int


# The host's row is locked first, before the group's lock and its state, in the order every
# other writer of a host takes them (the check-in batch locks instances, then writes
# instance_apps; the general path upserts the host first). Updating instance_apps before
# instances deadlocked with a check-in batch that held the host's row (a fleet rollout on
# PostgreSQL, tests/e2e/test_rollout_fleet.py). The gate takes host.id laterally so that it
# runs after the lock.
_SQL = """
WITH host AS MATERIALIZED (
    SELECT id FROM instances WHERE id = :machine_id FOR NO KEY UPDATE
),
gate AS MATERIALIZED (
    SELECT g.* FROM host, LATERAL nebula_grant_gate(
        :group_id, :stamp, :lock, :since, :max_grants, :max_concurrent, :working, :cutoff,
        :installed_counts, :safe_target, :in_progress, host.id) AS g
),
verdict AS MATERIALIZED (
    SELECT gate.*, CASE
        WHEN CAST(:max_grants AS integer) IS NOT NULL AND gate.grants >= :max_grants
            THEN 'rate_limit'
        WHEN CAST(:max_concurrent AS integer) IS NOT NULL AND gate.in_flight >= :max_concurrent
            THEN 'concurrency'
        WHEN CAST(:safe_target AS text) IS NOT NULL AND gate.target_completed = 0
            AND gate.target_in_flight > 0 THEN 'canary'
        END AS held_by
    FROM gate
),
decided AS MATERIALIZED (
    SELECT verdict.*, held_by IS NULL AS ok FROM verdict WHERE fresh
),
state AS (
    UPDATE instance_apps SET
        status = CASE WHEN decided.ok THEN 'granted' ELSE instance_apps.status END,
        status_changed_at = CASE WHEN decided.ok AND instance_apps.status <> 'granted'
            THEN CAST(:now AS timestamptz) ELSE instance_apps.status_changed_at END,
        granted_version = CASE WHEN decided.ok THEN :new_version
            ELSE instance_apps.granted_version END,
        granted_package_id = CASE WHEN decided.ok THEN :package_id
            ELSE instance_apps.granted_package_id END,
        granted_at = CASE WHEN decided.ok THEN CAST(:now AS timestamptz)
            ELSE instance_apps.granted_at END,
        completed_at = CASE WHEN decided.ok THEN NULL ELSE instance_apps.completed_at END,
        installed_at = CASE WHEN decided.ok THEN NULL ELSE instance_apps.installed_at END,
        hold_reason = decided.held_by,
        last_check_at = :now,
        track = :track,
        boot_id = coalesce(:boot_id, instance_apps.boot_id)
    FROM decided
    WHERE instance_apps.instance_id = :machine_id AND instance_apps.app_id = :app_id
      AND instance_apps.group_id = :group_id AND instance_apps.status = :status
      AND instance_apps.version IS NOT DISTINCT FROM :version
      AND instance_apps.granted_version IS NOT DISTINCT FROM :granted_version
      AND instance_apps.held = :held AND instance_apps.retired_at IS NULL
    RETURNING decided.ok
),
granted AS (
    INSERT INTO grants (group_id, instance_id, version, granted_at)
    SELECT :group_id, :machine_id, :new_version, :now FROM state WHERE state.ok
    RETURNING id
),
counted AS (
    INSERT INTO status_counts (group_id, status, version, shard, count)
    SELECT :group_id, moved.status, coalesce(:version, ''), :shard, moved.delta
    FROM state, (VALUES (CAST(:status AS text), -1), ('granted', 1)) AS moved(status, delta)
    WHERE state.ok AND :status <> 'granted'
    ORDER BY moved.status COLLATE "C"  -- key order, as every writer of counts locks them
    ON CONFLICT (group_id, status, version, shard) DO UPDATE
        SET count = status_counts.count + excluded.count
    RETURNING 1
),
seen AS (
    UPDATE instances SET ip = :ip, last_seen_at = :now FROM state WHERE instances.id = :machine_id
    RETURNING 1
),
announced AS MATERIALIZED (
    SELECT pg_notify(:channel, :payload) FROM state WHERE state.ok
)
SELECT verdict.fresh, state.ok, verdict.held_by, verdict.grants, verdict.in_flight,
       verdict.target_completed, verdict.target_in_flight,
       (SELECT count(*) FROM announced) AS announced
FROM verdict LEFT JOIN state ON true
"""

_TEXT = (
    *("machine_id", "app_id", "group_id", "lock", "ip", "track", "boot_id", "version"),
    *("status", "granted_version", "new_version", "package_id", "safe_target"),
    *("channel", "payload"),
)
_STATEMENT = text(_SQL).bindparams(
    *(bindparam(name, type_=String()) for name in _TEXT),
    *(bindparam(name, type_=UTCDateTime()) for name in ("now", "since", "cutoff")),
    bindparam("stamp", type_=BigInteger()),
    *(bindparam(name, type_=Integer()) for name in ("max_grants", "max_concurrent", "shard")),
    *(bindparam(name, type_=Boolean()) for name in ("installed_counts", "held")),
    *(bindparam(name, type_=ARRAY(String())) for name in ("working", "in_progress")),
)


async def write_known_grant(conn: AsyncConnection, plan: KnownGrant) -> Outcome:
    """Run the statement for `plan` on `conn` (in autocommit: the statement is the
    transaction)."""
    params: dict[str, Any] = {
        "machine_id": plan.machine_id,
        **gate_params(plan),
        "now": plan.now,
        "ip": plan.ip,
        "track": plan.track,
        "boot_id": plan.boot_id,
        "version": plan.version,
        "status": plan.status,
        "granted_version": plan.granted_version,
        "held": plan.held,
        "new_version": plan.new_version,
        "package_id": plan.package_id,
        "shard": shard_of(plan.machine_id),
        "channel": plan.notify_channel,
        "payload": plan.notify_payload,
    }
    row = (await conn.execute(_STATEMENT, params)).first()
    if row is None:  # the host is gone (deleted meanwhile): the general path decides
        return Outcome(False, False, None, 0, 0, 0, 0)
    return outcome_of(tuple(row[:7]))


def outcome_of(columns: tuple[Any, ...]) -> Outcome:
    """The Outcome of one host from the statement's columns (the batch's too, nebula.store.
    knownbatch): fresh, ok, the hold, then the gate's grants, in flight, and the target's
    completed and in flight."""
    fresh, ok, held_by, grants, in_flight, completed, target_in_flight = columns
    written = bool(fresh) and ok is not None
    return Outcome(
        written=written,
        granted=written and bool(ok),
        hold_reason=held_by if written else None,
        grants=int(grants),
        in_flight=int(in_flight),
        target_completed=int(completed),
        target_in_flight=int(target_in_flight),
    )
