"""The steady state of a fleet: whether a check-in changes nothing, so that it is answered from
memory and only its last-seen time is written (later, in a batch).

Almost every request comes from a host that is current, or held back by a rule, and says again
what it said last time. Such a request needs no transaction: `steady` returns its decision. It
returns None for anything that may change state and must go through the Omaha transaction: a new
host or application, another version, group or track, changed host facts, an event that means
something, a completion, a retired host coming back, a host the rules leave eligible (the limits
need counts under the group's lock), and every grant or regrant.

Pure: imports nebula.policy, nebula.lifecycle and nebula.omaha.model. The snapshot is the one
nebula.store.hostcache holds; its type is described here by the attributes read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from nebula import lifecycle
from nebula.omaha.model import AppRequest
from nebula.policy import Decision, GroupPolicy, HostState, Verdict, screen


class Snapshot(Protocol):
    @property
    def group_id(self) -> str | None: ...
    @property
    def version(self) -> str | None: ...
    @property
    def status(self) -> str: ...
    @property
    def granted_version(self) -> str | None: ...
    @property
    def held(self) -> bool: ...
    @property
    def facts(self) -> int: ...
    @property
    def retired(self) -> bool: ...


def facts_key(app: AppRequest) -> int:
    """What a host says about itself besides its state, as one number: a host sends the same
    attributes every time, so a change of any of them (its alias, say) takes the request out of
    the steady state and into the transaction that records it."""
    return hash(
        (app.track, app.machine_alias, app.oem, app.oem_version, app.aleph_version, app.board)
    )


def only_routine_events(app: AppRequest) -> bool:
    return all(lifecycle.is_routine(e.type, e.result, e.previous_version) for e in app.events)


def steady(
    snapshot: Snapshot | None,
    app: AppRequest,
    group_id: str,
    policy: GroupPolicy,
    target: str | None,
    rollout_version: str | None,
    now: datetime,
) -> Decision | None:
    """The decision for a request that changes nothing, or None when it may change something.

    A ping-only or event-only request (no update check) that changes nothing gets a NO_UPDATE
    decision without a reason: there is no update check to answer."""
    if snapshot is None or snapshot.status == "new":  # "new" turns "idle" at its first check
        return None
    if snapshot.retired:  # back after going silent: un-retiring it is a state change
        return None
    if snapshot.version != app.version or snapshot.group_id != group_id:
        return None
    if snapshot.facts != facts_key(app) or not only_routine_events(app):
        return None
    if not app.update_check:
        return Decision(Verdict.NO_UPDATE)
    if lifecycle.completes(snapshot.status, snapshot.granted_version, app.version):
        return None
    host = HostState(
        app.version, snapshot.status, snapshot.granted_version, snapshot.held, app.machine_id or ""
    )
    decision = screen(host, policy, target, now, rollout_version)
    if decision is None or decision.grant:
        return None
    return decision
