"""Tables for nebula.policy.decide: who is offered the group's target, and why the others are not.

Pure: no database. Each row names the wrong implementation it catches in its comment.
"""

from __future__ import annotations

import hashlib
import math
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
    choose_target,
    decide,
    failure_gate,
    rollout_bucket,
    screen,
)
from nebula.windows import parse_window

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


# -- screen and decide agree ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "policy", "target"),
    [pytest.param(*row[1:4], id=row[0]) for row in CASES + REGRANTS],
)
def test_screen_is_decide_without_limits(
    host: HostState, policy: GroupPolicy, target: str | None
) -> None:
    # The server locks the group only when screen() says "eligible" (None); a rule screen()
    # answers must be answered the same by decide(), and screen() must never grant a new update
    # by itself (that would skip the limits).
    screened = screen(host, policy, target, NOW)
    decided = decide(host, policy, target, NOW, RolloutStats())
    if screened is None:
        assert decided == grant()
    else:
        assert screened == decided
        assert not screened.grant or screened.regrant


# -- choose_target: floors and pins --------------------------------------------------------------

F1, F2, F3 = "3900.0.0", "4000.1.0", "4100.0.0"

TARGETS = [
    # id, host version, target (the channel's or the pin), floors, expected
    ("no floors", OLD, TARGET, (), TARGET),
    ("one floor above the host", OLD, TARGET, (F1,), F1),
    # Several floors: the lowest first, whatever their order in the list; then the next.
    ("lowest floor first", OLD, TARGET, (F3, F1, F2), F1),
    ("then the next", F1, TARGET, (F3, F1, F2), F2),
    ("then the last", F2, TARGET, (F3, F1, F2), F3),
    ("then the target", F3, TARGET, (F3, F1, F2), TARGET),
    # Numeric order, not string order ("10.0.0" < "9.0.0" as strings).
    ("numeric order", "8.0.0", "11.0.0", ("10.0.0", "9.0.0"), "9.0.0"),
    # A host between floors skips the ones below it.
    ("between floors", "4000.0.0", TARGET, (F1, F2, F3), F2),
    # A floor the host is on is passed.
    ("on a floor", F2, TARGET, (F2,), TARGET),
    ("on a floor, padded", "4000.1.0.0", TARGET, (F2,), TARGET),
    # Floors below the host are ignored.
    ("floor below the host", "4120.0.0", TARGET, (F1, F3), TARGET),
    # Floors at or above the target are not stepping stones to it.
    ("floor at the target", OLD, TARGET, (TARGET,), TARGET),
    # The same version spelled otherwise is still the target, not a floor below it.
    ("floor at the target, padded", OLD, TARGET, (TARGET + ".0",), TARGET),
    ("floor above the target", OLD, TARGET, (NEWER,), TARGET),
    ("floors at/above target, one below", OLD, TARGET, (NEWER, TARGET, F2), F2),
    # The prerelease of a floor is below it: the host still has to take the floor.
    ("host on a floor's prerelease", F2 + "-rc.1", TARGET, (F2,), F2),
    # A pinned target is passed in as `target`: floors above the pin do not apply...
    ("pin below the floors", OLD, "3850.0.0", (F1, F2), "3850.0.0"),
    # ...and floors below it do.
    ("pin above a floor", OLD, F3, (F1, F2), F1),
    # A pin below the host (a downgrade): no floor lies between them; screen() decides.
    ("pin below the host", NEWER, F1, (F2, F3), F1),
    # No target: nothing to step towards, floors or not.
    ("no target", OLD, None, (F1,), None),
    # Unparseable versions: the host's, the target's (passed through for screen() to refuse),
    # and a bad floor among good ones (skipped, not fatal).
    ("host version unknown", None, TARGET, (F1,), TARGET),
    ("host version garbage", "stable", TARGET, (F1,), TARGET),
    ("target garbage", OLD, "latest", (F1,), "latest"),
    ("garbage floor skipped", OLD, TARGET, ("latest", F2), F2),
    ("only garbage floors", OLD, TARGET, ("", "x.y"), TARGET),
    ("current host", TARGET, TARGET, (F1,), TARGET),
]


