"""Rollout state in the database: group locks, the counts the limits need, grants, the failure
gate, pauses and resumes, the activity log, and timeouts.

Every limit is enforced under the group's row lock (`lock_group`, SELECT ... FOR UPDATE on
PostgreSQL; on SQLite every writing transaction holds the database lock), so that with any number
of replicas and concurrent checks the counts a grant is decided on are the counts it commits
against. Lock order, everywhere: the group row before any host's state row.
Query functions take the session first and never commit.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import case, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from nebula.errors import InvalidInputError
from nebula.lifecycle import FAILED, IN_PROGRESS, WORKING
from nebula.policy import (
    LIMIT_HOLDS,
    GroupPolicy,
    HoldReason,
    RolloutStats,
    failure_gate,
    rollout_threshold,
)
from nebula.store import counts
from nebula.store.models import Activity, Completion, Failure, Grant, Group, InstanceApp
from nebula.versions import try_parse_version
from nebula.windows import Window, WindowError, is_open, window_from_json

log = logging.getLogger(__name__)

AUTOMATIC = "nebula"  # the actor of automatic pauses
LIVE = InstanceApp.retired_at.is_(None)  # hosts not retired: the only ones any count includes
NEVER_OPEN = Window(frozenset(), time(0, 0), time(0, 1), "UTC")


def policy_of(group: Group) -> GroupPolicy:
    windows = []
    for raw in group.windows or []:
        try:
            windows.append(window_from_json(raw))
        except WindowError:
            # Written by hand or by an older version (the API never stores one): fail closed,
            # a window that never opens, rather than dropping it and opening the group always.
            windows.append(NEVER_OPEN)
    return GroupPolicy(
        updates_enabled=group.updates_enabled,
        allow_downgrade=group.allow_downgrade,
        max_updates_per_period=group.max_updates_per_period,
        period_seconds=group.period_seconds,
        max_concurrent=group.max_concurrent,
        update_timeout_seconds=group.update_timeout_seconds,
        safe_mode=group.safe_mode,
        pause_on_failed_hosts=group.pause_on_failed_hosts,
        pause_on_failed_percent=group.pause_on_failed_percent,
        windows=tuple(windows),
        percentage=group.percentage,
        reboot_timeout_seconds=group.reboot_timeout_seconds,
        installed_counts_as_updating=group.installed_counts_as_updating,
    )


async def lock_group(session: AsyncSession, group_id: str, *, shared: bool = False) -> Group:
    """The group's row, locked until the transaction ends, and fresh from the database.

    `shared` (FOR SHARE) lets grants that count nothing run side by side while still ordering
    them against every change of the group (a pause, a policy change, a counted grant: FOR NO
    KEY UPDATE), which waits for them and which they wait for. SQLite's writer lock is
    exclusive either way.

    Never FOR UPDATE: that also blocks the FOR KEY SHARE lock PostgreSQL takes on the group row
    to check a foreign key (inserting an event or a new status-count row of the group). A
    transaction that does not lock the group, holding a host's count row, then queued behind
    the lock for its event's key check while the lock's holder waited for that count row: a
    deadlock under concurrent grants (tests/loadtest/test_simulate.py). The group's key never
    changes, so NO KEY UPDATE is all the exclusion needed.
    """
    stmt = (
        select(Group)
        .where(Group.id == group_id)
        .with_for_update(read=shared, key_share=not shared)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one()


def _in_flight(policy: GroupPolicy, now: datetime) -> Any:
    """Hosts that hold a concurrency slot: working on an update and not past the update timeout
    (which covers only the work: grant to installed), and, when the policy counts them,
    installed hosts waiting for their reboot, however long."""
    working: Any = InstanceApp.status.in_(sorted(WORKING))
    if policy.update_timeout_seconds:
        cutoff = now - timedelta(seconds=policy.update_timeout_seconds)
        working = working & (InstanceApp.granted_at > cutoff)
    if policy.installed_counts_as_updating:
        working = working | (InstanceApp.status == "installed")
    # A retired host (gone silent for retire_after) holds nothing; one that comes back takes
    # the group's lock to un-retire (nebula.service.transition), so this count never grows
    # behind a grant's back.
    return working & LIVE


async def _count(session: AsyncSession, stmt: Any) -> int:
    return int((await session.execute(stmt)).scalar_one())


async def _count_upto(session: AsyncSession, rows: Any, cap: int) -> int:
    """How many rows `rows` selects, counting no further than `cap`."""
    sub = rows.limit(cap).subquery()
    return await _count(session, select(func.count()).select_from(sub))


async def rollout_stats(
    session: AsyncSession,
    group_id: str,
    policy: GroupPolicy,
    target: str,
    now: datetime,
    exclude_machine: str,
) -> RolloutStats:
    """The counts decide() needs, only those the group's policy uses. The asking host is left
    out: its own earlier grant must not stand in its way.

    decide() only compares each count with its limit (and safe mode's with zero), so each stops
    at what the comparison needs: a counted grant reads at most max_updates_per_period grants
    and max_concurrent hosts, not every grant of the period and every host in flight (with
    high limits that was a scan growing with the rollout, under the group's lock)."""
    hosts = (
        select(literal(1))
        .select_from(InstanceApp)
        .where(InstanceApp.group_id == group_id, InstanceApp.instance_id != exclude_machine)
    )
    grants = in_flight = target_completed = target_in_flight = 0
    if policy.max_updates_per_period is not None and policy.period_seconds:
        since = now - timedelta(seconds=policy.period_seconds)
        grants = await _count_upto(
            session,
            select(literal(1))
            .select_from(Grant)
            .where(Grant.group_id == group_id, Grant.granted_at > since),
            policy.max_updates_per_period,
        )
    if policy.max_concurrent is not None:
        in_flight = await _count_upto(
            session, hosts.where(_in_flight(policy, now)), policy.max_concurrent
        )
    if policy.safe_mode:
        target_completed = await _count_upto(
            session,
            select(literal(1))
            .select_from(Completion)
            .where(Completion.group_id == group_id, Completion.version == target),
            1,
        )
        # Not cut off at the update timeout, unlike a concurrency slot: a canary past it has
        # failed, and nobody else may take the version before the sweeper marks it timed out
        # and the failure gate pauses the group for it.
        target_in_flight = await _count_upto(
            session,
            hosts.where(
                (InstanceApp.granted_version == target) & InstanceApp.status.in_(IN_PROGRESS) & LIVE
            ),
            1,
        )
    return RolloutStats(grants, in_flight, target_completed, target_in_flight)


def _completed_query(group_id: str, version: str) -> Any:
    """Hosts that completed `version` in the group, ever (from the durable record: a host that
    completed a floor and was then granted the target still completed the floor)."""
    return (
        select(func.count())
        .select_from(Completion)
        .where(Completion.group_id == group_id, Completion.version == version)
    )


async def record_completion(
    session: AsyncSession, group_id: str, version: str, machine_id: str, now: datetime
) -> None:
    """Remember that this host completed `version` in this group (once: a repeat is a no-op)."""
    insert = postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(Completion).values(
        group_id=group_id, version=version, instance_id=machine_id, completed_at=now
    )
    await session.execute(
        stmt.on_conflict_do_nothing(index_elements=["group_id", "version", "instance_id"])
    )


def record_grant(
    session: AsyncSession, group_id: str, machine_id: str, version: str, now: datetime
) -> None:
    session.add(Grant(group_id=group_id, instance_id=machine_id, version=version, granted_at=now))


def log_activity(
    session: AsyncSession,
    now: datetime,
    actor: str,
    action: str,
    message: str,
    group_id: str | None = None,
    **detail: Any,
) -> None:
    session.add(
        Activity(
            created_at=now,
            group_id=group_id,
            actor=actor,
            action=action,
            message=message,
            detail=detail,
        )
    )


def pause(group: Group, session: AsyncSession, now: datetime, actor: str, reason: str) -> None:
    """Pause `group` (locked by the caller), logged once: a warning when the failure gate
    does it, as an operator's pause is no surprise."""
    if actor == AUTOMATIC:
        log.warning("group %s (%s) paused by the failure gate: %r", group.name, group.arch, reason)
    else:
        log.info("group %s (%s) paused by %s: %r", group.name, group.arch, actor, reason)
    group.updates_enabled = False
    group.paused_reason = reason
    group.paused_by = actor
    group.paused_at = now
    action = "auto_pause" if actor == AUTOMATIC else "pause"
    log_activity(session, now, actor, action, reason, group.id)


def resume(group: Group, session: AsyncSession, now: datetime, actor: str, reason: str) -> None:
    log.info("group %s (%s) resumed by %s: %r", group.name, group.arch, actor, reason)
    was = group.paused_reason
    group.updates_enabled = True
    group.paused_reason = None
    group.paused_by = None
    group.paused_at = None
    group.resumed_at = now
    log_activity(session, now, actor, "resume", reason or "resumed", group.id, was_paused_for=was)


@dataclass(frozen=True, slots=True)
class TargetCounts:
    failed: int
    attempted: int
    completed: int


async def record_failure(
    session: AsyncSession,
    group_id: str,
    version: str,
    machine_id: str,
    kind: str,
    code: int | None,
    now: datetime,
) -> None:
    """Remember that this host failed to reach `version` in this group (once per host; later
    failures of the same host update the row)."""
    insert = postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(Failure).values(
        group_id=group_id,
        version=version,
        instance_id=machine_id,
        kind=kind,
        code=code,
        first_at=now,
        last_at=now,
        count=1,
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["group_id", "version", "instance_id"],
            set_={
                "kind": stmt.excluded.kind,
                "code": stmt.excluded.code,
                "last_at": stmt.excluded.last_at,
                "count": Failure.count + 1,
            },
        )
    )


async def target_counts(
    session: AsyncSession, group_id: str, version: str, since: datetime | None = None
) -> TargetCounts:
    """Hosts that failed to reach `version` and hosts granted it, since `since` (the group's last
    resume), whatever they do now: a failed host that retries still counts as failed. Hosts that
    completed it, ever: once one has, the canary has passed."""
    failed_q = (
        select(func.count())
        .select_from(Failure)
        .where(Failure.group_id == group_id, Failure.version == version)
    )
    attempted_q = select(func.count(func.distinct(Grant.instance_id))).where(
        Grant.group_id == group_id, Grant.version == version
    )
    if since is not None:
        failed_q = failed_q.where(Failure.last_at >= since)
        attempted_q = attempted_q.where(Grant.granted_at >= since)
    return TargetCounts(
        failed=await _count(session, failed_q),
        attempted=await _count(session, attempted_q),
        completed=await _count(session, _completed_query(group_id, version)),
    )


async def apply_failure_gate(
    session: AsyncSession, group: Group, version: str, now: datetime
) -> str | None:
    """Pause `group` (locked by the caller) if failures updating to `version` reached its limits.
    Returns the reason when it paused."""
    if not group.updates_enabled:
        return None
    counts = await target_counts(session, group.id, version, group.resumed_at)
    reason = failure_gate(
        policy_of(group),
        failed=counts.failed,
        attempted=counts.attempted,
        completed=counts.completed,
    )
    if reason is None:
        return None
    reason = f"failure gate, updating to {version}: {reason}"
    pause(group, session, now, AUTOMATIC, reason)
    return reason


async def mark_timeouts(
    session: AsyncSession, now: datetime
) -> tuple[list[tuple[str, str]], list[str]]:
    """Mark hosts past their group's update timeout `timed_out`; return the (group, version)
    pairs that got new timeouts, for the failure gate, and the hosts marked. Only hosts still
    working on their own (WORKING): an installed host waits for its reboot, which is no failure."""
    groups = (
        await session.execute(
            select(Group.id, Group.update_timeout_seconds).where(
                Group.update_timeout_seconds.is_not(None)
            )
        )
    ).all()
    touched: list[tuple[str, str]] = []
    marked: list[str] = []
    for group_id, timeout in groups:
        cutoff = now - timedelta(seconds=timeout)
        stale = (
            InstanceApp.status.in_(sorted(WORKING))
            & (InstanceApp.granted_at <= cutoff)
            & (InstanceApp.group_id == group_id)
            & LIVE  # a retired host is in no count to move; it times out when it is back
        )
        # Locked, so that what is counted below is exactly what the UPDATE changes.
        hosts = (
            await session.execute(
                select(
                    InstanceApp.instance_id,
                    InstanceApp.granted_version,
                    InstanceApp.status,
                    InstanceApp.version,
                )
                .where(stale)
                .with_for_update()
            )
        ).all()
        if not hosts:
            continue
        deltas: Counter[counts.ShardKey] = Counter()
        for machine_id, version, status, running in hosts:
            counts.move(
                deltas, machine_id, (group_id, status, running), (group_id, "timed_out", running)
            )
            if version is not None:
                await record_failure(session, group_id, version, machine_id, "timed_out", None, now)
        found = sorted({v for _, v, _, _ in hosts if v is not None})
        await session.execute(
            update(InstanceApp)
            .where(stale, InstanceApp.instance_id.in_([h[0] for h in hosts]))
            .values(status="timed_out", status_changed_at=now, last_error_at=now)
            .execution_options(synchronize_session=False)
        )
        await counts.apply(session, deltas)
        touched.extend((group_id, v) for v in found)
        marked.extend(h[0] for h in hosts)
    return touched, marked


# -- operator changes ----------------------------------------------------------------------------

POLICY_FIELDS = (
    "max_updates_per_period",
    "period_seconds",
    "max_concurrent",
    "update_timeout_seconds",
    "safe_mode",
    "pause_on_failed_hosts",
    "pause_on_failed_percent",
    "windows",
    "percentage",
    "pin_version",
    "allow_downgrade",
    "reboot_timeout_seconds",
    "installed_counts_as_updating",
    "retire_after_seconds",
)


def change_policy(
    session: AsyncSession, group: Group, changes: dict[str, Any], actor: str, now: datetime
) -> dict[str, list[Any]]:
    """Apply validated `changes` to `group` and log them. Returns {field: [old, new]}."""
    diff: dict[str, list[Any]] = {}
    for name, value in changes.items():
        if name not in POLICY_FIELDS:
            raise ValueError(f"not a policy field: {name}")
        old = getattr(group, name)
        if old != value:
            setattr(group, name, value)
            diff[name] = [old, value]
    if group.max_updates_per_period is not None and not group.period_seconds:
        raise InvalidInputError("a limit of updates per period needs the period (--period 1h)")
    if diff:
        message = ", ".join(f"{k} {_show(v[0])} -> {_show(v[1])}" for k, v in diff.items())
        log_activity(session, now, actor, "policy", message, group.id, changes=diff)
    return diff


def _show(value: Any) -> str:
    return "none" if value is None else str(value)


# -- rollout status ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RolloutStatus:
    target: str | None
    state: str  # no_target | paused | done | running (see rollout_status)
    total: int
    complete: int  # hosts running the target
    in_progress: int  # granted the target (or a floor) and on the way, installed ones included
    installed: int  # of those, installed and waiting for their reboot
    longest_reboot_wait: float | None  # seconds the longest-waiting installed host has waited
    reboot_overdue: int  # installed hosts waiting longer than the reboot timeout (a warning)
    failed: int
    timed_out: int
    held: dict[str, int]  # hosts behind the target that the policy in force holds, by reason
    not_yet_eligible: int  # held by the staged percentage
    remaining: int  # hosts behind the target, not updating now
    to_update: int  # of those, the hosts the policy in force will still update
    grants_last_hour: int
    rate_per_hour: float | None  # what the ETA assumes
    eta_seconds: float | None


# Holds that the current policy will not lift by itself: those hosts are not "to update".
_STUCK_HOLDS = frozenset({"host_hold", "percentage"})


def rollout_key_sql(dialect: str, machine_id: Any, version: str) -> Any:
    """nebula.policy.rollout_key_hex in SQL: 16 hex digits of SHA-256(machine id, NUL, version)."""
    if dialect == "postgresql":
        data = (
            func.convert_to(machine_id, "UTF8")
            .op("||")(func.decode("00", "hex"))
            .op("||")(func.convert_to(literal(version), "UTF8"))
        )
        return func.substr(func.encode(func.sha256(data), "hex"), 1, 16)
    return func.nebula_rollout_key(machine_id, literal(version))  # registered in nebula.store.db


def _in_rollout_sql(dialect: str, policy: GroupPolicy, version: str | None) -> Any:
    if version is None or policy.percentage >= 100:
        return literal(True)
    threshold = rollout_threshold(policy.percentage)
    return rollout_key_sql(dialect, InstanceApp.instance_id, version) < format(threshold, "016x")


def current_hold(
    policy: GroupPolicy,
    now: datetime,
    *,
    held: bool,
    in_rollout: bool,
    recorded: str | None,
) -> str | None:
    """Why the policy in force holds back a host that is behind its target and not updating,
    in nebula.policy.screen's order; for the limits, the reason recorded at its last check.
    The same as nebula.policy.hold_now, for the booleans rollout_status computes in SQL."""
    if held:
        return HoldReason.HOST_HOLD.value
    if not policy.updates_enabled:
        return HoldReason.PAUSED.value
    if not is_open(policy.windows, now):
        return HoldReason.OUTSIDE_WINDOW.value
    if not in_rollout:
        return HoldReason.PERCENTAGE.value
    return recorded if recorded in LIMIT_HOLDS else None


Cell = tuple[str, str | None, str | None, bool, bool, bool, bool, int]
"""Hosts alike for the status: (status, recorded hold, version, granted the target or a floor,
working past the update timeout, held by an operator, inside the staged percentage, how
many). An installed host is never late: the update timeout ends where its reboot wait begins."""


def _cell_columns(
    dialect: str,
    policy: GroupPolicy,
    target: str | None,
    floors: Sequence[str],
    timeout_cutoff: datetime | None,
) -> tuple[Any, ...]:
    no: Any = literal(False)
    return (
        InstanceApp.status.label("status"),
        InstanceApp.hold_reason.label("hold"),
        InstanceApp.version.label("version"),
        (InstanceApp.granted_version.in_([target, *floors]) if target else no).label(
            "granted_target"
        ),
        (
            InstanceApp.status.in_(sorted(WORKING)) & (InstanceApp.granted_at <= timeout_cutoff)
            if timeout_cutoff
            else no
        ).label("late"),
        InstanceApp.held.label("held"),
        _in_rollout_sql(dialect, policy, target).label("inside"),
    )


async def _grouped_cells(session: AsyncSession, columns: tuple[Any, ...], where: Any) -> list[Cell]:
    # Booleans are computed in a subquery and grouped by name: PostgreSQL would not match a
    # GROUP BY expression to the selected one when each carries its own bound parameter.
    rows = select(*columns).where(where).subquery()
    names = tuple(rows.c)
    stmt = select(*names, func.count()).group_by(*names)
    return [
        (s, h, v, bool(g), bool(late), bool(held), bool(inside), int(n))
        for s, h, v, g, late, held, inside, n in (await session.execute(stmt)).all()
    ]


def _on_target(target: str | None, version: str | None) -> bool:
    if target is None:
        return False
    have = try_parse_version(version)
    return version == target or (have is not None and have == try_parse_version(target))


def _ahead(policy: GroupPolicy, target: str | None, version: str | None) -> bool:
    """Ahead of the target, so not behind it (unless downgrades are allowed)."""
    have, want = try_parse_version(version), try_parse_version(target)
    return have is not None and want is not None and have > want and not policy.allow_downgrade


def _is_behind(policy: GroupPolicy, target: str | None, version: str | None) -> bool:
    """Whether a host on `version` still has `target` to reach (as rollout_status decides)."""
    return not _on_target(target, version) and not _ahead(policy, target, version)


async def scan_cells(
    session: AsyncSession,
    group: Group,
    target: str | None,
    now: datetime,
    floors: Sequence[str] = (),
) -> list[Cell]:
    """Every host of the group grouped into cells, in one scan: what `host_cells` must add up
    to (the tests compare them), and what rollout status did before the counts knew versions."""
    policy = policy_of(group)
    columns = _cell_columns(
        session.bind.dialect.name, policy, target, floors, _timeout_cutoff(policy, now)
    )
    return await _grouped_cells(session, columns, (InstanceApp.group_id == group.id) & LIVE)


def _timeout_cutoff(policy: GroupPolicy, now: datetime) -> datetime | None:
    if not policy.update_timeout_seconds:
        return None
    return now - timedelta(seconds=policy.update_timeout_seconds)


async def host_cells(
    session: AsyncSession,
    group: Group,
    target: str | None,
    now: datetime,
    floors: Sequence[str] = (),
) -> list[Cell]:
    """The group's hosts in cells, without scanning them all: the maintained counts by status
    and version give every host, and only the hosts for which more than those two matter are
    read one by one (each set from an index): in progress or failed, held by an operator, held
    by a limit at their last check, and while a staged percentage could hold them, the hosts
    behind the target. The rest are alike: a cell per (status, version) of what is left."""
    policy = policy_of(group)
    by_version = await counts.counts_by_version(session, group.id)
    singled_out = (
        InstanceApp.status.in_(sorted(IN_PROGRESS | FAILED))
        | (InstanceApp.held == True)  # noqa: E712 (SQL, matches the partial index's WHERE held)
        | InstanceApp.hold_reason.in_(sorted(LIMIT_HOLDS))
    )
    if (
        target is not None
        and policy.percentage < 100
        and policy.updates_enabled
        and is_open(policy.windows, now)
    ):
        behind = sorted(
            {v for _, v in by_version if v is not None and _is_behind(policy, target, v)}
        )
        if behind:
            singled_out = singled_out | InstanceApp.version.in_(behind)
        if any(v is None for _, v in by_version):
            singled_out = singled_out | InstanceApp.version.is_(None)
    columns = _cell_columns(
        session.bind.dialect.name, policy, target, floors, _timeout_cutoff(policy, now)
    )
    cells = await _grouped_cells(
        session, columns, (InstanceApp.group_id == group.id) & singled_out & LIVE
    )
    left = Counter(by_version)
    for status, _, version, *_, n in cells:
        left[(status, version)] -= n
    cells += [(s, None, v, False, False, False, True, n) for (s, v), n in left.items() if n]
    return cells


async def rollout_status(
    session: AsyncSession,
    group: Group,
    target: str | None,
    now: datetime,
    floors: Sequence[str] = (),
    cells: Sequence[Cell] | None = None,
) -> RolloutStatus:
    """The state of the group's rollout to `target` under the policy in force now, from the
    group's hosts in cells (`host_cells`, unless given). A host granted one of the `floors`
    (the stepping stones below the target) is on its way too: in progress, failed or timed out
    like one granted the target.

    Holds follow the policy now, not each host's last answer: after a resume nobody is "paused",
    after raising the percentage the hosts it adds are not "percentage". The staged percentage
    is drawn by the final target (as nebula.policy.screen does), computed in SQL per host."""
    policy = policy_of(group)
    if cells is None:
        cells = await host_cells(session, group, target, now, floors)
    total = complete = in_progress = installed = failed = timed_out = remaining = stuck = 0
    held: dict[str, int] = {}
    for status, recorded, version, granted_target, late, host_held, inside, n in cells:
        total += n
        # Versions compare as versions (the few distinct ones are grouped on): a host ahead of
        # the target is not behind it, so not "remaining".
        if _on_target(target, version):
            complete += n
            continue
        if status in IN_PROGRESS and granted_target and not late:
            in_progress += n
            if status == "installed":
                installed += n
            continue
        if _ahead(policy, target, version):
            continue
        remaining += n
        if granted_target and (status == "timed_out" or (status in IN_PROGRESS and late)):
            timed_out += n
        elif granted_target and status in FAILED:
            failed += n
            if status == "rolled_back":
                stuck += n  # never offered the version it rolled back from again
        elif target is not None:
            reason = current_hold(policy, now, held=host_held, in_rollout=inside, recorded=recorded)
            if reason is not None:
                held[reason] = held.get(reason, 0) + n
                if reason in _STUCK_HOLDS:
                    stuck += n
    to_update = remaining - stuck
    wait = await reboot_wait(session, group.id, policy, now)
    hour_ago = now - timedelta(hours=1)
    grants_last_hour = await _count(
        session,
        select(func.count())
        .select_from(Grant)
        .where(Grant.group_id == group.id, Grant.granted_at > hour_ago),
    )
    rate: float | None = None
    if policy.max_updates_per_period and policy.period_seconds:
        rate = policy.max_updates_per_period * 3600 / policy.period_seconds
    if grants_last_hour and (rate is None or grants_last_hour < rate):
        rate = float(grants_last_hour)
    if target is None:
        state = "no_target"
    elif not group.updates_enabled:
        state = "paused"
    elif to_update == 0 and in_progress == 0:
        state = "done"
    else:
        state = "running"
    eta: float | None = None
    if state == "done":
        eta = 0.0
    elif state == "running" and rate and to_update:
        eta = to_update / rate * 3600
    return RolloutStatus(
        target=target,
        state=state,
        total=total,
        complete=complete,
        in_progress=in_progress,
        installed=installed,
        longest_reboot_wait=wait.longest,
        reboot_overdue=wait.overdue,
        failed=failed,
        timed_out=timed_out,
        held=held,
        not_yet_eligible=held.get("percentage", 0),
        remaining=remaining,
        to_update=to_update,
        grants_last_hour=grants_last_hour,
        rate_per_hour=rate,
        eta_seconds=eta,
    )


@dataclass(frozen=True, slots=True)
class RebootWait:
    installed: int  # hosts of the group installed and waiting for their reboot
    longest: float | None  # seconds the longest-waiting one has waited
    overdue: int  # waiting longer than the group's reboot timeout (0 without one)


async def reboot_wait(
    session: AsyncSession, group_id: str, policy: GroupPolicy, now: datetime
) -> RebootWait:
    """How the group's installed hosts wait for their reboot: read from the (group, status)
    index, installed hosts only, never every host."""
    overdue: Any = literal(0)
    if policy.reboot_timeout_seconds:
        cutoff = now - timedelta(seconds=policy.reboot_timeout_seconds)
        overdue = func.coalesce(func.sum(case((InstanceApp.installed_at <= cutoff, 1), else_=0)), 0)
    row = (
        await session.execute(
            select(func.count(), func.min(InstanceApp.installed_at), overdue).where(
                InstanceApp.group_id == group_id, InstanceApp.status == "installed", LIVE
            )
        )
    ).one()
    n, oldest, late = row
    if isinstance(oldest, str):  # SQLite hands an aggregate of a date back as text
        oldest = datetime.fromisoformat(oldest)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    longest = max(0.0, (now - oldest).total_seconds()) if oldest is not None else None
    return RebootWait(int(n), longest, int(late))


async def recent_activity(
    session: AsyncSession, group_id: str | None, limit: int = 50
) -> list[Activity]:
    stmt = select(Activity).order_by(Activity.created_at.desc(), Activity.id.desc()).limit(limit)
    if group_id is not None:
        stmt = stmt.where(Activity.group_id == group_id)
    return list((await session.execute(stmt)).scalars())
