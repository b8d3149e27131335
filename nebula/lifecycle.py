"""How a host's update status follows the events it sends (contract §3). Pure: no imports of Nebula.

    new/idle/complete/error/... --grant--> granted --13/1--> downloading --14/1--> downloaded
        --3/1--> installed --(check on the granted version, 3/2)--> complete
    any in-progress state --x/0--> error (code kept) | rolled_back (3/0, code 44)

The update timeout runs from the grant to `installed` (WORKING); an installed host waits for its
reboot as long as its reboot strategy says.

Events only move a host that is in the middle of an update Nebula granted, and never back from
`installed` but by a failure: a forged, stale or late event is written to the log but changes
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

IN_PROGRESS = frozenset({"granted", "downloading", "downloaded", "installed"})
# What a host does on its own after a grant, which the update timeout covers. Not "installed":
# that host waits for its reboot (locksmithd, FLUO, kured, often in a window days away), which
# is the operator's schedule, not a failure (issue 12).
WORKING = frozenset({"granted", "downloading", "downloaded"})
FAILED = frozenset({"error", "rolled_back", "timed_out"})
_CAN_COMPLETE = IN_PROGRESS | {"error", "timed_out"}
STATUSES = (
    "new",
    "idle",
    "granted",
    "downloading",
    "downloaded",
    "installed",
    "complete",
    "error",
    "rolled_back",
    "timed_out",
)

EVENT_UPDATE_COMPLETE = 3
EVENT_DOWNLOAD_STARTED = 13
EVENT_DOWNLOAD_FINISHED = 14
RESULT_ERROR = 0
RESULT_SUCCESS = 1
RESULT_SUCCESS_REBOOT = 2
ERROR_ROLLBACK = 44
BASE_CODE_MASK = 0x0FFFFFFF

_SUCCESS_STEPS = {
    (EVENT_DOWNLOAD_STARTED, RESULT_SUCCESS): "downloading",
    (EVENT_DOWNLOAD_FINISHED, RESULT_SUCCESS): "downloaded",
    (EVENT_UPDATE_COMPLETE, RESULT_SUCCESS): "installed",
}


@dataclass(frozen=True, slots=True)
class Transition:
    status: str
    error_code: int | None = None  # the base code, for error and rolled_back


def after_event(
    status: str, event_type: int, result: int, error_code: int | None
) -> Transition | None:
    """The new status after one event, or None when the event changes nothing."""
    if status not in IN_PROGRESS:
        return None
    if result == RESULT_ERROR:
        base = None if error_code is None else error_code & BASE_CODE_MASK
        if event_type == EVENT_UPDATE_COMPLETE and base == ERROR_ROLLBACK:
            return Transition("rolled_back", base)
        return Transition("error", base)
    step = _SUCCESS_STEPS.get((event_type, result))
    # A 13/1 after 14/1 is a restarted download (update_engine restarted before installing):
    # the host really is downloading again. Once installed, it waits for its reboot and sends
    # no download events; a late or forged one must not put it back under the update timeout.
    if step is None or step == status or status == "installed":
        return None
    return Transition(step)


def is_routine(event_type: int, result: int, previous_version: str | None) -> bool:
    """The `3/2 previousversion=""` update_engine attaches to every check (and the stub sends
    alone): it says nothing new, so it is acknowledged and counted but not logged. The first
    check after booting into an update names the old version, and a fresh install "0.0.0.0":
    those are kept."""
    return (
        event_type == EVENT_UPDATE_COMPLETE
        and result == RESULT_SUCCESS_REBOOT
        and not previous_version
    )


def completes(status: str, granted_version: str | None, reported_version: str | None) -> bool:
    """A host in an update Nebula granted that now runs the granted version has completed it.

    Also from `error` and `timed_out`: a host that reported a failure (or went quiet) but is now
    running the granted version did update, and the record must say what the host runs. Not from
    `rolled_back`: that host came back on its old version.
    """
    return (
        status in _CAN_COMPLETE
        and granted_version is not None
        and reported_version == granted_version
    )