@pytest.mark.parametrize(
    ("host_version", "target", "floors", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in TARGETS],
)
def test_choose_target(
    host_version: str | None, target: str | None, floors: tuple[str, ...], expected: str | None
) -> None:
    assert choose_target(host_version, target, floors) == expected
    assert choose_target(host_version, target, list(reversed(floors))) == expected


def test_floors_step_one_at_a_time() -> None:
    # Following choose_target from an old host visits every floor between it and the target,
    # in order, then the target, then stays.
    version: str | None = OLD
    path = []
    for _ in range(6):
        version = choose_target(version, TARGET, (F3, "latest", F1, NEWER, F2, "3000.0.0"))
        path.append(version)
    assert path == [F1, F2, F3, TARGET, TARGET, TARGET]


def test_floor_then_pin_decide() -> None:
    # A host below a floor is offered the floor, not the (pinned) target; the floor's grant is
    # subject to the same rules as any grant.
    target = choose_target(OLD, TARGET, (F1,))
    assert decide(HostState(OLD), OPEN, target, NOW, RolloutStats()) == Decision(
        Verdict.GRANT, None, F1
    )
    assert decide(HostState(OLD), PAUSED, target, NOW, RolloutStats()) == Decision(
        Verdict.HOLD, HoldReason.PAUSED, F1
    )
    # In flight to the floor: a retry is a regrant of the floor, not a new grant of the target.
    host = HostState(OLD, "downloading", F1)
    assert decide(host, PAUSED, target, NOW, RolloutStats()) == Decision(
        Verdict.GRANT, None, F1, regrant=True
    )


# -- staged percentage ---------------------------------------------------------------------------

# Buckets for TARGET (pinned in test_bucket_values): LOW is among the first hosts, HIGH among
# the last, MID in the middle.
LOW, MID, HIGH = "host-03", "host-00", "host-07"
LOW_BUCKET, MID_BUCKET, HIGH_BUCKET = 0.06028082005482293, 4.562356383054392, 99.13425783156994


def test_bucket_values() -> None:
    # The buckets are part of the rollout's state: a different hash (or input order, or
    # separator) in a new release would reshuffle which hosts are eligible, and hosts that had
    # been eligible would be held back mid-rollout.
    assert rollout_bucket(LOW, TARGET) == LOW_BUCKET
    assert rollout_bucket(MID, TARGET) == MID_BUCKET
    assert rollout_bucket(HIGH, TARGET) == HIGH_BUCKET
    # Different per target version: the same hosts are not always first.
    assert rollout_bucket(LOW, NEWER) == 59.1149090073252
    assert rollout_bucket(HIGH, NEWER) == 84.40214322288371


PERCENTAGES = [
    # id, machine id, percentage, expected verdict
    ("0%: not even the lowest bucket", LOW, 0.0, hold(HoldReason.PERCENTAGE)),
    ("100%: even the highest bucket", HIGH, 100.0, grant()),
    ("1%: low bucket in", LOW, 1.0, grant()),
    ("1%: mid bucket out", MID, 1.0, hold(HoldReason.PERCENTAGE)),
    ("50%: mid in, high out", HIGH, 50.0, hold(HoldReason.PERCENTAGE)),
    ("50%: mid in", MID, 50.0, grant()),
    ("99%: high bucket still out", HIGH, 99.0, hold(HoldReason.PERCENTAGE)),
    # The boundary: a host is in when its bucket is below the percentage, not at it.
    ("at its bucket: out", MID, MID_BUCKET, hold(HoldReason.PERCENTAGE)),
    ("just above its bucket: in", MID, MID_BUCKET + 1e-9, grant()),
    # An empty machine id is hashed like any other (the server refuses those earlier).
    ("empty machine id, 100%", "", 100.0, grant()),
]


