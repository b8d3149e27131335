"""Tables for nebula.lifecycle: the status a host's events move it to, and what they must not move.

Each in-progress status is paired with every event a host sends (contract §3); the table says
the outcome. Hosts that are not in an update Nebula granted (new, idle, complete, failed) must not
be moved by any event: a forged or stale "installed" must not mark a host updated.
"""

from __future__ import annotations

import itertools

import pytest

from nebula.lifecycle import (
    FAILED,
    IN_PROGRESS,
    STATUSES,
    Transition,
    after_event,
    completes,
)

SELF_HOSTED = 1 << 28  # set on every code a host reports to a server that is not Flatcar's
DEV_IMAGE = 1 << 29
RESUMED = 1 << 30

NOT_IN_PROGRESS = [s for s in STATUSES if s not in IN_PROGRESS]

# (event type, result, error code) that hosts send.
EVENTS = [
    (13, 1, None),  # download started
    (14, 1, None),  # download finished
    (3, 1, None),  # installed
    (3, 2, None),  # the check event: success, rebooted
    (3, 0, 44),  # rollback
    (3, 0, 44 | SELF_HOSTED),
    (3, 0, 10 | SELF_HOSTED),  # hash mismatch
    (13, 0, 9 | SELF_HOSTED),  # transfer error
    (14, 0, 11),
    (3, 0, None),  # an error without a code
    (3, 9, None),  # a result update_engine has but Nebula does not act on (deferred)
    (1, 1, None),  # an event type update_engine does not send
]


def test_statuses_partition() -> None:
    assert {"granted", "downloading", "downloaded", "installed"} == IN_PROGRESS
    assert {"error", "rolled_back", "timed_out"} == FAILED
    assert set(STATUSES) >= IN_PROGRESS | FAILED | {"new", "idle", "complete"}
    assert len(STATUSES) == len(set(STATUSES))


# -- the successful path -------------------------------------------------------------------------

SUCCESS_STEPS = [
    # (status, event type, result) -> new status; None where nothing changes.
    ("granted", 13, 1, "downloading"),
    ("granted", 14, 1, "downloaded"),  # a lost 13/1 does not stop the host's progress
    ("granted", 3, 1, "installed"),
    ("downloading", 13, 1, None),  # a repeated event is not a change
    ("downloading", 14, 1, "downloaded"),
    ("downloading", 3, 1, "installed"),
    ("downloaded", 14, 1, None),
    ("downloaded", 3, 1, "installed"),
    ("downloaded", 13, 1, "downloading"),  # a restarted download
    ("installed", 3, 1, None),
    ("installed", 13, 1, None),  # late or forged: an installed host waits for its reboot
    ("installed", 14, 1, None),
    # 3/2 is the check event; completion is decided by `completes`, not by the event.
    ("granted", 3, 2, None),
    ("downloading", 3, 2, None),
    ("downloaded", 3, 2, None),
    ("installed", 3, 2, None),
    # Results and types Nebula does not act on.
    ("granted", 3, 9, None),
    ("downloading", 1, 1, None),
    ("installed", 2, 1, None),
]


@pytest.mark.parametrize(("status", "event_type", "result", "expected"), SUCCESS_STEPS)
def test_success_events(status: str, event_type: int, result: int, expected: str | None) -> None:
    got = after_event(status, event_type, result, None)
    assert got == (None if expected is None else Transition(expected))


# -- failures -------------------------------------------------------------------------------------

FAILURES = [
    # (event type, error code as sent) -> (status, base code)
    (3, 44, "rolled_back", 44),
    (3, 44 | SELF_HOSTED, "rolled_back", 44),
    (3, 44 | SELF_HOSTED | DEV_IMAGE | RESUMED, "rolled_back", 44),
    (13, 44 | SELF_HOSTED, "error", 44),  # 44 means a rollback only on the update-complete event
    (3, 10 | SELF_HOSTED, "error", 10),
    (3, 10, "error", 10),
    (3, 268435466, "error", 10),
    (13, 9 | SELF_HOSTED | RESUMED, "error", 9),
    (14, 11 | SELF_HOSTED, "error", 11),
    (3, 5 | SELF_HOSTED, "error", 5),
    (3, 18 | SELF_HOSTED | DEV_IMAGE, "error", 18),
    (3, 2404 | SELF_HOSTED, "error", 2404),
    (3, 0xFFFFFFFF, "error", 0x0FFFFFFF),
    (3, None, "error", None),
]


@pytest.mark.parametrize("status", sorted(IN_PROGRESS))
@pytest.mark.parametrize(("event_type", "code", "expected", "base"), FAILURES)
def test_failure_events(
    status: str, event_type: int, code: int | None, expected: str, base: int | None
) -> None:
    assert after_event(status, event_type, 0, code) == Transition(expected, base)


def test_rollback_is_a_failed_status() -> None:
    got = after_event("installed", 3, 0, 44 | SELF_HOSTED)
    assert got is not None and got.status in FAILED


# -- what never moves ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "event"),
    list(itertools.product(NOT_IN_PROGRESS, EVENTS)),
    ids=lambda x: str(x),
)
def test_events_outside_an_update_change_nothing(
    status: str, event: tuple[int, int, int | None]
) -> None:
    """A forged 3/1 on a host never granted, or a late error after completion, is only logged."""
    assert after_event(status, *event) is None


# -- completion -----------------------------------------------------------------------------------

COMPLETES = [
    # (status, granted version, reported version) -> completed?
    ("installed", "4152.2.3", "4152.2.3", True),
    ("downloaded", "4152.2.3", "4152.2.3", True),  # the 3/1 was lost, the reboot worked
    ("downloading", "4152.2.3", "4152.2.3", True),
    ("granted", "4152.2.3", "4152.2.3", True),
    ("installed", "4152.2.3", "3815.2.0", False),  # still on the old version (not rebooted)
    ("installed", "4152.2.3", None, False),
    ("installed", None, "4152.2.3", False),
    ("installed", "4152.2.3", "4152.2.4", False),
    ("new", "4152.2.3", "4152.2.3", False),
    ("idle", None, "4152.2.3", False),
    ("complete", "4152.2.3", "4152.2.3", False),  # already done: no second completion
    # A failure was reported (or the host went quiet), yet it runs the granted version: done.
    ("error", "4152.2.3", "4152.2.3", True),
    ("timed_out", "4152.2.3", "4152.2.3", True),
    ("error", "4152.2.3", "3815.2.0", False),
    ("rolled_back", "4152.2.3", "4152.2.3", False),
]


@pytest.mark.parametrize(("status", "granted", "reported", "expected"), COMPLETES)
def test_completes(status: str, granted: str | None, reported: str | None, expected: bool) -> None:
    assert completes(status, granted, reported) is expected


def test_full_cycle() -> None:
    status = "granted"
    for event_type, result in ((13, 1), (14, 1), (3, 1)):
        step = after_event(status, event_type, result, None)
        assert step is not None
        status = step.status
    assert status == "installed"
    assert completes(status, "4152.2.3", "4152.2.3")
