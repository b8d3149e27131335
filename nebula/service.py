"""One Omaha request = one short transaction. Protocol, policy and storage meet here and only here.

For each <app> of a request: find its group in the catalog snapshot (no query), record the host,
apply its events to its update state, and on an update check decide and record a grant. All of a
request's writes commit before the response is built, so a grant or an event that a host was
told "ok" about is durable. Imports nebula.omaha, nebula.policy, nebula.lifecycle, nebula.store
and nebula.metrics; nothing of nebula.web.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nebula import lifecycle
from nebula.metrics import Metrics
from nebula.omaha.model import (
    AppRequest,
    AppResponse,
    AppStatus,
    Manifest,
    Request,
    Response,
    UpdateCheckResult,
    UpdateStatus,
    arch_of,
)
from nebula.policy import (
    Decision,
    HoldReason,
    HostState,
    Verdict,
    decide,
    screen,
)
from nebula.store import counts, rollouts
from nebula.store.catalog import Catalog, CatalogCache, GroupEntry, bump_stamp
from nebula.store.db import transaction
from nebula.store.hosts import (
    MACHINE_ID_MAX,
    STATE_LIMITS,
    VERSION_MAX,
    HostFacts,
    clip,
    lock_instance_app,
    new_instance_app,
    record_event,
    upsert_instance,
)
from nebula.store.models import InstanceApp

log = logging.getLogger(__name__)

_UUID_TRACK = re.compile(r"^\{?[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\}?$")
DEFAULT_TRACK = "stable"  # what update_engine sends when update.conf names no GROUP


def normalize_track(track: str | None) -> str:
    track = (track or "").strip() or DEFAULT_TRACK
    if _UUID_TRACK.match(track):
        return track.strip("{}").lower()
    return track


@dataclass(frozen=True, slots=True)
class _AppOutcome:
    response: AppResponse
    decision: Decision | None = None
    group: GroupEntry | None = None


class OmahaService:
    """Answers parsed Omaha requests. Stateless apart from the catalog cache it is given."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        catalog: CatalogCache,
        metrics: Metrics,
        poll_interval: int | None = None,
    ) -> None:
        self._sessions = sessions
        self._catalog = catalog
        self._metrics = metrics
        self._poll_interval = poll_interval or None

    async def handle(self, request: Request, ip: str | None, now: datetime) -> Response:
        catalog = await self._catalog.get()
        outcomes: list[_AppOutcome] = []
        async with transaction(self._sessions) as session:
            for app in request.apps:
                outcomes.append(await self._handle_app(session, catalog, request, app, ip, now))
        # Counted after the commit: a rolled-back transaction granted nothing.
        for outcome in outcomes:
            self._count(outcome)
        return Response(apps=tuple(o.response for o in outcomes))

    async def _handle_app(
        self,
        session: AsyncSession,
        catalog: Catalog,
        request: Request,
        app: AppRequest,
        ip: str | None,
        now: datetime,
    ) -> _AppOutcome:
        if app.app_id not in catalog.apps:
            # Acknowledge its ping and events as the contract asks; there is nothing to check.
            return _AppOutcome(
                AppResponse(app.raw_app_id, AppStatus.UNKNOWN_APP, app.ping, len(app.events), None)
            )
        group = catalog.find_group(app.app_id, normalize_track(app.track), arch_of(request, app))
        if group is None:
            return _AppOutcome(
                AppResponse(
                    app.raw_app_id,
                    AppStatus.OK,
                    app.ping,
                    len(app.events),
                    UpdateCheckResult(UpdateStatus.UNKNOWN_TRACK) if app.update_check else None,
                ),
            )
        if not app.machine_id:
            # Nothing to record state against; answer as for a host that is up to date.
            return _AppOutcome(self._answer(app, None))
        # What state is keyed and decided on cannot be clipped to fit the database: refuse this
        # app (an error status of its own; the request's other apps are answered) rather than
        # fail on PostgreSQL's length check (500) or merge distinct hosts.
        if len(app.machine_id) > MACHINE_ID_MAX or (
            app.version is not None and len(app.version) > VERSION_MAX
        ):
            log.info("app %r refused: machineid or version too long", app.raw_app_id[:64])
            return _AppOutcome(
                AppResponse(
                    app.raw_app_id, AppStatus.INVALID_REQUEST, app.ping, len(app.events), None
                )
            )
        # The group's row is locked before the host's (the lock order of nebula.store.rollouts)
        # when this request may need it: a check that could be granted (judged on the cached
        # policy; the decision itself is made on the locked row) or a failure to count.
        target = group.target_for(app.version)
        final = group.final
        may_grant = app.update_check and (
            screen(
                HostState(app.version, machine_id=app.machine_id),
                group.policy,
                target,
                now,
                final,
            )
            is None
        )
        may_fail = any(e.result == lifecycle.RESULT_ERROR for e in app.events)
        locked = await rollouts.lock_group(session, group.id) if may_grant or may_fail else None
        policy = rollouts.policy_of(locked) if locked is not None else group.policy
        await upsert_instance(
            session,
            HostFacts(
                machine_id=app.machine_id,
                alias=app.machine_alias,
                ip=ip,
                oem=app.oem,
                oem_version=app.oem_version,
                aleph_version=app.aleph_version,
                board=app.board,
            ),
            now,
        )
        state = await lock_instance_app(session, app.machine_id, app.app_id)
        before: counts.Key | None = (state.group_id, state.status) if state else None
        if state is None:
            state = new_instance_app(app.machine_id, app.app_id, now)
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
            failed |= self._apply_event(
                session,
                state,
                group,
                app,
                event.type,
                event.result,
                event.error_code,
                event.previous_version,
                now,
            )
        if failed and state.granted_version:
            await rollouts.record_failure(
                session,
                group.id,
                state.granted_version,
                app.machine_id,
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
                log.warning("group %s paused: %s", group.name, reason)
        if not app.update_check:
            await _count_move(session, before, state)
            return _AppOutcome(self._answer(app, None), group=group)
        state.last_check_at = now
        granted = state.granted_version
        if granted is not None and lifecycle.completes(state.status, granted, app.version):
            _set_status(state, "complete", now)
            state.completed_at = now
            await rollouts.record_completion(session, group.id, granted, app.machine_id, now)
        host = HostState(
            app.version, state.status, state.granted_version, state.held, app.machine_id
        )
        decision = screen(host, policy, target, now, final)
        if decision is None:
            # Eligible: only now count, under the group lock taken above (screen on the cached
            # policy said "eligible" for this host too, so `locked` is set).
            if locked is None or target is None:
                decision = Decision(Verdict.HOLD, HoldReason.PAUSED, target)
            else:
                stats = await rollouts.rollout_stats(
                    session, group.id, policy, target, now, app.machine_id
                )
                decision = decide(host, policy, target, now, stats, final)
        manifest: Manifest | None = None
        chosen = (
            group.package_for(target, app.version, app.delta_okay)
            if decision.grant and target is not None
            else None
        )
        if chosen is not None:
            manifest = chosen.manifest
            if not decision.regrant:
                state.granted_version = chosen.version
                state.granted_at = now
                state.completed_at = None
                _set_status(state, "granted", now)
                rollouts.record_grant(session, group.id, app.machine_id, chosen.version, now)
            state.granted_package_id = chosen.id
            state.hold_reason = None
        else:
            if state.status == "new":
                _set_status(state, "idle", now)
            state.hold_reason = (
                decision.reason.value
                if decision.verdict is Verdict.HOLD and decision.reason is not None
                else None
            )
        await _count_move(session, before, state)
        return _AppOutcome(self._answer(app, manifest), decision, group)

    def _apply_event(
        self,
        session: AsyncSession,
        state: InstanceApp,
        group: GroupEntry,
        app: AppRequest,
        event_type: int,
        result: int,
        error_code: int | None,
        previous_version: str | None,
        now: datetime,
    ) -> bool:
        """Log one event and move the host's status; True if it moved to a failed status."""
        record_event(
            session,
            now=now,
            machine_id=state.instance_id,
            app_id=state.app_id,
            group_id=group.id,
            event_type=event_type,
            event_result=result,
            error_code=error_code,
            version=app.version,
            previous_version=previous_version,
            boot_id=app.boot_id,
        )
        self._metrics.count_event(event_type, result, error_code)
        transition = lifecycle.after_event(state.status, event_type, result, error_code)
        if transition is None:
            return False
        _set_status(state, transition.status, now)
        if transition.status in lifecycle.FAILED:
            state.last_error_code = transition.error_code
            state.last_error_at = now
            return True
        return False

    def _answer(self, app: AppRequest, manifest: Manifest | None) -> AppResponse:
        check = None
        if app.update_check:
            status = UpdateStatus.OK if manifest is not None else UpdateStatus.NO_UPDATE
            check = UpdateCheckResult(status, manifest, self._poll_interval)
        return AppResponse(app.raw_app_id, AppStatus.OK, app.ping, len(app.events), check)

    def _count(self, outcome: _AppOutcome) -> None:
        check = outcome.response.update_check
        if outcome.response.status is not AppStatus.OK:
            reason = (
                "unknown_app"
                if outcome.response.status is AppStatus.UNKNOWN_APP
                else "invalid_request"
            )
            self._metrics.update_checks.labels(decision="error", reason=reason).inc()
            return
        if check is None:
            return
        if check.status is UpdateStatus.UNKNOWN_TRACK:
            self._metrics.update_checks.labels(decision="error", reason="unknown_track").inc()
            return
        decision = outcome.decision
        if decision is None:
            self._metrics.update_checks.labels(decision="noupdate", reason="no_machine_id").inc()
            return
        reason = (
            decision.reason.value
            if decision.reason is not None
            else ("regrant" if decision.regrant else "new")
        )
        self._metrics.update_checks.labels(decision=decision.verdict.value, reason=reason).inc()
        if decision.grant and not decision.regrant and outcome.group is not None:
            self._metrics.grants.labels(group=outcome.group.name).inc()


def _set_status(state: InstanceApp, status: str, now: datetime) -> None:
    if state.status != status:
        state.status = status
        state.status_changed_at = now


async def _count_move(session: AsyncSession, before: counts.Key | None, state: InstanceApp) -> None:
    """Keep the per-group status counts in step with this host (only when it moved)."""
    after = (state.group_id, state.status)
    if before != after:
        deltas: Counter[counts.ShardKey] = Counter()
        counts.move(deltas, state.instance_id, before, after)
        await counts.apply(session, deltas)