@pytest.mark.parametrize(
    ("machine_id", "percentage", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in PERCENTAGES],
)
def test_percentage(machine_id: str, percentage: float, expected: Decision) -> None:
    host = HostState(OLD, machine_id=machine_id)
    policy = GroupPolicy(percentage=percentage)
    assert decide(host, policy, TARGET, NOW, RolloutStats()) == expected


@pytest.mark.parametrize("percentage", [0.0, 100.0])
def test_percentage_edges_for_many_hosts(percentage: float) -> None:
    policy = GroupPolicy(percentage=percentage)
    verdicts = {
        decide(HostState(OLD, machine_id=f"m{i}"), policy, TARGET, NOW, RolloutStats()).verdict
        for i in range(200)
    }
    assert verdicts == {Verdict.GRANT if percentage == 100 else Verdict.HOLD}


def test_percentage_never_holds_a_host_out_of_its_update() -> None:
    # Lowering the percentage mid-rollout does not strand a host that holds a grant.
    host = HostState(OLD, "downloaded", TARGET, machine_id=HIGH)
    assert decide(host, GroupPolicy(percentage=0), TARGET, NOW, RolloutStats()) == grant(True)


@pytest.mark.parametrize("machine_id", [LOW, MID, HIGH, *(f"m{i}" for i in range(50))])
def test_threshold_agrees_with_the_bucket(machine_id: str) -> None:
    # SQL counts a group's hosts inside the percentage by comparing the hex key with the
    # threshold (nebula.store.rollouts): it must say what the bucket says for every host, at
    # its own bucket (out) and just above it (in), and the hex must order as the number.
    from nebula.policy import in_rollout, rollout_key, rollout_key_hex, rollout_threshold

    bucket = rollout_bucket(machine_id, TARGET)
    for pct in (bucket, math.nextafter(bucket, 101.0), 50.0):
        inside = rollout_key_hex(machine_id, TARGET) < format(rollout_threshold(pct), "016x")
        assert inside == in_rollout(machine_id, TARGET, pct) == (bucket < pct)
    assert int(rollout_key_hex(machine_id, TARGET), 16) == rollout_key(machine_id, TARGET)
    assert (rollout_threshold(0.0), rollout_threshold(100.0)) == (0, 2**64)


def test_bucket_stays_below_100(monkeypatch: pytest.MonkeyPatch) -> None:
    # The highest 64-bit prefixes divided by 2**64 round to exactly 1.0 as floats; the bucket
    # must still be in [0, 100), or a host there is out even at percentages that mean "all but
    # a sliver" and the documented range is a lie.
    class Digest:
        def __init__(self, data: bytes) -> None:
            pass

        def digest(self) -> bytes:
            return b"\xff" * 32

    monkeypatch.setattr(hashlib, "sha256", Digest)
    assert 99.99 < rollout_bucket("any", TARGET) < 100


# -- limits: rate, concurrency, safe mode --------------------------------------------------------

RATE = GroupPolicy(max_updates_per_period=3, period_seconds=3600)
CONCURRENT = GroupPolicy(max_concurrent=2)
BOTH = GroupPolicy(max_updates_per_period=3, period_seconds=3600, max_concurrent=2)
SAFE = GroupPolicy(safe_mode=True)

