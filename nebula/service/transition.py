"""One app of an Omaha request that may change state, inside the request's transaction: record
the host, apply its events, count a failure, and on an update check decide and record a grant.

The group's row is locked before the host's (the lock order of nebula.store.rollouts) when the
request may need it: a check that could be granted (judged on the cached policy; the decision
itself is made on the locked row) or a failure to count. Events that mean something are logged;
the routine `3/2 previousversion=""` is only counted. Imports nebula.lifecycle, nebula.policy,
nebula.checkin, nebula.omaha.model, nebula.store and nebula.metrics.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from nebula import lifecycle
from nebula.checkin import facts_key
from nebula.metrics import Metrics
from nebula.omaha.model import AppRequest, Event, Manifest
from nebula.policy import (
    Decision,
    GroupPolicy,
    HoldReason,
    HostState,
    RolloutStats,
    Verdict,
    decide,
    screen,
)
from nebula.store import counts, firstcheck, knowngrant, rollouts
from nebula.store.catalog import GroupEntry, bump_stamp
from nebula.store.changes import CHANNEL
from nebula.store.hostcache import Snapshot, snapshot
from nebula.store.hosts import (
    INSTANCE_LIMITS,
    STATE_LIMITS,
    HostFacts,
    clip,
    lock_instance_app,
    new_instance_app,
    record_event,
    upsert_instance,
)
from nebula.store.models import InstanceApp

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Transition:
    """What one app's transaction decided, for the answer and for the caches after commit."""

    manifest: Manifest | None
    decision: Decision | None  # None for a request without an update check
    after: Snapshot  # the host's state as committed
    moved: bool  # whether state other processes may have cached changed


def host_facts(app: AppRequest, machine_id: str, ip: str | None) -> HostFacts:
    """What the request says about the host itself, as nebula.store.hosts records it."""
    return HostFacts(
        machine_id=machine_id,
        alias=app.machine_alias,
        ip=ip,
        oem=app.oem,
        oem_version=app.oem_version,
        aleph_version=app.aleph_version,
        board=app.board,
    )


def _snapshot_of(state: InstanceApp, app: AppRequest) -> Snapshot:
    return snapshot(
        state.app_id,
        state.group_id,
        state.version,
        state.status,
        state.granted_version,
        state.held,
        facts_key(app),
        state.retired_at is not None,
    )


def _cached_fields(s: Snapshot) -> tuple[object, ...]:
    return (s.group_id, s.version, s.status, s.granted_version, s.held, s.retired)


class NeedsExclusiveLock(Exception):
    """The group's lock is needed alone: its policy counts grants now, unlike the catalog that
    chose a shared lock, or a retired host in the middle of an update comes back."""


async def apply_app(
    session: AsyncSession,
    metrics: Metrics,
    group: GroupEntry,
    app: AppRequest,
    machine_id: str,
    ip: str | None,
    now: datetime,
    *,
    exclusive: bool = False,
) -> Transition:
    """Apply one app's request in `session`: the host's facts and state, its events, and the
    update check. `exclusive`: take the group's lock alone even where sharing it would do (a
    retry after NeedsExclusiveLock)."""
    target = group.target_for(app.version)
    final = group.final
    may_grant = app.update_check and (
        screen(HostState(app.version, machine_id=machine_id), group.policy, target, now, final)
        is None
    )
    may_fail = any(e.result == lifecycle.RESULT_ERROR for e in app.events)
    # A grant that counts nothing shares the group's lock with other such grants; a failure
    # (the gate counts) or a counting policy takes it alone.
    shared = may_grant and not may_fail and not group.policy.counts_grants and not exclusive
    locked = (
        await rollouts.lock_group(session, group.id, shared=shared)
        if may_grant or may_fail or exclusive
        else None
    )
    policy = rollouts.policy_of(locked) if locked is not None else group.policy
    if shared and policy.counts_grants:
        # Limits were set after this process read its catalog. A shared lock cannot count
        # exactly, and upgrading it could deadlock with a grant doing the same: start over
        # (nothing is written yet) with the lock alone.
        raise NeedsExclusiveLock(group.id)
    await upsert_instance(session, host_facts(app, machine_id, ip), now)
    state = await lock_instance_app(session, machine_id, app.app_id)
    before: counts.Key | None = (state.group_id, state.status, state.version) if state else None
    cached_before = _cached_fields(_snapshot_of(state, app)) if state is not None else None
    if state is not None and state.retired_at is not None:
        # Back after going silent past retire_after: live again with its state intact, and in
        # the counts again (it was in none). An update in progress joins the concurrency and
        # canary counts, which only change under the group's lock: take it (start over).
        if locked is None and state.status in lifecycle.IN_PROGRESS:
            raise NeedsExclusiveLock(group.id)
        state.retired_at = None
        before = None
    if state is None:
        state = new_instance_app(machine_id, app.app_id, now)
        session.add(state)
    state.group_id = group.id
    state.track = clip(app.track, STATE_LIMITS["track"])
    if app.boot_id:
        state.boot_id = clip(app.boot_id, STATE_LIMITS["boot_id"])
    if app.version:
        # Every request names the running version; update_engine_stub (diskless hosts)
        # only ever sends events, so recording it at checks only would never learn it.
        state.version = app.version
    failed = False
    for event in app.events:
        failed |= _apply_event(session, metrics, state, group, app, event, now)
    if failed and state.granted_version:
        await rollouts.record_failure(
            session,
            group.id,
            state.granted_version,
            machine_id,
            state.status,
            state.last_error_code,
            now,
        )
    if failed and locked is not None and state.granted_version:
        await session.flush()  # the counts below must see this host's new status
        reason = await rollouts.apply_failure_gate(session, locked, state.granted_version, now)
        if reason is not None:
            await bump_stamp(session)  # every replica's catalog must learn of the pause
            policy = rollouts.policy_of(locked)
    decision: Decision | None = None
    manifest: Manifest | None = None
    if app.update_check:
        decision, manifest = await _check(
            session, state, group, app, machine_id, policy, target, locked is not None, now
        )
    await _count_move(session, before, state)
    after = _snapshot_of(state, app)
    moved = cached_before is not None and cached_before != _cached_fields(after)
    return Transition(manifest, decision, after, moved)


