"""Rollout policy: decide whether one host may be offered its group's target version now.

Pure: imports only nebula.versions and nebula.lifecycle (both pure); time and per-group
statistics come in as arguments. "No" is a value (a Decision with a reason), never an exception.
The caller (nebula.service) applies the decision inside the request's transaction.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from nebula.lifecycle import IN_PROGRESS
from nebula.versions import Version, try_parse_version


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


class NoUpdateReason(enum.Enum):
    NO_TARGET = "no_target"  # the group's channel points at no package
    CURRENT = "current"
    NEWER = "newer"  # the host runs a newer version; never offered a downgrade by default
    UNKNOWN_VERSION = "unknown_version"  # the host sent no (parseable) version


@dataclass(frozen=True, slots=True)
class GroupPolicy:
    """The rules of one group that decide() reads."""

    updates_enabled: bool = True
    allow_downgrade: bool = False


@dataclass(frozen=True, slots=True)
class HostState:
    """What the server knows of one host for one application."""

    version: str | None
    status: str = "new"
    granted_version: str | None = None
    held: bool = False


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


def decide(host: HostState, policy: GroupPolicy, target: str | None) -> Decision:
    """Whether `host` gets `target` now, and if not, why."""
    if target is None:
        return Decision(Verdict.NO_UPDATE, NoUpdateReason.NO_TARGET)
    want: Version | None = try_parse_version(target)
    have = try_parse_version(host.version)
    if want is None or have is None:
        return Decision(Verdict.NO_UPDATE, NoUpdateReason.UNKNOWN_VERSION, target)
    if have == want:
        return Decision(Verdict.NO_UPDATE, NoUpdateReason.CURRENT, target)
    if have > want and not policy.allow_downgrade:
        return Decision(Verdict.NO_UPDATE, NoUpdateReason.NEWER, target)
    if host.status in IN_PROGRESS and host.granted_version == target:
        # Already granted (the host retries after a failed download or a restart): same answer.
        return Decision(Verdict.GRANT, None, target, regrant=True)
    if host.status == "rolled_back" and host.granted_version == target:
        return Decision(Verdict.HOLD, HoldReason.ROLLED_BACK, target)
    if host.held:
        return Decision(Verdict.HOLD, HoldReason.HOST_HOLD, target)
    if not policy.updates_enabled:
        return Decision(Verdict.HOLD, HoldReason.PAUSED, target)
    return Decision(Verdict.GRANT, None, target)