LIMITS = [
    # id, policy, stats, expected
    # Rate: at most N new grants in the period.
    ("rate: none yet", RATE, RolloutStats(), grant()),
    ("rate: below the limit", RATE, RolloutStats(grants_in_period=2), grant()),
    ("rate: at the limit", RATE, RolloutStats(grants_in_period=3), hold(HoldReason.RATE_LIMIT)),
    ("rate: above (lowered)", RATE, RolloutStats(grants_in_period=9), hold(HoldReason.RATE_LIMIT)),
    (
        "rate: zero per period",
        GroupPolicy(max_updates_per_period=0, period_seconds=60),
        RolloutStats(),
        hold(HoldReason.RATE_LIMIT),
    ),
    # Rate is not concurrency: many in flight do not count against the rate...
    ("rate only: many in flight", RATE, RolloutStats(grants_in_period=2, in_flight=50), grant()),
    # ...and concurrency is not rate: many grants in the period do not use up slots.
    (
        "concurrency only: many grants",
        CONCURRENT,
        RolloutStats(grants_in_period=50, in_flight=1),
        grant(),
    ),
    ("concurrency: none in flight", CONCURRENT, RolloutStats(), grant()),
    ("concurrency: one free slot", CONCURRENT, RolloutStats(in_flight=1), grant()),
    ("concurrency: full", CONCURRENT, RolloutStats(in_flight=2), hold(HoldReason.CONCURRENCY)),
    (
        "concurrency: over (lowered)",
        CONCURRENT,
        RolloutStats(in_flight=5),
        hold(HoldReason.CONCURRENCY),
    ),
    (
        "concurrency: zero",
        GroupPolicy(max_concurrent=0),
        RolloutStats(),
        hold(HoldReason.CONCURRENCY),
    ),
    # Both set: each holds on its own.
    (
        "both: rate used up, slots free",
        BOTH,
        RolloutStats(grants_in_period=3, in_flight=0),
        hold(HoldReason.RATE_LIMIT),
    ),
    (
        "both: slots full, rate left",
        BOTH,
        RolloutStats(grants_in_period=0, in_flight=2),
        hold(HoldReason.CONCURRENCY),
    ),
    ("both: room in both", BOTH, RolloutStats(grants_in_period=2, in_flight=1), grant()),
    # Safe mode: the first host takes the version; nobody else until one completed it.
    ("safe: first host", SAFE, RolloutStats(), grant()),
    ("safe: canary in flight", SAFE, RolloutStats(target_in_flight=1), hold(HoldReason.CANARY)),
    ("safe: canary completed", SAFE, RolloutStats(target_completed=1, target_in_flight=0), grant()),
    # After the first completion, safe mode no longer serialises.
    (
        "safe: completed, many in flight",
        SAFE,
        RolloutStats(target_completed=1, target_in_flight=7),
        grant(),
    ),
    # Hosts in flight to another version are not this version's canary.
    ("safe: others in flight elsewhere", SAFE, RolloutStats(in_flight=3), grant()),
    ("no safe mode: many to the target", OPEN, RolloutStats(target_in_flight=5), grant()),
    # No limits set: counts are ignored whatever they are.
    ("no limits", OPEN, RolloutStats(99, 99, 0, 99), grant()),
]


@pytest.mark.parametrize(
    ("policy", "stats", "expected"), [pytest.param(*row[1:], id=row[0]) for row in LIMITS]
)
def test_limits(policy: GroupPolicy, stats: RolloutStats, expected: Decision) -> None:
    assert decide(HostState(OLD), policy, TARGET, NOW, stats) == expected
    # The limits need the counts: screen() must leave them to decide().
    assert screen(HostState(OLD), policy, TARGET, NOW) is None


# -- interactions --------------------------------------------------------------------------------

WEEKNIGHTS = (parse_window("Mon-Fri 02:00-05:00 UTC"),)
IN_WINDOW = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)  # Fri 03:00
OUT_OF_WINDOW = NOW  # Fri 12:00
STAGED = GroupPolicy(
    windows=WEEKNIGHTS, percentage=50, max_updates_per_period=2, period_seconds=3600
)
USED_UP = RolloutStats(grants_in_period=2)