async def _check(
    session: AsyncSession,
    state: InstanceApp,
    group: GroupEntry,
    app: AppRequest,
    machine_id: str,
    policy: GroupPolicy,
    target: str | None,
    locked: bool,
    now: datetime,
) -> tuple[Decision, Manifest | None]:
    """The update check: completion, the decision, and the grant it makes."""
    state.last_check_at = now
    granted = state.granted_version
    if granted is not None and lifecycle.completes(state.status, granted, app.version):
        _set_status(state, "complete", now)
        state.completed_at = now
        await rollouts.record_completion(session, group.id, granted, machine_id, now)
    host = HostState(app.version, state.status, state.granted_version, state.held, machine_id)
    final = group.final
    decision = screen(host, policy, target, now, final)
    if decision is None:
        # Eligible: only now count, under the group lock taken above (screen on the cached
        # policy said "eligible" for this host too, so the group is locked).
        if not locked or target is None:
            decision = Decision(Verdict.HOLD, HoldReason.PAUSED, target)
        else:
            stats = await rollouts.rollout_stats(session, group.id, policy, target, now, machine_id)
            decision = decide(host, policy, target, now, stats, final)
    chosen = (
        group.package_for(target, app.version, app.delta_okay)
        if decision.grant and target is not None
        else None
    )
    if chosen is None:
        if state.status == "new":
            _set_status(state, "idle", now)
        state.hold_reason = (
            decision.reason.value
            if decision.verdict is Verdict.HOLD and decision.reason is not None
            else None
        )
        return decision, None
    if not decision.regrant:
        state.granted_version = chosen.version
        state.granted_at = now
        state.completed_at = None
        state.installed_at = None
        _set_status(state, "granted", now)
        rollouts.record_grant(session, group.id, machine_id, chosen.version, now)
    state.granted_package_id = chosen.id
    state.hold_reason = None
    return decision, chosen.manifest


def _apply_event(
    session: AsyncSession,
    metrics: Metrics,
    state: InstanceApp,
    group: GroupEntry,
    app: AppRequest,
    event: Event,
    now: datetime,
) -> bool:
    """Log one event (unless routine) and move the host's status; True if it moved to a
    failed status."""
    if not lifecycle.is_routine(event.type, event.result, event.previous_version):
        record_event(
            session,
            now=now,
            machine_id=state.instance_id,
            app_id=state.app_id,
            group_id=group.id,
            event_type=event.type,
            event_result=event.result,
            error_code=event.error_code,
            version=app.version,
            previous_version=event.previous_version,
            boot_id=app.boot_id,
        )
    metrics.count_event(event.type, event.result, event.error_code, group.name, group.arch)
    transition = lifecycle.after_event(state.status, event.type, event.result, event.error_code)
    if transition is None:
        return False
    _set_status(state, transition.status, now)
    if transition.status == "installed":
        state.installed_at = now  # its reboot wait starts: the update timeout ends here
    if transition.status in lifecycle.FAILED:
        state.last_error_code = transition.error_code
        state.last_error_at = now
        return True
    return False


def _set_status(state: InstanceApp, status: str, now: datetime) -> None:
    if state.status != status:
        state.status = status
        state.status_changed_at = now


