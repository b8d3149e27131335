"""The answer to one Omaha request, app by app: from memory when nothing changes, otherwise from
one short transaction that commits before the answer is built.

For each <app>: find its group in the catalog snapshot (no query). A steady-state check-in (the
host says what it said last time; nebula.checkin.steady) is decided on this process's snapshot
of the host (nebula.store.hostcache; one indexed read when it has none) and only its last-seen
time is queued for the next batch (nebula.store.seen). Everything else of the request goes
through nebula.service.transition in one transaction, so that a grant or an event a host was
told "ok" about is durable; after the commit this process's snapshots are updated and, on
PostgreSQL, every other process hears of the hosts that changed (nebula.store.changes).
Imports nebula.omaha, nebula.policy, nebula.checkin, nebula.store and nebula.metrics; nothing
of nebula.web.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache, partial
from typing import TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from nebula.checkin import facts_key, steady
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
from nebula.policy import Decision
from nebula.service.grantbatch import GrantBatcher
from nebula.service.transition import (
    NeedsExclusiveLock,
    Transition,
    apply_app,
    first_check_done,
    host_facts,
    known_grant_done,
    plan_first_check,
    plan_known_grant,
)
from nebula.store.catalog import Catalog, CatalogCache, GroupEntry
from nebula.store.changes import HostChanges
from nebula.store.db import (
    is_disconnect,
    is_rolled_back_conflict,
    point_read,
    run_again_if_lost,
    single_statement,
    transaction,
)
from nebula.store.firstbatch import batch_key, write_first_checks
from nebula.store.firstcheck import (
    LOCK_EXCLUSIVE,
    LOCK_SHARE,
    FirstCheck,
    Written,
    write_first_check,
)
from nebula.store.hostcache import HostCache, Snapshot, snapshot
from nebula.store.hosts import (
    INSTANCE_LIMITS,
    MACHINE_ID_MAX,
    STATE_LIMITS,
    VERSION_MAX,
    StoredHost,
    clip,
    read_host,
)
from nebula.store.knownbatch import batch_key as known_batch_key
from nebula.store.knownbatch import batchable, write_known_grants
from nebula.store.knowngrant import KnownGrant, write_known_grant
from nebula.store.knowngrant import Outcome as GrantOutcome
from nebula.store.seen import Seen, SeenWriter

log = logging.getLogger(__name__)

_P = TypeVar("_P")  # what a grant statement writes: a plan, or a batch of plans
_R = TypeVar("_R")  # and what it hands back

_UUID_TRACK = re.compile(r"^\{?[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\}?$")
DEFAULT_TRACK = "stable"  # what update_engine sends when update.conf names no GROUP


@lru_cache(maxsize=1024)  # a fleet sends a few tracks; bounded, since hosts send anything
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
    machine_id: str | None = None


@dataclass(frozen=True, slots=True)
class _Pending:
    """An app that goes through the transaction."""

    index: int
    app: AppRequest
    group: GroupEntry
    machine_id: str


class OmahaService:
    """Answers parsed Omaha requests. Holds nothing but caches: the catalog snapshot and the
    snapshots of hosts, both of which any process may drop at any time.

    Without a `seen` writer every request goes through the transaction (as in tests that
    drive the service directly)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        catalog: CatalogCache,
        metrics: Metrics,
        poll_interval: int | None = None,
        *,
        read_sessions: async_sessionmaker[AsyncSession] | None = None,
        hosts: HostCache | None = None,
        changes: HostChanges | None = None,
        seen: SeenWriter | None = None,
    ) -> None:
        self._sessions = sessions
        self._read_sessions = read_sessions or sessions
        self._catalog = catalog
        self._metrics = metrics
        self._poll_interval = poll_interval or None
        # `is None`, not `or`: an empty cache is falsy (it has a length).
        self._hosts = HostCache(0) if hosts is None else hosts
        self._changes = HostChanges(self._hosts, "sqlite") if changes is None else changes
        self._seen = seen
        bind = sessions.kw.get("bind")
        self._one_statement = isinstance(bind, AsyncEngine) and bind.dialect.name == "postgresql"
        # First-check grants of a group, several to a statement (PostgreSQL).
        self._grants: GrantBatcher[FirstCheck, Written] = GrantBatcher(
            batch_key,
            partial(self._autocommit, write_first_checks),
            partial(self._autocommit, write_first_check),
        )
        # Known hosts' grants, likewise (counted ones only of hosts that hold no slot).
        self._known_grants: GrantBatcher[KnownGrant, GrantOutcome] = GrantBatcher(
            known_batch_key,
            partial(self._autocommit, write_known_grants),
            partial(self._autocommit, write_known_grant),
        )

    @property
    def grant_batches(self) -> GrantBatcher[FirstCheck, Written]:
        """The batcher of counted first-check grants (tests read how many wait)."""
        return self._grants

    @property
    def known_grant_batches(self) -> GrantBatcher[KnownGrant, GrantOutcome]:
        """The batcher of known hosts' counted grants (tests read how many wait)."""
        return self._known_grants

    async def close(self) -> None:
        """Wait for the batches of grants in flight (at shutdown)."""
        await self._grants.close()
        await self._known_grants.close()

    async def handle(self, request: Request, ip: str | None, now: datetime) -> Response:
        catalog = await self._catalog.get()
        outcomes: list[_AppOutcome | None] = []
        pending: list[_Pending] = []
        for index, app in enumerate(request.apps):
            early, group = self._without_state(catalog, request, app)
            outcomes.append(early)
            if early is None and group is not None and app.machine_id:
                pending.append(_Pending(index, app, group, app.machine_id))
        if self._seen is not None:
            # A host's first check-in may be written in a statement of its own only when it is
            # the request's one app: a request is one transaction.
            first = catalog.stamp if len(pending) == 1 and self._one_statement else None
            still: list[_Pending] = []
            for item in pending:
                outcome = await self._steady(self._seen, item, ip, now, first)
                if outcome is None:
                    still.append(item)
                else:
                    outcomes[item.index] = outcome
            pending = still
        if pending:
            for item, result in zip(pending, await self._transact(pending, ip, now), strict=True):
                outcomes[item.index] = _AppOutcome(
                    self._answer(item.app, result.manifest),
                    result.decision,
                    item.group,
                    item.machine_id,
                )
        answered = [o for o in outcomes if o is not None]
        # Counted after the commit: a rolled-back transaction granted nothing.
        for outcome in answered:
            self._count(outcome)
        if len(answered) == 1:
            return _one_app(answered[0].response)
        return Response(apps=tuple(o.response for o in answered))

    def _without_state(
        self, catalog: Catalog, request: Request, app: AppRequest
    ) -> tuple[_AppOutcome | None, GroupEntry | None]:
        """The answer to an app that has no host state to look at, or its group."""
        if app.app_id not in catalog.apps:
            # Acknowledge its ping and events as the contract asks; there is nothing to check.
            status = AppStatus.UNKNOWN_APP
            return _AppOutcome(
                AppResponse(app.raw_app_id, status, app.ping, len(app.events), None)
            ), None
        group = catalog.find_group(app.app_id, normalize_track(app.track), arch_of(request, app))
        if group is None:
            check = UpdateCheckResult(UpdateStatus.UNKNOWN_TRACK) if app.update_check else None
            response = AppResponse(app.raw_app_id, AppStatus.OK, app.ping, len(app.events), check)
            return _AppOutcome(response), None
        if not app.machine_id:
            # Nothing to record state against; answer as for a host that is up to date.
            return _AppOutcome(self._answer(app, None)), group
        # What state is keyed and decided on cannot be clipped to fit the database: refuse this
        # app (an error status of its own; the request's other apps are answered) rather than
        # fail on PostgreSQL's length check (500) or merge distinct hosts.
        if len(app.machine_id) > MACHINE_ID_MAX or (
            app.version is not None and len(app.version) > VERSION_MAX
        ):
            log.info("app %r refused: machineid or version too long", app.raw_app_id[:64])
            status = AppStatus.INVALID_REQUEST
            return _AppOutcome(
                AppResponse(app.raw_app_id, status, app.ping, len(app.events), None)
            ), None
        return None, group

    async def _steady(
        self,
        seen: SeenWriter,
        item: _Pending,
        ip: str | None,
        now: datetime,
        first_stamp: int | None,
    ) -> _AppOutcome | None:
        """The answer to a check-in that changes nothing, or None. Only its last-seen time is
        queued; nothing is written now. With `first_stamp` (the catalog's stamp; PostgreSQL),
        the state of a host this process has no snapshot of is read by the statement that
        writes a new host's first check-in (nebula.store.firstcheck), whose answer this then
        is."""
        app, group, machine_id = item.app, item.group, item.machine_id
        known = self._hosts.get(machine_id, app.app_id)
        if known is None:
            since = self._hosts.stamp()
            planned = (
                plan_first_check(group, app, machine_id, ip, now, first_stamp)
                if first_stamp is not None
                else None
            )
            if planned is not None:
                plan, decision, manifest = planned
                written = await (
                    self._grants.write(plan)
                    if plan.lock in (LOCK_EXCLUSIVE, LOCK_SHARE)
                    else self._autocommit(write_first_check, plan)
                )
                if written.written:
                    result = first_check_done(
                        self._metrics, group, app, plan, decision, manifest, written
                    )
                    self._changes.applied([machine_id], {machine_id: result.after}, since)
                    return _AppOutcome(
                        self._answer(app, result.manifest), result.decision, group, machine_id
                    )
                stored = written.stored
            else:
                stored = await self._read_host(machine_id, app.app_id)
            if stored is None:
                # A new host (or app) the statement did not write (its plan needs the
                # transaction, the catalog was stale, or it raced): the transaction records it.
                return None
            facts = host_facts(app, machine_id, ip)
            known = snapshot(
                app.app_id,
                stored.group_id,
                stored.version,
                stored.status,
                stored.granted_version,
                stored.held,
                # Unknown facts (0) are never steady: the transaction writes and records them.
                facts_key(app) if stored.same_facts(facts, app.track) else 0,
                bool(stored.retired),
            )
            self._hosts.put(machine_id, known, since)
        target = group.target_for(app.version)
        decision = steady(known, app, group.id, group.policy, target, group.final, now)
        if decision is None:
            if first_stamp is None:
                return None
            return await self._known_grant(known, item, ip, now, first_stamp)
        for event in app.events:
            self._metrics.count_event(
                event.type, event.result, event.error_code, group.name, group.arch
            )
        seen.add(
            machine_id,
            app.app_id,
            Seen(
                now,
                clip(ip, INSTANCE_LIMITS["ip"]),
                clip(app.boot_id, STATE_LIMITS["boot_id"]) if app.boot_id else None,
                app.update_check,
            ),
        )
        return _AppOutcome(self._answer(app, None), decision if app.update_check else None, group)

    async def _known_grant(
        self, known: Snapshot, item: _Pending, ip: str | None, now: datetime, stamp: int
    ) -> _AppOutcome | None:
        """A known host's update check that may be granted, in one statement
        (nebula.store.knowngrant), or None for the transaction: a check the statement does not
        cover, or one it wrote nothing for (a stale catalog, or another process changed the
        host since `known` was read)."""
        app, group, machine_id = item.app, item.group, item.machine_id
        planned = plan_known_grant(
            known, group, app, machine_id, ip, now, stamp, self._changes.origin
        )
        if planned is None:
            return None
        plan, manifest = planned
        since = self._hosts.stamp()
        outcome = await (
            self._known_grants.write(plan)
            if batchable(plan)
            else self._autocommit(write_known_grant, plan)
        )
        if not outcome.written:
            return None
        result = known_grant_done(self._metrics, group, app, known, plan, manifest, outcome)
        self._changes.applied([machine_id], {machine_id: result.after}, since)
        return _AppOutcome(self._answer(app, result.manifest), result.decision, group, machine_id)

    async def _autocommit(
        self, statement: Callable[[AsyncConnection, _P], Awaitable[_R]], plan: _P
    ) -> _R:
        """`statement(conn, plan)`, one of the grant statements (a host's first check or a
        known host's grant, alone or a batch of them), in autocommit: it is its own
        transaction. Run once more on a fresh connection when the one it used turned out to be
        gone, or when PostgreSQL rolled it back as a deadlock's victim: safe, since a run that
        did commit left each host stored, or in a state other than the one the second run
        expects, and the second run writes nothing for it (the transaction then answers)."""

        async def write() -> _R:
            async with single_statement(self._sessions) as conn:
                return await statement(conn, plan)

        return await run_again_if_lost(write)

    async def _read_host(self, machine_id: str, app_id: str) -> StoredHost | None:
        """The stored state of a host this process has no snapshot of."""

        async def read() -> StoredHost | None:
            async with point_read(self._read_sessions) as conn:
                return await read_host(conn, machine_id, app_id)

        return await run_again_if_lost(read)

    async def _transact(
        self, pending: list[_Pending], ip: str | None, now: datetime
    ) -> list[Transition]:
        """The apps that may change state, in one transaction; then the host caches."""
        since = self._hosts.stamp()
        try:
            results = await self._apply(pending, ip, now, exclusive=False)
        except NeedsExclusiveLock:
            results = await self._apply(pending, ip, now, exclusive=True)
        self._changes.applied(
            [p.machine_id for p in pending],
            {p.machine_id: r.after for p, r in zip(pending, results, strict=True)},
            since,
        )
        return results

    async def _apply(
        self, pending: list[_Pending], ip: str | None, now: datetime, *, exclusive: bool
    ) -> list[Transition]:
        """The transaction, run again once on a fresh connection when the database connection
        turns out to be gone before the commit was sent, or PostgreSQL rolled it back as a
        deadlock's victim: nothing of it was written then. A connection lost during the commit
        is not retried (it may have committed): the host gets a 503 and asks again."""
        for attempt in (1, 2):
            committing = False
            try:
                async with transaction(self._sessions) as session:
                    results = [
                        await apply_app(
                            session,
                            self._metrics,
                            p.group,
                            p.app,
                            p.machine_id,
                            ip,
                            now,
                            exclusive=exclusive,
                        )
                        for p in pending
                    ]
                    moved = [p.machine_id for p, r in zip(pending, results, strict=True) if r.moved]
                    await self._changes.announce(session, moved)
                    committing = True
                return results
            except DBAPIError as exc:
                if attempt == 2:
                    raise
                if is_rolled_back_conflict(exc):
                    # PostgreSQL rolled the whole transaction back (a deadlock's victim): a
                    # second run is safe, and the host need not see a 500.
                    log.warning(
                        "transaction rolled back by the database (%s); running it again", exc.orig
                    )
                    continue
                if committing or not is_disconnect(exc):
                    raise
                log.info("database connection lost before the commit; running it again")
        raise AssertionError("unreachable")  # the loop returns or raises

    def _answer(self, app: AppRequest, manifest: Manifest | None) -> AppResponse:
        if manifest is None:
            return _no_update(
                app.raw_app_id, app.ping, len(app.events), app.update_check, self._poll_interval
            )
        check = None
        if app.update_check:
            check = UpdateCheckResult(UpdateStatus.OK, manifest, self._poll_interval)
        return AppResponse(app.raw_app_id, AppStatus.OK, app.ping, len(app.events), check)

    def _count(self, outcome: _AppOutcome) -> None:
        check = outcome.response.update_check
        if outcome.response.status is not AppStatus.OK:
            reason = (
                "unknown_app"
                if outcome.response.status is AppStatus.UNKNOWN_APP
                else "invalid_request"
            )
            self._metrics.count_check("error", reason)
            return
        if check is None:
            return
        if check.status is UpdateStatus.UNKNOWN_TRACK:
            self._metrics.count_check("error", "unknown_track")
            return
        decision = outcome.decision
        if decision is None:
            self._metrics.count_check("noupdate", "no_machine_id")
            return
        reason = (
            decision.reason.value
            if decision.reason is not None
            else ("regrant" if decision.regrant else "new")
        )
        self._metrics.count_check(decision.verdict.value, reason)
        if decision.grant and not decision.regrant and outcome.group is not None:
            group = outcome.group
            self._metrics.count_grant(group.name, group.arch)
            manifest = check.manifest
            # One line per new grant, after its commit (a retry's regrant is no news).
            log.info(
                "grant: host %r in group %s (%s) to %s",
                outcome.machine_id,
                group.name,
                group.arch,
                manifest.version if manifest is not None else decision.target,
            )


# The answers almost every check-in gets, made once: the same objects each time, which the
# response cache (nebula.omaha.build.build_response_cached) also finds at once. Bounded: the
# app id and event count are the host's.
@lru_cache(maxsize=1024)
def _no_update(
    raw_app_id: str, ping: bool, events: int, update_check: bool, poll_interval: int | None
) -> AppResponse:
    check = UpdateCheckResult(UpdateStatus.NO_UPDATE, None, poll_interval) if update_check else None
    return AppResponse(raw_app_id, AppStatus.OK, ping, events, check)


@lru_cache(maxsize=1024)
def _one_app(app: AppResponse) -> Response:
    return Response(apps=(app,))