INTERACTIONS = [
    # id, machine id, now, stats, expected: window + percentage + rate.
    ("in window, in percentage, rate left", MID, IN_WINDOW, RolloutStats(), grant()),
    (
        "in window, in percentage, rate used up",
        MID,
        IN_WINDOW,
        USED_UP,
        hold(HoldReason.RATE_LIMIT),
    ),
    # The rules without counts come first: the reason says what would have to change.
    (
        "in window, out of percentage, rate left",
        HIGH,
        IN_WINDOW,
        RolloutStats(),
        hold(HoldReason.PERCENTAGE),
    ),
    (
        "in window, out of percentage, rate used up",
        HIGH,
        IN_WINDOW,
        USED_UP,
        hold(HoldReason.PERCENTAGE),
    ),
    (
        "out of window, in percentage",
        MID,
        OUT_OF_WINDOW,
        RolloutStats(),
        hold(HoldReason.OUTSIDE_WINDOW),
    ),
    (
        "out of window, out of percentage, rate used up",
        HIGH,
        OUT_OF_WINDOW,
        USED_UP,
        hold(HoldReason.OUTSIDE_WINDOW),
    ),
    # The window's edges, through decide().
    ("window opens", MID, datetime(2026, 11, 27, 2, 0, tzinfo=UTC), RolloutStats(), grant()),
    (
        "window closes",
        MID,
        datetime(2026, 11, 27, 5, 0, tzinfo=UTC),
        RolloutStats(),
        hold(HoldReason.OUTSIDE_WINDOW),
    ),
    (
        "weekend",
        MID,
        datetime(2026, 11, 28, 3, 0, tzinfo=UTC),
        RolloutStats(),
        hold(HoldReason.OUTSIDE_WINDOW),
    ),
]


@pytest.mark.parametrize(
    ("machine_id", "now", "stats", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in INTERACTIONS],
)
def test_window_percentage_rate(
    machine_id: str, now: datetime, stats: RolloutStats, expected: Decision
) -> None:
    assert decide(HostState(OLD, machine_id=machine_id), STAGED, TARGET, now, stats) == expected


EVERYTHING_SHUT = GroupPolicy(
    updates_enabled=False,
    max_updates_per_period=1,
    period_seconds=3600,
    max_concurrent=1,
    safe_mode=True,
    windows=WEEKNIGHTS,
    percentage=0,
)
FULL = RolloutStats(grants_in_period=5, in_flight=5, target_completed=0, target_in_flight=5)
WIDE_OPEN = GroupPolicy(max_updates_per_period=5, period_seconds=60, max_concurrent=5)


@pytest.mark.parametrize("status", sorted(IN_PROGRESS))
@pytest.mark.parametrize("held", [False, True])
def test_regrant_bypasses_every_limit_and_the_pause(status: str, held: bool) -> None:
    # A host mid-update on the target retries (a failed download, a restart): it gets the same
    # answer, paused, outside the window, out of the percentage, over every limit, held.
    host = HostState(OLD, status, TARGET, held, machine_id=HIGH)
    assert decide(host, EVERYTHING_SHUT, TARGET, OUT_OF_WINDOW, FULL) == grant(regrant=True)


REGRANT_LIMITS = [
    # id, host, policy, stats, expected: what a regrant does not bypass, and what is not one.
    # The host already runs the target (the server marks it complete first): nothing to offer.
    (
        "in progress but current",
        HostState(TARGET, "installed", TARGET),
        OPEN,
        RolloutStats(),
        noupdate(NoUpdateReason.CURRENT),
    ),
    (
        "in progress, host newer",
        HostState(NEWER, "granted", TARGET),
        OPEN,
        RolloutStats(),
        noupdate(NoUpdateReason.NEWER),
    ),
    # In flight to another version (the target moved): a new grant, under the limits.
    (
        "in flight elsewhere, rate used up",
        HostState(OLD, "downloading", "4000.0.0"),
        RATE,
        RolloutStats(grants_in_period=3),
        hold(HoldReason.RATE_LIMIT),
    ),
    (
        "in flight elsewhere, room",
        HostState(OLD, "downloading", "4000.0.0"),
        RATE,
        RolloutStats(grants_in_period=2),
        grant(),
    ),
    # Failed on this target: not in flight any more, so a new grant under the limits.
    (
        "error on target, full",
        HostState(OLD, "error", TARGET),
        CONCURRENT,
        RolloutStats(in_flight=2),
        hold(HoldReason.CONCURRENCY),
    ),
    (
        "timed out on target, full",
        HostState(OLD, "timed_out", TARGET),
        CONCURRENT,
        RolloutStats(in_flight=2),
        hold(HoldReason.CONCURRENCY),
    ),
    (
        "complete on target, reinstalled",
        HostState(OLD, "complete", TARGET),
        RATE,
        RolloutStats(grants_in_period=3),
        hold(HoldReason.RATE_LIMIT),
    ),
    (
        "new host, full",
        HostState(OLD, "new"),
        WIDE_OPEN,
        RolloutStats(in_flight=5),
        hold(HoldReason.CONCURRENCY),
    ),
]