async def _count_move(session: AsyncSession, before: counts.Key | None, state: InstanceApp) -> None:
    """Keep the per-group status counts in step with this host (only when it moved)."""
    after = (state.group_id, state.status, state.version)
    if before != after:
        deltas: Counter[counts.ShardKey] = Counter()
        counts.move(deltas, state.instance_id, before, after)
        await counts.apply(session, deltas)


# -- a host's first check-in in one statement (PostgreSQL) ---------------------------------------


def plan_first_check(
    group: GroupEntry,
    app: AppRequest,
    machine_id: str,
    ip: str | None,
    now: datetime,
    stamp: int,
) -> tuple[firstcheck.FirstCheck, Decision | None, Manifest | None] | None:
    """What a host that has no state yet writes at its first check-in, decided as apply_app
    would (without counts: those only the statement reads), or None when it needs apply_app:
    events to log, or a grant that is not a plain one. Returns the plan, and the decision and
    manifest that hold unless the gate's counts hold the host."""
    if any(not lifecycle.is_routine(e.type, e.result, e.previous_version) for e in app.events):
        return None  # events to log (a new host's events never move its status)
    status, hold_reason, lock = "new", None, firstcheck.LOCK_NONE
    last_check = None
    decision: Decision | None = None
    chosen = None
    policy = group.policy
    target = group.target_for(app.version)
    limits = firstcheck.Limits()
    if app.update_check:
        last_check, status = now, "idle"
        host = HostState(app.version, "new", None, False, machine_id)
        decision = screen(host, policy, target, now, group.final)
        if decision is None:
            if target is None:
                return None
            chosen = group.package_for(target, app.version, app.delta_okay)
            if chosen is None:
                return None
            decision = Decision(Verdict.GRANT, None, target)
            lock = firstcheck.LOCK_EXCLUSIVE if policy.counts_grants else firstcheck.LOCK_SHARE
            limits = _limits(policy, target, now) if policy.counts_grants else limits
        elif decision.grant:
            return None  # a new host has nothing to be granted again
        elif decision.verdict is Verdict.HOLD and decision.reason is not None:
            hold_reason = decision.reason.value
    facts = host_facts(app, machine_id, ip)
    plan = firstcheck.FirstCheck(
        machine_id=machine_id,
        app_id=app.app_id,
        group_id=group.id,
        stamp=stamp,
        lock=lock,
        limits=limits,
        now=now,
        ip=clip(ip, INSTANCE_LIMITS["ip"]),
        facts={
            name: clip(getattr(facts, name), INSTANCE_LIMITS[column])
            for name, column in _FACT_COLUMNS
        },
        track=clip(app.track, STATE_LIMITS["track"]),
        version=app.version or None,
        boot_id=clip(app.boot_id, STATE_LIMITS["boot_id"]) if app.boot_id else None,
        status=status,
        hold_reason=hold_reason,
        last_check_at=last_check,
        granted_version=chosen.version if chosen is not None else None,
        granted_package_id=chosen.id if chosen is not None else None,
    )
    return plan, decision, chosen.manifest if chosen is not None else None


_FACT_COLUMNS = (
    ("alias", "alias"),
    ("oem", "oem"),
    ("oem_version", "oem_version"),
    ("aleph_version", "aleph_version"),
    ("board", "board"),
)


def _limits(policy: GroupPolicy, target: str, now: datetime) -> firstcheck.Limits:
    """What rollout_stats counts for `policy`, for the gate to count under its lock."""
    rate = policy.max_updates_per_period is not None and bool(policy.period_seconds)
    return firstcheck.Limits(
        since=now - timedelta(seconds=policy.period_seconds or 0) if rate else None,
        max_grants=policy.max_updates_per_period if rate else None,
        max_concurrent=policy.max_concurrent,
        working=tuple(sorted(lifecycle.WORKING)),
        cutoff=(
            now - timedelta(seconds=policy.update_timeout_seconds)
            if policy.update_timeout_seconds
            else None
        ),
        installed_counts=policy.installed_counts_as_updating,
        safe_target=target if policy.safe_mode else None,
        in_progress=tuple(sorted(lifecycle.IN_PROGRESS)),
    )


