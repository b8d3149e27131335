"""Rollout policy: which version a host should go to, and whether it may have it now.

Pure: imports only nebula.versions, nebula.lifecycle and nebula.windows (all pure). Time,
hashing inputs and per-group statistics come in as arguments, so every rule is a table of cases.
"No" is a value (a Decision with a reason), never an exception; a host held back by any rule is
answered `noupdate`, and the reason is recorded on its state.

Two steps, because the limits need the group's row locked (see nebula.service):
- `screen` applies every rule that needs no statistics (versions, holds, pause, window,
  percentage); it returns None when the host is eligible;
- `decide` = `screen`, then the limits (rate, concurrency, safe mode) from `RolloutStats`
  counted inside the grant's transaction.
`failure_gate` says whether a group must pause itself after a failure.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from nebula.lifecycle import IN_PROGRESS
from nebula.versions import try_parse_version
from nebula.windows import Window, is_open


class Verdict(enum.Enum):
    GRANT = "grant"
    NO_UPDATE = "noupdate"  # nothing to offer: current, newer, or no target
    HOLD = "hold"  # there is an update, but a rule holds this host back for now


class HoldReason(enum.Enum):
    PAUSED = "paused"
    HOST_HOLD = "host_hold"
    # The host rolled back from this very target: offering it again would loop (install, reboot,
    # roll back) until an operator looks at it.
    ROLLED_BACK = "rolled_back"
    OUTSIDE_WINDOW = "outside_window"
    PERCENTAGE = "percentage"  # not (yet) among the staged percentage of hosts
    RATE_LIMIT = "rate_limit"  # the group's updates per period are used up
    CONCURRENCY = "concurrency"  # as many hosts as allowed are updating now
    CANARY = "canary"  # safe mode: waiting for the first host of this version to complete


class NoUpdateReason(enum.Enum):
    NO_TARGET = "no_target"  # the group's channel (or pin) points at no package
    CURRENT = "current"
    NEWER = "newer"  # the host runs a newer version; never offered a downgrade by default
    UNKNOWN_VERSION = "unknown_version"  # the host sent no (parseable) version


@dataclass(frozen=True, slots=True)
class GroupPolicy:
    """The rules of one group."""

    updates_enabled: bool = True
    allow_downgrade: bool = False
    max_updates_per_period: int | None = None
    period_seconds: int | None = None
    max_concurrent: int | None = None
    update_timeout_seconds: int | None = None
    safe_mode: bool = False
    pause_on_failed_hosts: int | None = None
    pause_on_failed_percent: float | None = None
    windows: tuple[Window, ...] = ()
    percentage: float = 100.0
    # Installed hosts wait for their reboot (locksmithd, FLUO, kured): never timed out for it;
    # past `reboot_timeout_seconds` they are only flagged as overdue. Whether they hold a
    # concurrency slot meanwhile is the group's choice (by default they do: a reboot is ahead).
    reboot_timeout_seconds: int | None = None
    installed_counts_as_updating: bool = True

    @property
    def counts_grants(self) -> bool:
        """Whether a grant depends on counts that other grants change (updates per period,
        concurrency, safe mode's canary): then grants in the group must take turns."""
        return (
            self.max_updates_per_period is not None
            or self.max_concurrent is not None
            or self.safe_mode
        )


@dataclass(frozen=True, slots=True)
class HostState:
    """What the server knows of one host for one application."""

    version: str | None
    status: str = "new"
    granted_version: str | None = None
    held: bool = False
    machine_id: str = ""


@dataclass(frozen=True, slots=True)
class RolloutStats:
    """Counts in one group at one moment, read under the group's lock. The store may stop
    counting where a count reaches its limit (decide() only compares with the limits)."""

    grants_in_period: int = 0  # new grants within the last period_seconds
    # Hosts holding a concurrency slot (any version): between grant and installed and not past
    # the update timeout, and installed ones waiting for their reboot if the policy says so.
    in_flight: int = 0
    target_completed: int = 0  # hosts that completed the target version
    target_in_flight: int = 0  # hosts in flight to the target version


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: HoldReason | NoUpdateReason | None = None
    target: str | None = None
    # True when the host already holds a grant for this target (a retry): no new grant is counted.
    regrant: bool = False

    @property
    def grant(self) -> bool:
        return self.verdict is Verdict.GRANT


def choose_target(
    host_version: str | None, target: str | None, floors: Sequence[str] = ()
) -> str | None:
    """The version this host goes to next: the lowest floor above it that is below the target
    (floors are stepping stones a host must pass through), else the target itself."""
    have = try_parse_version(host_version)
    want = try_parse_version(target)
    if have is None or want is None:
        return target
    steps = sorted(
        (v, f) for f in floors if (v := try_parse_version(f)) is not None and have < v < want
    )
    return steps[0][1] if steps else target


_BELOW_100 = math.nextafter(100.0, 0.0)
KEY_SPACE = 2**64


def rollout_key(machine_id: str, target: str) -> int:
    """A host's place in [0, 2**64) for `target`: the first 8 bytes of SHA-256 of the machine
    id, a NUL and the version. Stable, so raising the percentage only adds hosts and a host
    never flaps; different per version, so the same hosts are not always first."""
    digest = hashlib.sha256(f"{machine_id}\x00{target}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def rollout_key_hex(machine_id: str, target: str) -> str:
    """rollout_key as 16 lower-case hex digits: compared as text it orders as the number, which
    is how SQL counts a group's hosts inside a percentage (nebula.store.rollouts)."""
    return format(rollout_key(machine_id, target), "016x")


def _bucket_of_key(key: int) -> float:
    # The top 2**-54 of the 64-bit range rounds to 1.0 as a float: keep those below 100.
    return min(key / KEY_SPACE * 100, _BELOW_100)


def rollout_bucket(machine_id: str, target: str) -> float:
    """Where a host falls in [0, 100) for `target` (rollout_key scaled)."""
    return _bucket_of_key(rollout_key(machine_id, target))


@functools.lru_cache(maxsize=256)
def rollout_threshold(percentage: float) -> int:
    """The first key outside `percentage`: a host is inside iff its key is below it. Found by
    bisection on the bucket itself (monotonic in the key), so that "key < threshold" and
    "bucket < percentage" agree on every host, even at a bucket's exact float value."""
    low, high = 0, KEY_SPACE  # the answer lies in [low, high]
    while low < high:
        mid = (low + high) // 2
        if _bucket_of_key(mid) >= percentage:
            high = mid
        else:
            low = mid + 1
    return low


def in_rollout(machine_id: str, target: str, percentage: float) -> bool:
    """Whether a host is among the staged `percentage` of hosts for `target`."""
    return percentage >= 100 or rollout_key(machine_id, target) < rollout_threshold(percentage)


def screen(
    host: HostState,
    policy: GroupPolicy,
    target: str | None,
    now: datetime,
    rollout_version: str | None = None,
) -> Decision | None:
    """Every rule that needs no statistics. None: eligible, subject to the limits.

    `rollout_version` is the version the group rolls out (the final target, when `target` is a
    floor on the way): the staged percentage picks its hosts by it, so that a host in the chosen
    share stays in it at every floor along the way."""
    if target is None:
        return Decision(Verdict.NO_UPDATE, NoUpdateReason.NO_TARGET)
    want = try_parse_version(target)
    have = try_parse_version(host.version)
    if want is None or have is None:
        return Decision(Verdict.NO_UPDATE, NoUpdateReason.UNKNOWN_VERSION, target)
    if have == want:
        return Decision(Verdict.NO_UPDATE, NoUpdateReason.CURRENT, target)
    if have > want and not policy.allow_downgrade:
        return Decision(Verdict.NO_UPDATE, NoUpdateReason.NEWER, target)
    if host.status in IN_PROGRESS and host.granted_version == target:
        # Already granted (the host retries after a failed download or a restart): same answer,
        # whatever the limits say now; it holds its slot already.
        return Decision(Verdict.GRANT, None, target, regrant=True)
    if host.status == "rolled_back" and host.granted_version == target:
        return Decision(Verdict.HOLD, HoldReason.ROLLED_BACK, target)
    if host.held:
        return Decision(Verdict.HOLD, HoldReason.HOST_HOLD, target)
    if not policy.updates_enabled:
        return Decision(Verdict.HOLD, HoldReason.PAUSED, target)
    if not is_open(policy.windows, now):
        return Decision(Verdict.HOLD, HoldReason.OUTSIDE_WINDOW, target)
    bucket_version = rollout_version or target
    if not in_rollout(host.machine_id, bucket_version, policy.percentage):
        return Decision(Verdict.HOLD, HoldReason.PERCENTAGE, target)
    return None


# Holds that depend on counts at the moment of a host's check, not on the policy's text: the
# reason recorded at a host's last check stands for them until its next one.
LIMIT_HOLDS = frozenset(
    {HoldReason.RATE_LIMIT.value, HoldReason.CONCURRENCY.value, HoldReason.CANARY.value}
)


def hold_now(
    host: HostState,
    policy: GroupPolicy,
    target: str | None,
    now: datetime,
    rollout_version: str | None,
    recorded: str | None,
) -> str | None:
    """Why the policy in force holds `host` back now (what dashboards show), or None: the rules
    of `screen` as they stand, and for the limits the reason `recorded` at its last check."""
    screened = screen(host, policy, target, now, rollout_version)
    if screened is None:
        return recorded if recorded in LIMIT_HOLDS else None
    if screened.verdict is Verdict.HOLD and screened.reason is not None:
        return str(screened.reason.value)
    return None


def decide(
    host: HostState,
    policy: GroupPolicy,
    target: str | None,
    now: datetime,
    stats: RolloutStats,
    rollout_version: str | None = None,
) -> Decision:
    """Whether `host` gets `target` now, and if not, why."""
    screened = screen(host, policy, target, now, rollout_version)
    if screened is not None:
        return screened
    if (
        policy.max_updates_per_period is not None
        and stats.grants_in_period >= policy.max_updates_per_period
    ):
        return Decision(Verdict.HOLD, HoldReason.RATE_LIMIT, target)
    if policy.max_concurrent is not None and stats.in_flight >= policy.max_concurrent:
        return Decision(Verdict.HOLD, HoldReason.CONCURRENCY, target)
    # Safe mode: one host takes a new version first; the rest wait until it completed. After a
    # failed canary (the failure gate paused the group) a resume picks the next canary.
    if policy.safe_mode and stats.target_completed == 0 and stats.target_in_flight > 0:
        return Decision(Verdict.HOLD, HoldReason.CANARY, target)
    return Decision(Verdict.GRANT, None, target)


def failure_gate(policy: GroupPolicy, *, failed: int, attempted: int, completed: int) -> str | None:
    """Why the group must pause itself now, or None. Counts are of the current target version:
    hosts that failed (error, rollback, timeout), were granted it, and completed it."""
    if failed <= 0:
        return None
    if policy.safe_mode and completed == 0:
        return f"safe mode: the first host to update failed ({failed} failed, none completed)"
    if policy.pause_on_failed_hosts is not None and failed >= policy.pause_on_failed_hosts:
        return f"{failed} hosts failed (limit {policy.pause_on_failed_hosts})"
    if (
        policy.pause_on_failed_percent is not None
        and attempted > 0
        and failed * 100 >= policy.pause_on_failed_percent * attempted
    ):
        return (
            f"{failed} of {attempted} hosts failed ({failed * 100 / attempted:.0f}%, "
            f"limit {policy.pause_on_failed_percent:g}%)"
        )
    return None