@pytest.mark.parametrize(
    ("host", "policy", "stats", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in REGRANT_LIMITS],
)
def test_what_is_not_a_regrant(
    host: HostState, policy: GroupPolicy, stats: RolloutStats, expected: Decision
) -> None:
    assert decide(host, policy, TARGET, NOW, stats) == expected


ROLLBACKS = [
    # id, host, policy, target, expected: held for the same target only, whatever else.
    (
        "same target, wide open",
        HostState(OLD, "rolled_back", TARGET),
        WIDE_OPEN,
        TARGET,
        hold(HoldReason.ROLLED_BACK),
    ),
    (
        "same target, held too",
        HostState(OLD, "rolled_back", TARGET, True),
        OPEN,
        TARGET,
        hold(HoldReason.ROLLED_BACK),
    ),
    (
        "same target, downgrade allowed",
        HostState(OLD, "rolled_back", TARGET),
        DOWNGRADE,
        TARGET,
        hold(HoldReason.ROLLED_BACK),
    ),
    (
        "new target",
        HostState(OLD, "rolled_back", TARGET),
        OPEN,
        NEWER,
        Decision(Verdict.GRANT, None, NEWER),
    ),
    (
        "new target, rate used up",
        HostState(OLD, "rolled_back", TARGET),
        RATE,
        NEWER,
        Decision(Verdict.HOLD, HoldReason.RATE_LIMIT, NEWER),
    ),
    # Rolled back from a floor: the floor is held; the target beyond is not offered instead.
    (
        "same floor",
        HostState(OLD, "rolled_back", F1),
        OPEN,
        F1,
        Decision(Verdict.HOLD, HoldReason.ROLLED_BACK, F1),
    ),
    # Another error on the target is not a rollback: the host may try again.
    ("other error on the target", HostState(OLD, "error", TARGET), OPEN, TARGET, grant()),
]


@pytest.mark.parametrize(
    ("host", "policy", "target", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in ROLLBACKS],
)
def test_rolled_back(host: HostState, policy: GroupPolicy, target: str, expected: Decision) -> None:
    # RATE's limit (3) used up: a rollback hold is not hidden behind a limit, and a new target
    # is held by the limit like any grant.
    stats = RolloutStats(grants_in_period=3 if policy is RATE else 0)
    assert decide(host, policy, target, NOW, stats) == expected


HOLDS = [
    # id, host, policy, expected: a per-host hold is a HOLD whatever the group says...
    ("held, open group", HostState(OLD, held=True), OPEN, hold(HoldReason.HOST_HOLD)),
    (
        "held, in window and percentage",
        HostState(OLD, held=True, machine_id=MID),
        STAGED,
        hold(HoldReason.HOST_HOLD),
    ),
    (
        "held, failed before",
        HostState(OLD, "error", TARGET, True),
        OPEN,
        hold(HoldReason.HOST_HOLD),
    ),
    (
        "held, completed an older one",
        HostState(OLD, "complete", "4000.0.0", True),
        OPEN,
        hold(HoldReason.HOST_HOLD),
    ),
    # ...but only for that host.
    ("neighbour not held", HostState(OLD, held=False), OPEN, grant()),
    # Nothing to hold back from: the answer says so.
    ("held, current", HostState(TARGET, held=True), OPEN, noupdate(NoUpdateReason.CURRENT)),
]


