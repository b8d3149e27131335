"""A host's first check-in written in one PostgreSQL statement, in autocommit.

The host, its state row, its grant row and its status count, with the group's lock and the
counts its limits need taken first by nebula_grant_gate (migration 0015): one round trip, and
the group's lock held for that statement's execution and commit, not across the round trips of
a transaction (nine of them before). Counted grants in a group take turns on that lock, so the
time it is held bounds their rate.

The caller decides everything the counts do not decide, in Python, before the statement (the
state of a new host, the package, the policy's screen); the statement only chooses between the
granted and the held variant, on counts read under the lock with the same comparisons as
nebula.policy.decide, which the caller then runs on the counts returned to name the decision.
The same statement first reads the host's stored state (what nebula.store.hosts.read_host
reads): for a host that has one it writes nothing, locks nothing and hands that state back, so
a host this process has no snapshot of costs one round trip whether it is new or not. Nothing is
written either when the catalog the caller decided on is stale (the stamp read under the lock
differs) or another request wrote the host's state first: the caller then takes the general
path. Query functions never commit. Imports nebula.store.models, counts and hosts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import ARRAY, BigInteger, Boolean, Integer, String, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from nebula.store.counts import shard_of
from nebula.store.hosts import StoredHost
from nebula.store.models import UTCDateTime

LOCK_NONE, LOCK_SHARE, LOCK_EXCLUSIVE = "none", "share", "exclusive"


@dataclass(frozen=True, slots=True)
class Limits:
    """What the gate counts under an exclusive lock, and the limits it compares with."""

    since: datetime | None = None  # start of the rate limit's period
    max_grants: int | None = None
    max_concurrent: int | None = None
    working: tuple[str, ...] = ()  # statuses that hold a concurrency slot
    cutoff: datetime | None = None  # the update timeout: granted before this holds no slot
    installed_counts: bool = False
    safe_target: str | None = None  # safe mode's version
    in_progress: tuple[str, ...] = ()

    def params(self) -> dict[str, Any]:
        """The gate's bind parameters (nebula_grant_gate's limit arguments), for both
        one-statement writes."""
        return {
            "since": self.since,
            "max_grants": self.max_grants,
            "max_concurrent": self.max_concurrent,
            "working": list(self.working),
            "cutoff": self.cutoff,
            "installed_counts": self.installed_counts,
            "safe_target": self.safe_target,
            "in_progress": list(self.in_progress),
        }


class GroupPlan(Protocol):
    """What a batch's plans (a first check's, a known host's grant) say of their group."""

    @property
    def machine_id(self) -> str: ...
    @property
    def app_id(self) -> str: ...
    @property
    def group_id(self) -> str: ...
    @property
    def stamp(self) -> int: ...
    @property
    def lock(self) -> str: ...
    @property
    def limits(self) -> Limits: ...


def gate_params(plan: GroupPlan) -> dict[str, Any]:
    """The bind parameters of nebula_grant_gate's call: the group, the catalog stamp the plan
    was decided on, the lock and the limits (every grant statement, alone or batched)."""
    return {
        "app_id": plan.app_id,
        "group_id": plan.group_id,
        "stamp": plan.stamp,
        "lock": plan.lock,
        **plan.limits.params(),
    }


@dataclass(frozen=True, slots=True)
class FirstCheck:
    """Everything written for a new host; the `granted_*` values apply when the gate grants."""

    machine_id: str
    app_id: str
    group_id: str
    stamp: int  # the catalog stamp this was decided on
    lock: str  # LOCK_NONE unless a grant is possible
    limits: Limits
    now: datetime
    ip: str | None
    facts: dict[str, str | None]  # alias, oem, oem_version, aleph_version, board
    track: str | None
    version: str | None
    boot_id: str | None
    status: str  # without a grant: new or idle
    hold_reason: str | None  # without a grant, unless the counts hold it
    last_check_at: datetime | None
    granted_version: str | None  # set when a grant is possible
    granted_package_id: str | None


@dataclass(frozen=True, slots=True)
class Written:
    """What the statement did. `written` is False when nothing was (stale or known host);
    `stored` is the known host's state, read as nebula.store.hosts.read_host reads it."""

    stored: StoredHost | None
    written: bool
    granted: bool
    hold_reason: str | None  # the limit that held the host, if one did
    grants: int
    in_flight: int
    target_completed: int
    target_in_flight: int