def first_check_done(
    metrics: Metrics,
    group: GroupEntry,
    app: AppRequest,
    plan: firstcheck.FirstCheck,
    decision: Decision | None,
    manifest: Manifest | None,
    written: firstcheck.Written,
) -> Transition:
    """The outcome of a first check-in the statement wrote: the decision named from the counts
    it read (as nebula.policy.decide names it), and the host's snapshot."""
    if plan.lock != firstcheck.LOCK_NONE and not written.granted:
        stats = RolloutStats(
            written.grants, written.in_flight, written.target_completed, written.target_in_flight
        )
        host = HostState(app.version, "new", None, False, plan.machine_id)
        target = group.target_for(app.version)
        decision = decide(host, group.policy, target, plan.now, stats, group.final)
        named = decision.reason.value if decision.reason is not None else None
        if decision.grant or named != written.hold_reason:
            log.error(
                "first check of %r: the gate held it for %s, decide() says %s",
                plan.machine_id,
                written.hold_reason,
                decision,
            )
        manifest = None
    for event in app.events:
        metrics.count_event(event.type, event.result, event.error_code, group.name, group.arch)
    after = snapshot(
        app.app_id,
        group.id,
        plan.version,
        "granted" if written.granted else plan.status,
        plan.granted_version if written.granted else None,
        False,
        facts_key(app),
        False,
    )
    return Transition(manifest, decision, after, moved=False)


# -- a known host's grant in one statement (PostgreSQL) ------------------------------------------


def plan_known_grant(
    known: Snapshot,
    group: GroupEntry,
    app: AppRequest,
    machine_id: str,
    ip: str | None,
    now: datetime,
    stamp: int,
    origin: str,
) -> tuple[knowngrant.KnownGrant, Manifest] | None:
    """The grant a known host's update check may get, written by one statement
    (nebula.store.knowngrant) on the state `known` says it has, or None when the check needs
    apply_app: anything but an update check with routine events from a host whose group,
    version and facts are as recorded, screened eligible for a new grant (a regrant, a
    completion, a held host or a new host's first check go through the transaction)."""
    if not app.update_check or known.status == "new" or known.retired:
        return None
    if known.version != app.version or known.group_id != group.id:
        return None
    if known.facts != facts_key(app):
        return None
    if any(not lifecycle.is_routine(e.type, e.result, e.previous_version) for e in app.events):
        return None
    if lifecycle.completes(known.status, known.granted_version, app.version):
        return None
    policy = group.policy
    target = group.target_for(app.version)
    host = HostState(app.version, known.status, known.granted_version, known.held, machine_id)
    if target is None or screen(host, policy, target, now, group.final) is not None:
        return None
    chosen = group.package_for(target, app.version, app.delta_okay)
    if chosen is None:
        return None
    counted = policy.counts_grants
    plan = knowngrant.KnownGrant(
        machine_id=machine_id,
        app_id=app.app_id,
        group_id=group.id,
        stamp=stamp,
        lock=firstcheck.LOCK_EXCLUSIVE if counted else firstcheck.LOCK_SHARE,
        limits=_limits(policy, target, now) if counted else firstcheck.Limits(),
        now=now,
        ip=clip(ip, INSTANCE_LIMITS["ip"]),
        track=clip(app.track, STATE_LIMITS["track"]),
        boot_id=clip(app.boot_id, STATE_LIMITS["boot_id"]) if app.boot_id else None,
        version=known.version,
        status=known.status,
        granted_version=known.granted_version,
        held=known.held,
        new_version=chosen.version,
        package_id=chosen.id,
        notify_channel=CHANNEL,
        notify_payload=f"{origin}:{machine_id}",
    )
    return plan, chosen.manifest


def known_grant_done(
    metrics: Metrics,
    group: GroupEntry,
    app: AppRequest,
    known: Snapshot,
    plan: knowngrant.KnownGrant,
    manifest: Manifest,
    outcome: knowngrant.Outcome,
) -> Transition:
    """The outcome of a known host's check the statement wrote: granted, or held by the limit
    its counts named (as nebula.policy.decide names it)."""
    target = group.target_for(app.version)
    host = HostState(app.version, known.status, known.granted_version, known.held, plan.machine_id)
    if outcome.granted:
        decision = Decision(Verdict.GRANT, None, target)
    else:
        stats = RolloutStats(
            outcome.grants, outcome.in_flight, outcome.target_completed, outcome.target_in_flight
        )
        decision = decide(host, group.policy, target, plan.now, stats, group.final)
        named = decision.reason.value if decision.reason is not None else None
        if decision.grant or named != outcome.hold_reason:
            log.error(
                "check of %r: the gate held it for %s, decide() says %s",
                plan.machine_id,
                outcome.hold_reason,
                decision,
            )
    for event in app.events:
        metrics.count_event(event.type, event.result, event.error_code, group.name, group.arch)
    after = snapshot(
        app.app_id,
        group.id,
        known.version,
        "granted" if outcome.granted else known.status,
        plan.new_version if outcome.granted else known.granted_version,
        known.held,
        known.facts,
        False,
    )
    return Transition(manifest if outcome.granted else None, decision, after, outcome.granted)