@pytest.mark.parametrize(
    ("host", "policy", "expected"), [pytest.param(*row[1:], id=row[0]) for row in HOLDS]
)
def test_host_hold(host: HostState, policy: GroupPolicy, expected: Decision) -> None:
    assert decide(host, policy, TARGET, IN_WINDOW, RolloutStats()) == expected


DOWNGRADES = [
    # id, host version, policy, stats, expected
    ("newer, no downgrade", NEWER, OPEN, RolloutStats(), noupdate(NoUpdateReason.NEWER)),
    (
        "newer, no downgrade, limits free",
        NEWER,
        WIDE_OPEN,
        RolloutStats(),
        noupdate(NoUpdateReason.NEWER),
    ),
    ("newer, downgrade allowed", NEWER, DOWNGRADE, RolloutStats(), grant()),
    # A downgrade is a grant like any other: the limits apply to it.
    (
        "downgrade, rate used up",
        NEWER,
        GroupPolicy(allow_downgrade=True, max_updates_per_period=1, period_seconds=60),
        RolloutStats(grants_in_period=1),
        hold(HoldReason.RATE_LIMIT),
    ),
    (
        "downgrade, concurrency full",
        NEWER,
        GroupPolicy(allow_downgrade=True, max_concurrent=1),
        RolloutStats(in_flight=1),
        hold(HoldReason.CONCURRENCY),
    ),
    (
        "downgrade, out of percentage",
        NEWER,
        GroupPolicy(allow_downgrade=True, percentage=0),
        RolloutStats(),
        hold(HoldReason.PERCENTAGE),
    ),
    # Allowing downgrades does not turn an upgrade into anything else.
    ("older, downgrade allowed", OLD, DOWNGRADE, RolloutStats(), grant()),
    (
        "newer build metadata, downgrade allowed",
        TARGET + "+dev",
        DOWNGRADE,
        RolloutStats(),
        grant(),
    ),
    (
        "newer build metadata, no downgrade",
        TARGET + "+dev",
        OPEN,
        RolloutStats(),
        noupdate(NoUpdateReason.NEWER),
    ),
]


@pytest.mark.parametrize(
    ("version", "policy", "stats", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in DOWNGRADES],
)
def test_downgrade(
    version: str, policy: GroupPolicy, stats: RolloutStats, expected: Decision
) -> None:
    assert decide(HostState(version), policy, TARGET, NOW, stats) == expected


# -- failure_gate --------------------------------------------------------------------------------


def gate(
    *,
    hosts: int | None = None,
    percent: float | None = None,
    safe: bool = False,
) -> GroupPolicy:
    return GroupPolicy(pause_on_failed_hosts=hosts, pause_on_failed_percent=percent, safe_mode=safe)