_SQL = """
WITH stored AS MATERIALIZED (
    SELECT instance_apps.group_id, instance_apps.track, instance_apps.version,
           instance_apps.status, instance_apps.granted_version, instance_apps.held,
           instances.alias, instances.oem, instances.oem_version, instances.aleph_version,
           instances.board, instance_apps.retired_at IS NOT NULL AS retired
    FROM instance_apps JOIN instances ON instances.id = instance_apps.instance_id
    WHERE instance_apps.instance_id = :machine_id AND instance_apps.app_id = :app_id
),
gate AS MATERIALIZED (
    SELECT * FROM nebula_grant_gate(
        :group_id, :stamp,
        CASE WHEN EXISTS (SELECT 1 FROM stored) THEN 'skip' ELSE :lock END,
        :since, :max_grants, :max_concurrent, :working, :cutoff,
        :installed_counts, :safe_target, :in_progress, :machine_id)
),
verdict AS MATERIALIZED (
    SELECT gate.*, CASE
        WHEN :lock = 'none' THEN NULL
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
    SELECT verdict.*, (:lock <> 'none' AND held_by IS NULL) AS ok FROM verdict WHERE fresh
),
host AS (
    INSERT INTO instances (id, ip, created_at, last_seen_at, alias, oem, oem_version,
                           aleph_version, board)
    SELECT :machine_id, :ip, :now, :now, :alias, :oem, :oem_version, :aleph_version, :board
    FROM decided
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
    SELECT host.id, :app_id, :group_id, :track, :version,
           CASE WHEN ok THEN 'granted' ELSE :status END,
           :boot_id,
           CASE WHEN ok THEN :granted_version END,
           CASE WHEN ok THEN :granted_package_id END,
           CASE WHEN ok THEN CAST(:now AS timestamptz) END,
           :now, :last_check_at,
           CASE WHEN ok THEN NULL ELSE coalesce(held_by, :hold_reason) END,
           false, :now
    FROM decided, host
    ON CONFLICT (instance_id, app_id) DO NOTHING
    RETURNING instance_id, status, hold_reason
),
granted AS (
    INSERT INTO grants (group_id, instance_id, version, granted_at)
    SELECT :group_id, state.instance_id, :granted_version, :now
    FROM state WHERE state.status = 'granted'
    RETURNING id
),
counted AS (
    INSERT INTO status_counts (group_id, status, version, shard, count)
    SELECT :group_id, state.status, coalesce(:version, ''), :shard, 1 FROM state
    ON CONFLICT (group_id, status, version, shard) DO UPDATE
        SET count = status_counts.count + excluded.count
    RETURNING 1
)
SELECT verdict.fresh, state.status, verdict.held_by, verdict.grants, verdict.in_flight,
       verdict.target_completed, verdict.target_in_flight, stored.*
FROM verdict LEFT JOIN state ON true LEFT JOIN stored ON true
"""

_TEXT = (
    *("machine_id", "app_id", "group_id", "lock", "ip", "alias", "oem", "oem_version"),
    *("aleph_version", "board", "track", "version", "boot_id", "status", "hold_reason"),
    *("granted_version", "granted_package_id", "safe_target"),
)
_STATEMENT = text(_SQL).bindparams(
    *(bindparam(name, type_=String()) for name in _TEXT),
    *(bindparam(name, type_=UTCDateTime()) for name in ("now", "since", "cutoff")),
    bindparam("last_check_at", type_=UTCDateTime()),
    bindparam("stamp", type_=BigInteger()),
    *(bindparam(name, type_=Integer()) for name in ("max_grants", "max_concurrent")),
    bindparam("shard", type_=Integer()),
    bindparam("installed_counts", type_=Boolean()),
    *(bindparam(name, type_=ARRAY(String())) for name in ("working", "in_progress")),
)


async def write_first_check(conn: AsyncConnection, plan: FirstCheck) -> Written:
    """Run the statement for `plan` on `conn` (in autocommit: the statement is the
    transaction)."""
    params: dict[str, Any] = {
        "machine_id": plan.machine_id,
        **gate_params(plan),
        "now": plan.now,
        "ip": plan.ip,
        **plan.facts,
        "track": plan.track,
        "version": plan.version,
        "boot_id": plan.boot_id,
        "status": plan.status,
        "hold_reason": plan.hold_reason,
        "last_check_at": plan.last_check_at,
        "granted_version": plan.granted_version,
        "granted_package_id": plan.granted_package_id,
        "shard": shard_of(plan.machine_id),
    }
    row = (await conn.execute(_STATEMENT, params)).one()
    fresh, status, held_by, grants, in_flight, completed, target_in_flight = row[:7]
    written = bool(fresh) and status is not None
    stored = None if row[10] is None else StoredHost(*row[7:])  # status is never NULL
    return Written(
        stored=stored,
        written=written,
        granted=written and status == "granted",
        hold_reason=held_by if written else None,
        grants=int(grants),
        in_flight=int(in_flight),
        target_completed=int(completed),
        target_in_flight=int(target_in_flight),
    )
