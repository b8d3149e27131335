"""nebula.checkin.steady as a table: which check-ins are answered from memory, and which must go
through the Omaha transaction. Every row that says None names what a steady answer would lose.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from nebula.checkin import facts_key, steady
from nebula.omaha.model import AppRequest, Event
from nebula.policy import Decision, GroupPolicy, HoldReason, NoUpdateReason, Verdict
from nebula.store.hostcache import Snapshot

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
OLD, NEW = "3815.2.0", "4152.2.3"
GROUP = "9a2deb70-37be-4026-853f-bfdd6b347bbe"
ROUTINE = Event(3, 2, None, "")
APP = AppRequest(
    app_id="e96281a6-d1af-4bde-9a0a-97b76e56dc57",
    raw_app_id="{e96281a6-d1af-4bde-9a0a-97b76e56dc57}",
    version=NEW,
    track="stable",
    board="amd64-usr",
    boot_id="0c288430-2504-4db4-913a-8c3de52afd07",
    oem="qemu",
    oem_version="",
    aleph_version="3510.2.1",
    machine_id="dbff85b41ae14f41bde761eefbdafaac",
    machine_alias="",
    lang="en-US",
    hardware_class="",
    delta_okay=False,
    ping=True,
    update_check=True,
    events=(ROUTINE,),
)


def snap(app: AppRequest = APP, **changes: object) -> Snapshot:
    base = Snapshot(app.app_id, GROUP, app.version, "complete", NEW, False, facts_key(app))
    return base._replace(**changes)  # type: ignore[arg-type]


OPEN = GroupPolicy()


def decide(
    snapshot: Snapshot | None, app: AppRequest = APP, policy: GroupPolicy = OPEN
) -> Decision | None:
    return steady(snapshot, app, GROUP, policy, NEW, NEW, NOW)


def test_current_host_is_steady() -> None:
    assert decide(snap()) == Decision(Verdict.NO_UPDATE, NoUpdateReason.CURRENT, NEW)


def test_held_host_is_steady_with_the_reason_in_force() -> None:
    old = replace(APP, version=OLD)
    paused = GroupPolicy(updates_enabled=False)
    assert decide(snap(old, status="idle"), old, paused) == Decision(
        Verdict.HOLD, HoldReason.PAUSED, NEW
    )


def test_ping_only_is_steady() -> None:
    ping = replace(APP, update_check=False, events=())
    assert decide(snap(ping, status="installed", version=NEW), ping) == Decision(Verdict.NO_UPDATE)


@pytest.mark.parametrize(
    ("why", "snapshot", "app"),
    [
        ("an unknown host is recorded", None, APP),
        ("new turns idle at its first check", snap(status="new"), APP),
        ("another version", snap(version=OLD), APP),
        ("another group", snap(group_id="5b810680-e36a-4879-b98a-4f989e80b899"), APP),
        ("a changed alias is recorded", snap(), replace(APP, machine_alias="db-1")),
        ("a changed track is recorded", snap(), replace(APP, track="beta")),
        ("a meaningful event is logged", snap(), replace(APP, events=(Event(3, 2, None, OLD),))),
        ("an error is logged", snap(), replace(APP, events=(Event(3, 0, 268435466, None),))),
        (
            "a completion is recorded",
            snap(status="installed", granted_version=NEW),
            APP,
        ),
        (
            "an eligible host needs the limits, under the group lock",
            snap(replace(APP, version=OLD), status="idle", version=OLD, granted_version=None),
            replace(APP, version=OLD),
        ),
        ("a retired host coming back is un-retired", snap(retired=True), APP),
        (
            "a retired host's ping un-retires it too",
            snap(replace(APP, update_check=False, events=()), retired=True),
            replace(APP, update_check=False, events=()),
        ),
        (
            "a regrant is answered ok with the manifest",
            snap(replace(APP, version=OLD), status="downloading", version=OLD),
            replace(APP, version=OLD),
        ),
    ],
)
def test_not_steady(why: str, snapshot: Snapshot | None, app: AppRequest) -> None:
    assert decide(snapshot, app) is None, why


def test_event_only_request_with_a_meaningful_event_is_not_steady() -> None:
    started = replace(APP, update_check=False, ping=False, events=(Event(13, 1, None, None),))
    assert decide(snap(started, status="granted"), started) is None