GATES = [
    # id, policy, failed, attempted, completed, pauses?
    ("none set", gate(), 5, 5, 0, False),
    ("none set, all failed", gate(), 100, 100, 0, False),
    ("failed 0, N=1", gate(hosts=1), 0, 10, 0, False),
    ("failed 0, 1%", gate(percent=1), 0, 10, 0, False),
    ("failed 0, safe mode, none completed", gate(safe=True), 0, 1, 0, False),
    # N hosts.
    ("N: below", gate(hosts=3), 2, 100, 50, False),
    ("N: at", gate(hosts=3), 3, 100, 50, True),
    ("N: above", gate(hosts=3), 4, 100, 50, True),
    ("N=1: first failure", gate(hosts=1), 1, 100, 50, True),
    # P% of attempts, with the exact boundary.
    ("P: 1 of 10 at 10%", gate(percent=10), 1, 10, 5, True),
    ("P: 1 of 11 at 10%", gate(percent=10), 1, 11, 5, False),
    ("P: 2 of 20 at 10%", gate(percent=10), 2, 20, 5, True),
    ("P: 2 of 21 at 10%", gate(percent=10), 2, 21, 5, False),
    ("P: 1 of 3 at 33.3%", gate(percent=33.3), 1, 3, 1, True),
    ("P: 1 of 3 at 33.4%", gate(percent=33.4), 1, 3, 1, False),
    ("P: 3 of 3 at 100%", gate(percent=100), 3, 3, 0, True),
    ("P: 2 of 3 at 100%", gate(percent=100), 2, 3, 1, False),
    ("P: nothing attempted", gate(percent=10), 1, 0, 0, False),
    # Both: whichever is reached first.
    ("both: N reached, P not", gate(hosts=2, percent=50), 2, 100, 50, True),
    ("both: P reached, N not", gate(hosts=5, percent=10), 1, 10, 5, True),
    ("both: neither", gate(hosts=5, percent=10), 1, 11, 5, False),
    # Safe mode: a failure before any host completed the version pauses, whatever N and P say.
    ("safe: canary failed", gate(safe=True), 1, 1, 0, True),
    ("safe: canary failed, N=5", gate(hosts=5, safe=True), 1, 1, 0, True),
    ("safe: canary failed, 90%", gate(percent=90, safe=True), 1, 20, 0, True),
    # After a completion, only the limits (none here, N, P) apply.
    ("safe: after a completion, no limits", gate(safe=True), 3, 10, 1, False),
    ("safe: after a completion, N not reached", gate(hosts=3, safe=True), 2, 10, 1, False),
    ("safe: after a completion, N reached", gate(hosts=3, safe=True), 3, 10, 1, True),
    ("safe: after a completion, P not reached", gate(percent=50, safe=True), 2, 10, 1, False),
    ("safe: after a completion, P reached", gate(percent=20, safe=True), 2, 10, 1, True),
    # No safe mode: a first failure with none completed is only a failure, not a canary.
    ("no safe mode, first host failed", gate(hosts=2), 1, 1, 0, False),
]


@pytest.mark.parametrize(
    ("policy", "failed", "attempted", "completed", "pauses"),
    [pytest.param(*row[1:], id=row[0]) for row in GATES],
)
def test_failure_gate(
    policy: GroupPolicy, failed: int, attempted: int, completed: int, pauses: bool
) -> None:
    reason = failure_gate(policy, failed=failed, attempted=attempted, completed=completed)
    if pauses:
        assert isinstance(reason, str) and reason
        assert str(failed) in reason  # the reason says how many failed
    else:
        assert reason is None


@pytest.mark.parametrize(
    ("policy", "failed", "attempted", "completed", "message"),
    [
        (gate(safe=True), 1, 1, 0, "safe mode: the first host to update failed"),
        (gate(hosts=3), 3, 10, 5, "3 hosts failed (limit 3)"),
        (gate(percent=10), 1, 10, 5, "1 of 10 hosts failed (10%, limit 10%)"),
        (gate(percent=12.5), 1, 8, 5, "1 of 8 hosts failed (12%, limit 12.5%)"),
    ],
)
def test_failure_gate_reasons(
    policy: GroupPolicy, failed: int, attempted: int, completed: int, message: str
) -> None:
    # The reason is shown to operators as the group's pause reason.
    assert message in (
        failure_gate(policy, failed=failed, attempted=attempted, completed=completed) or ""
    )


def test_percentage_follows_the_final_target_through_floors() -> None:
    """A host in the staged share of the version being rolled out stays in it at every floor on
    the way: the share is drawn by the final target, not by the step."""
    from nebula.policy import rollout_bucket, screen

    floor, final, share = "4081.2.0", "4152.2.3", 50.0
    # A host inside the share for the final target but outside it for the floor.
    machine = next(
        m
        for m in (f"{i:032x}" for i in range(10_000))
        if rollout_bucket(m, final) < share <= rollout_bucket(m, floor)
    )
    host = HostState("3815.2.0", machine_id=machine)
    policy = GroupPolicy(percentage=share)
    assert screen(host, policy, floor, NOW, final) is None
    held = screen(host, policy, floor, NOW)  # drawn by the step: the host would flap
    assert held is not None and held.reason is HoldReason.PERCENTAGE
