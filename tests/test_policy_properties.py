"""Properties of the rollout policy, checked with hypothesis.

(a) The staged percentage: rollout_bucket is stable and in [0, 100), and raising the percentage
    only adds hosts.
(b) One group, simulated in plain Python with nebula.policy and nebula.lifecycle only: random
    hosts check in, report progress, fail, roll back and complete, the clock moves, the timeout
    sweeper runs, the operator holds hosts and resumes the group. The harness keeps what the
    server keeps (per host: status, granted version and time; the grants log; the pause) and
    counts RolloutStats the way nebula.store.rollouts.rollout_stats does. After every step the
    rules the issue promises must hold.

Pure: no database.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from nebula import lifecycle
from nebula.policy import (
    Decision,
    GroupPolicy,
    HostState,
    RolloutStats,
    Verdict,
    choose_target,
    decide,
    failure_gate,
    rollout_bucket,
    screen,
)
from nebula.windows import is_open, parse_window

FAST = settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])

machine_ids = st.text(min_size=1, max_size=40)
# Targets, all above the 0.0.0.0 a fresh install reports.
versions = st.sampled_from(["4152.2.3", "4230.0.0", "3815.2.0", "1.0.0-rc.1", "0.0.0.1"])
percentages = st.floats(min_value=0, max_value=100, allow_nan=False)


# -- (a) the staged percentage -------------------------------------------------------------------


@FAST
@given(machine_ids, versions)
def test_bucket_is_stable_and_in_range(machine_id: str, target: str) -> None:
    bucket = rollout_bucket(machine_id, target)
    assert 0 <= bucket < 100
    assert all(rollout_bucket(machine_id, target) == bucket for _ in range(3))


@FAST
@given(
    st.lists(machine_ids, min_size=1, max_size=30, unique=True), versions, percentages, percentages
)
def test_raising_the_percentage_only_adds_hosts(
    hosts: list[str], target: str, a: float, b: float
) -> None:
    low, high = sorted((a, b))

    def eligible(percentage: float) -> set[str]:
        policy = GroupPolicy(percentage=percentage)
        now = datetime(2026, 1, 1, tzinfo=UTC)
        return {
            m
            for m in hosts
            if screen(HostState("0.0.0.0", machine_id=m), policy, target, now) is None
        }

    assert eligible(low) <= eligible(high)
    # And the bucket is what decides: eligible at p exactly when the bucket is below p (all at
    # 100). A rule that hashed the percentage in, or compared the other way, fails here.
    for p in (low, high):
        assert eligible(p) == {m for m in hosts if p >= 100 or rollout_bucket(m, target) < p}


@FAST
@given(machine_ids, versions, percentages, st.integers(min_value=1, max_value=5))
def test_a_host_never_flaps(machine_id: str, target: str, p: float, repeats: int) -> None:
    # For a fixed target and percentage, asking again (at another time, after other hosts asked)
    # gives the same answer.
    policy = GroupPolicy(percentage=p)
    host = HostState("0.0.0.0", machine_id=machine_id)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    first = screen(host, policy, target, start)
    for i in range(repeats):
        screen(HostState("0.0.0.0", machine_id=f"other-{i}"), policy, target, start)
        assert screen(host, policy, target, start + timedelta(days=i, seconds=i)) == first


@FAST
@given(st.lists(machine_ids, min_size=20, max_size=60, unique=True), versions)
def test_percentage_takes_about_that_share(hosts: list[str], target: str) -> None:
    # Not a constant: at 50% neither nobody nor everybody (for >= 20 distinct hosts the chance
    # of an all-or-nothing split is below 2e-6; a constant bucket would fail at once).
    inside = [m for m in hosts if rollout_bucket(m, target) < 50]
    assert 0 < len(inside) < len(hosts)


# -- (b) one group, step by step -----------------------------------------------------------------

START = datetime(2026, 3, 27, 23, 55, tzinfo=UTC)  # the window below opens 5 minutes later
TARGET = "4152.2.3"
FLOOR = "4000.0.0"
HOST_VERSIONS = ("3815.2.0", "4081.2.0")  # below and above the floor


@dataclass
class Host:
    machine_id: str
    version: str
    status: str = "new"
    granted_version: str | None = None
    granted_at: datetime | None = None
    held: bool = False


@dataclass
class Group:
    policy: GroupPolicy
    floors: tuple[str, ...]
    hosts: list[Host]
    now: datetime = START
    grants: list[tuple[datetime, str, str]] = field(default_factory=list)  # (at, host, version)
    ever_completed: set[str] = field(default_factory=set)
    log: list[str] = field(default_factory=list)

    # -- what the server counts ------------------------------------------------------------

    def holds_slot(self, host: Host) -> bool:
        """In flight: between grant and complete, and not past the update timeout."""
        if host.status not in lifecycle.IN_PROGRESS:
            return False
        timeout = self.policy.update_timeout_seconds
        if not timeout:
            return True
        assert host.granted_at is not None
        return host.granted_at > self.now - timedelta(seconds=timeout)

    def stats(self, target: str, asking: Host) -> RolloutStats:
        """As nebula.store.rollouts.rollout_stats: only the counts the policy uses; the asking
        host left out of the host counts (not of the grants log)."""
        p = self.policy
        others = [h for h in self.hosts if h is not asking]
        grants = in_flight = target_completed = target_in_flight = 0
        if p.max_updates_per_period is not None and p.period_seconds:
            since = self.now - timedelta(seconds=p.period_seconds)
            grants = sum(1 for at, _, _ in self.grants if at > since)
        if p.max_concurrent is not None:
            in_flight = sum(1 for h in others if self.holds_slot(h))
        if p.safe_mode:
            on_target = [h for h in others if h.granted_version == target]
            target_completed = sum(1 for h in on_target if h.status == "complete")
            target_in_flight = sum(1 for h in on_target if self.holds_slot(h))
        return RolloutStats(grants, in_flight, target_completed, target_in_flight)

    def apply_failure_gate(self, version: str) -> None:
        """As nebula.store.rollouts.apply_failure_gate."""
        p = self.policy
        if not p.updates_enabled:
            return
        on = [h for h in self.hosts if h.granted_version == version]
        failed = sum(1 for h in on if h.status in lifecycle.FAILED)
        completed = sum(1 for h in on if h.status == "complete")
        reason = failure_gate(p, failed=failed, attempted=len(on), completed=completed)
        if reason is not None:
            self.policy = dataclasses.replace(p, updates_enabled=False)
            self.log.append(f"  paused: {reason}")
        # The rule, from the issue: a canary's failure (safe mode, nobody completed the version)
        # pauses; so do N failed hosts or P% of the attempts; nothing else does.
        must_pause = failed > 0 and (
            (p.safe_mode and completed == 0)
            or (p.pause_on_failed_hosts is not None and failed >= p.pause_on_failed_hosts)
            or (
                p.pause_on_failed_percent is not None
                and failed * 100 >= p.pause_on_failed_percent * len(on)
            )
        )
        assert (reason is not None) == must_pause, (
            f"failure gate: {failed} failed of {len(on)}, {completed} completed -> {reason!r}"
        )

    # -- what the server does --------------------------------------------------------------

    def check(self, host: Host) -> Decision:
        """An update check, as nebula.service does it (complete first, then screen, decide)."""
        if lifecycle.completes(host.status, host.granted_version, host.version):
            host.status = "complete"
            assert host.granted_version is not None
            self.ever_completed.add(host.granted_version)
        target = choose_target(host.version, TARGET, self.floors)
        state = HostState(
            host.version, host.status, host.granted_version, host.held, host.machine_id
        )
        decision = screen(state, self.policy, target, self.now)
        if decision is None:
            assert target is not None
            decision = decide(state, self.policy, target, self.now, self.stats(target, host))
        self.check_decision(host, state, target, decision)
        if decision.grant and not decision.regrant:
            host.granted_version = decision.target
            host.granted_at = self.now
            host.status = "granted"
            assert decision.target is not None
            self.grants.append((self.now, host.machine_id, decision.target))
        return decision

    def event(self, host: Host, event_type: int, result: int, code: int | None) -> None:
        transition = lifecycle.after_event(host.status, event_type, result, code)
        if transition is None:
            return
        host.status = transition.status
        if transition.status in lifecycle.FAILED and host.granted_version:
            self.apply_failure_gate(host.granted_version)

    def sweep(self) -> None:
        """As nebula.store.rollouts.mark_timeouts, then the failure gate per version."""
        timeout = self.policy.update_timeout_seconds
        if timeout is None:
            return
        cutoff = self.now - timedelta(seconds=timeout)
        touched = []
        for h in self.hosts:
            if h.status in lifecycle.IN_PROGRESS and h.granted_at and h.granted_at <= cutoff:
                h.status = "timed_out"
                if h.granted_version is not None:
                    touched.append(h.granted_version)
        for version in dict.fromkeys(touched):
            self.apply_failure_gate(version)

    # -- the rules -------------------------------------------------------------------------

    def check_decision(
        self, host: Host, state: HostState, target: str | None, decision: Decision
    ) -> None:
        if not decision.grant:
            return
        assert decision.target == target
        if decision.regrant:
            # A regrant only repeats a grant the host is in the middle of.
            assert host.status in lifecycle.IN_PROGRESS, "regrant to a host not in progress"
            assert host.granted_version == target, "regrant of another version"
            return
        p = self.policy
        assert p.updates_enabled, "a paused group granted"
        assert not host.held, "a held host was granted"
        assert is_open(p.windows, self.now), "granted outside the maintenance windows"
        assert target is not None
        assert p.percentage >= 100 or rollout_bucket(host.machine_id, target) < p.percentage, (
            "granted to a host outside the staged percentage"
        )
        assert not (host.status == "rolled_back" and host.granted_version == target), (
            "granted again the version the host rolled back from"
        )

    def check_invariants(self) -> None:
        p = self.policy
        # Rate: in any period-long window (t - period, t], at most N grants. The count is
        # largest at a grant's time, so checking at every grant covers every window.
        if p.max_updates_per_period is not None and p.period_seconds:
            period = timedelta(seconds=p.period_seconds)
            for at, _, _ in self.grants:
                n = sum(1 for other, _, _ in self.grants if at - period < other <= at)
                assert n <= p.max_updates_per_period, f"{n} grants in the period ending {at}"
        # Concurrency: hosts holding a slot (in progress, not timed out).
        if p.max_concurrent is not None:
            n = sum(1 for h in self.hosts if self.holds_slot(h))
            assert n <= p.max_concurrent, f"{n} hosts in flight, limit {p.max_concurrent}"
        # Safe mode: before a version's first completion, at most one host in flight to it.
        if p.safe_mode:
            for version in {h.granted_version for h in self.hosts} - self.ever_completed:
                n = sum(
                    1 for h in self.hosts if h.granted_version == version and self.holds_slot(h)
                )
                assert n <= 1, f"{n} hosts in flight to {version} before any completed it"
        # Bookkeeping: a host's grant is in the log.
        for h in self.hosts:
            if h.granted_version is not None:
                assert (h.granted_at, h.machine_id, h.granted_version) in self.grants


# Actions: (name, host index, argument).
EVENTS = {
    "download started": (lifecycle.EVENT_DOWNLOAD_STARTED, lifecycle.RESULT_SUCCESS, None),
    "download finished": (lifecycle.EVENT_DOWNLOAD_FINISHED, lifecycle.RESULT_SUCCESS, None),
    "installed": (lifecycle.EVENT_UPDATE_COMPLETE, lifecycle.RESULT_SUCCESS, None),
    "failed": (lifecycle.EVENT_UPDATE_COMPLETE, lifecycle.RESULT_ERROR, 10),
    "download failed": (lifecycle.EVENT_DOWNLOAD_STARTED, lifecycle.RESULT_ERROR, 7),
    "rolled back": (lifecycle.EVENT_UPDATE_COMPLETE, lifecycle.RESULT_ERROR, 44),
}
# One list of actions, weighted by repetition: checks and completions are where grants happen.
ACTIONS = (
    ("check",) * 8
    + ("complete",) * 4
    + ("download started", "download finished", "installed") * 2
    + ("failed", "download failed", "rolled back", "hold", "sweep", "resume")
    + ("advance",) * 4
)
# (action, host index, seconds for "advance")
actions = st.lists(
    st.tuples(st.sampled_from(ACTIONS), st.integers(0, 5), st.integers(0, 300)),
    min_size=5,
    max_size=80,
)


@st.composite
def policies(draw: st.DrawFn) -> GroupPolicy:
    limit = st.none() | st.integers(0, 3)
    seconds = st.none() | st.integers(1, 900)
    rate = draw(limit)
    return GroupPolicy(
        updates_enabled=draw(st.sampled_from([True, True, True, False])),
        max_updates_per_period=rate,
        period_seconds=draw(st.integers(1, 900)) if rate is not None else draw(seconds),
        max_concurrent=draw(limit),
        update_timeout_seconds=draw(seconds),
        safe_mode=draw(st.booleans()),
        pause_on_failed_hosts=draw(st.none() | st.integers(1, 3)),
        pause_on_failed_percent=draw(st.none() | st.floats(1, 100)),
        windows=draw(st.sampled_from([(), (), (), (parse_window("daily 00:00-00:30 UTC"),)])),
        # Mostly everybody, so that the limits are what holds hosts back.
        percentage=100.0 if draw(st.integers(0, 9)) < 7 else draw(percentages),
    )


def step(group: Group, name: str, index: int, seconds: int) -> None:
    """One action, then the rules."""
    host = group.hosts[index % len(group.hosts)]
    group.log.append(f"{group.now:%H:%M:%S} {name} {seconds if name == 'advance' else index}")
    if name == "check":
        group.log.append(f"  -> {group.check(host)}")
    elif name == "complete":
        # The host rebooted into the version it was granted and checks in with it.
        if host.granted_version is not None and lifecycle.completes(
            host.status, host.granted_version, host.granted_version
        ):
            host.version = host.granted_version
            group.log.append(f"  -> {group.check(host)}")
    elif name == "hold":
        host.held = not host.held
    elif name in EVENTS:
        group.event(host, *EVENTS[name])
    elif name == "advance":
        group.now += timedelta(seconds=seconds)
    elif name == "sweep":
        group.sweep()
    elif name == "resume":
        group.policy = dataclasses.replace(group.policy, updates_enabled=True)
    group.check_invariants()


def run(
    policy: GroupPolicy,
    floors: tuple[str, ...],
    versions: list[str],
    steps: list[tuple[str, int, int]],
) -> Group:
    group = Group(policy, floors, [Host(f"host-{i}", v) for i, v in enumerate(versions)])
    group.check_invariants()
    for name, index, seconds in steps:
        step(group, name, index, seconds)
    return group


class OneGroup(RuleBasedStateMachine):
    """Hypothesis drives `step`; a failure prints the policy and the steps that broke a rule."""

    group: Group

    @initialize(
        policy=policies(),
        floors=st.sampled_from([(), (FLOOR,)]),
        versions=st.lists(st.sampled_from(HOST_VERSIONS), min_size=2, max_size=6),
    )
    def start(self, policy: GroupPolicy, floors: tuple[str, ...], versions: list[str]) -> None:
        self.group = run(policy, floors, versions, [])

    @rule(
        name=st.sampled_from(ACTIONS),
        index=st.integers(0, 5),
        seconds=st.integers(0, 300),
    )
    def act(self, name: str, index: int, seconds: int) -> None:
        step(self.group, name, index, seconds)


test_one_group = OneGroup.TestCase
test_one_group.settings = settings(
    deadline=None,
    max_examples=200,
    stateful_step_count=60,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- the harness itself can see a broken rule ----------------------------------------------------


def _grant_everything(
    host: HostState, policy: GroupPolicy, target: str | None, now: datetime, stats: Any
) -> Decision:
    return Decision(Verdict.GRANT, None, target)


@pytest.mark.parametrize(
    ("policy", "steps", "message"),
    [
        (GroupPolicy(max_concurrent=1), [("check", 0, 0), ("check", 1, 0)], "hosts in flight"),
        (
            GroupPolicy(max_updates_per_period=1, period_seconds=60),
            [("check", 0, 0), ("check", 1, 0)],
            "grants in the period",
        ),
        (GroupPolicy(safe_mode=True), [("check", 0, 0), ("check", 1, 0)], "before any completed"),
        (GroupPolicy(updates_enabled=False), [("check", 0, 0)], "paused group"),
        (GroupPolicy(), [("hold", 0, 0), ("check", 0, 0)], "held host"),
        (GroupPolicy(percentage=0), [("check", 0, 0)], "staged percentage"),
        (
            GroupPolicy(),
            [("check", 0, 0), ("rolled back", 0, 0), ("check", 0, 0)],
            "rolled back from",
        ),
    ],
)
def test_harness_sees_a_broken_rule(
    monkeypatch: pytest.MonkeyPatch,
    policy: GroupPolicy,
    steps: list[tuple[str, int, int]],
    message: str,
) -> None:
    # With a policy that grants everything, each rule's check in the harness must fire: a
    # harness that never granted, or never looked, would pass vacuously.
    monkeypatch.setattr(sys.modules[__name__], "decide", _grant_everything)
    monkeypatch.setattr(sys.modules[__name__], "screen", lambda *args: None)
    with pytest.raises(AssertionError, match=message):
        run(policy, (), ["3815.2.0", "3815.2.0"], steps)


def test_the_harness_grants_and_completes() -> None:
    # A plain rollout through the harness: the host takes the floor, then the target.
    steps = [("check", 0, 0), ("complete", 0, 0), ("check", 0, 0), ("complete", 0, 0)]
    group = run(GroupPolicy(safe_mode=True, max_concurrent=1), (FLOOR,), ["3815.2.0"], steps)
    assert [v for _, _, v in group.grants] == [FLOOR, TARGET]
    assert group.hosts[0].version == TARGET and group.hosts[0].status == "complete"
    assert group.ever_completed == {FLOOR, TARGET}
