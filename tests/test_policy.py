"""Tables for nebula.policy.decide: who is offered the group's target, and why the others are not.

Pure: no database. Each row names the wrong implementation it catches in its comment.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from nebula.lifecycle import IN_PROGRESS
from nebula.policy import (
    Decision,
    GroupPolicy,
    HoldReason,
    HostState,
    NoUpdateReason,
    RolloutStats,
    Verdict,
    decide,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

OLD, TARGET, NEWER = "3815.2.0", "4152.2.3", "4230.0.0"
OPEN = GroupPolicy()
PAUSED = GroupPolicy(updates_enabled=False)
DOWNGRADE = GroupPolicy(allow_downgrade=True)


def grant(regrant: bool = False) -> Decision:
    return Decision(Verdict.GRANT, None, TARGET, regrant=regrant)


def noupdate(reason: NoUpdateReason) -> Decision:
    return Decision(
        Verdict.NO_UPDATE, reason, None if reason is NoUpdateReason.NO_TARGET else TARGET
    )


def hold(reason: HoldReason) -> Decision:
    return Decision(Verdict.HOLD, reason, TARGET)


CASES = [
    # id, host, policy, target, expected
    ("no target", HostState(OLD), OPEN, None, noupdate(NoUpdateReason.NO_TARGET)),
    ("no target, paused", HostState(OLD), PAUSED, None, noupdate(NoUpdateReason.NO_TARGET)),
    ("older host", HostState(OLD), OPEN, TARGET, grant()),
    ("fresh install 0.0.0.0", HostState("0.0.0.0"), OPEN, TARGET, grant()),
    ("current", HostState(TARGET), OPEN, TARGET, noupdate(NoUpdateReason.CURRENT)),
    # Version equality, not string equality.
    ("current, padded", HostState("4152.2.3.0"), OPEN, TARGET, noupdate(NoUpdateReason.CURRENT)),
    # A host on a newer version is never offered the older target (string order would say
    # "4230" < "4152" is false anyway; "10.0.0" vs "9.0.0" is the string-order trap).
    ("newer", HostState(NEWER), OPEN, TARGET, noupdate(NoUpdateReason.NEWER)),
    (
        "newer, string-order trap",
        HostState("10.0.0"),
        OPEN,
        "9.0.0",
        Decision(Verdict.NO_UPDATE, NoUpdateReason.NEWER, "9.0.0"),
    ),
    ("newer dev build", HostState(TARGET + "+dev"), OPEN, TARGET, noupdate(NoUpdateReason.NEWER)),
    ("newer, paused", HostState(NEWER), PAUSED, TARGET, noupdate(NoUpdateReason.NEWER)),
    ("newer, held", HostState(NEWER, held=True), OPEN, TARGET, noupdate(NoUpdateReason.NEWER)),
    # The prerelease of the target is older than the target.
    ("prerelease host", HostState(TARGET + "-rc.1"), OPEN, TARGET, grant()),
    ("downgrade allowed", HostState(NEWER), DOWNGRADE, TARGET, grant()),
    (
        "downgrade allowed, paused",
        HostState(NEWER),
        GroupPolicy(False, True),
        TARGET,
        hold(HoldReason.PAUSED),
    ),
    (
        "downgrade allowed, current",
        HostState(TARGET),
        DOWNGRADE,
        TARGET,
        noupdate(NoUpdateReason.CURRENT),
    ),
    ("no version", HostState(None), OPEN, TARGET, noupdate(NoUpdateReason.UNKNOWN_VERSION)),
    ("empty version", HostState(""), OPEN, TARGET, noupdate(NoUpdateReason.UNKNOWN_VERSION)),
    (
        "garbage version",
        HostState("stable"),
        OPEN,
        TARGET,
        noupdate(NoUpdateReason.UNKNOWN_VERSION),
    ),
    # An unparseable version is never "older" than anything (no grant to a host we cannot read).
    (
        "garbage version, downgrade allowed",
        HostState("x"),
        DOWNGRADE,
        TARGET,
        noupdate(NoUpdateReason.UNKNOWN_VERSION),
    ),
    (
        "unparseable target",
        HostState(OLD),
        OPEN,
        "latest",
        Decision(Verdict.NO_UPDATE, NoUpdateReason.UNKNOWN_VERSION, "latest"),
    ),
    # Operator holds.
    ("host hold", HostState(OLD, held=True), OPEN, TARGET, hold(HoldReason.HOST_HOLD)),
    ("paused -> hold, not an error", HostState(OLD), PAUSED, TARGET, hold(HoldReason.PAUSED)),
    ("paused and host hold", HostState(OLD, held=True), PAUSED, TARGET, hold(HoldReason.HOST_HOLD)),
    ("current while paused", HostState(TARGET), PAUSED, TARGET, noupdate(NoUpdateReason.CURRENT)),
    # Rollbacks.
    (
        "rolled back from this target",
        HostState(OLD, "rolled_back", TARGET),
        OPEN,
        TARGET,
        hold(HoldReason.ROLLED_BACK),
    ),
    (
        "rolled back from an older target",
        HostState(OLD, "rolled_back", "4000.0.0"),
        OPEN,
        TARGET,
        grant(),
    ),
    (
        "rolled back from a newer target",
        HostState(OLD, "rolled_back", NEWER),
        OPEN,
        TARGET,
        grant(),
    ),
    (
        "rolled back from this target, paused",
        HostState(OLD, "rolled_back", TARGET),
        PAUSED,
        TARGET,
        hold(HoldReason.ROLLED_BACK),
    ),
    # A host that failed with another error may try again.
    ("error on this target", HostState(OLD, "error", TARGET), OPEN, TARGET, grant()),
    ("timed out on this target", HostState(OLD, "timed_out", TARGET), OPEN, TARGET, grant()),
    ("complete on an older target", HostState(OLD, "complete", "3800.0.0"), OPEN, TARGET, grant()),
    # A grant the host already holds is given again, even after a pause or a host hold: the
    # host is mid-update and must be able to retry its download.
    ("in progress, other target", HostState(OLD, "granted", "4000.0.0"), OPEN, TARGET, grant()),
    (
        "in progress, other target, paused",
        HostState(OLD, "downloading", "4000.0.0"),
        PAUSED,
        TARGET,
        hold(HoldReason.PAUSED),
    ),
]

REGRANTS = [
    (
        f"regrant {status}{suffix}",
        HostState(OLD, status, TARGET, held),
        policy,
        TARGET,
        grant(regrant=True),
    )
    for status in sorted(IN_PROGRESS)
    for suffix, policy, held in (
        ("", OPEN, False),
        (", paused", PAUSED, False),
        (", host hold", OPEN, True),
    )
]


@pytest.mark.parametrize(
    ("host", "policy", "target", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in CASES + REGRANTS],
)
def test_decide(
    host: HostState, policy: GroupPolicy, target: str | None, expected: Decision
) -> None:
    assert decide(host, policy, target, NOW, RolloutStats()) == expected


@pytest.mark.parametrize(
    ("verdict", "is_grant"),
    [(Verdict.GRANT, True), (Verdict.HOLD, False), (Verdict.NO_UPDATE, False)],
)
def test_grant_property(verdict: Verdict, is_grant: bool) -> None:
    assert Decision(verdict).grant is is_grant


def test_hold_is_a_value_not_an_exception() -> None:
    decision = decide(HostState(OLD), PAUSED, TARGET, NOW, RolloutStats())
    assert decision.verdict is Verdict.HOLD
    assert decision.reason is HoldReason.PAUSED
    assert decision.reason.value == "paused"
