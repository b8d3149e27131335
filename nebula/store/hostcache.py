"""What this process knows of hosts' update state, so that a steady-state check-in is answered
from memory (nebula.checkin decides; nebula.service asks).

One `Snapshot` per host: the state columns a decision rests on, as committed in the database.
Entries are filled from reads and from this process's own commits, and dropped when anybody
changes the host: this process (`replace` after its own commit) or another one (`evict`, from
nebula.store.changes). A read that started before a change must not put its older state back:
every change bumps an epoch, remembered per host, and `put(..., since)` refuses a snapshot read
before the host's last change. Capacity is bounded; the oldest entries go first.

Never a source of truth: whatever changes state reads the database under its locks. A stale
entry could only make a steady-state answer stale, so every path that changes a host outside the
Omaha transaction (holds, the timeout sweep, retirement, deletes) reports the change. Imports
nothing of Nebula.
"""

from __future__ import annotations

import logging
import sys
from typing import NamedTuple

log = logging.getLogger(__name__)


class Snapshot(NamedTuple):
    """One host's state for one application, as the database holds it."""

    app_id: str
    group_id: str | None
    version: str | None
    status: str
    granted_version: str | None
    held: bool
    facts: int  # nebula.checkin.facts_key of the request that last wrote the host's facts
    # Retired (silent past its group's retire_after): its next check-in is a state change that
    # brings it back, never a steady one.
    retired: bool = False


# The cache keeps each snapshot as a plain tuple of strings, ints, bools and None, which
# Python's garbage collector stops tracking: half a million snapshot objects made every full
# collection walk all of them (130 ms with the event loop stopped; 20 ms as tuples).
_Entry = tuple[str, str | None, str | None, str, str | None, bool, int, bool]
_as_snapshot = Snapshot._make


def _shared(value: str | None) -> str | None:
    # Versions, group ids and statuses repeat across a fleet: one string object for all hosts.
    return None if value is None else sys.intern(value)


def snapshot(
    app_id: str,
    group_id: str | None,
    version: str | None,
    status: str,
    granted_version: str | None,
    held: bool,
    facts: int,
    retired: bool = False,
) -> Snapshot:
    return Snapshot(
        sys.intern(app_id),
        _shared(group_id),
        _shared(version),
        sys.intern(status),
        _shared(granted_version),
        held,
        facts,
        retired,
    )


class HostCache:
    """Snapshots by machine id (one application per host is kept: Flatcar hosts send one)."""

    def __init__(self, capacity: int = 500_000) -> None:
        self.capacity = capacity
        self.enabled = capacity > 0
        self.full = False  # it refused a newcomer for lack of room (said once in the log)
        # Lookups answered from memory and not (off, suspended or unknown host): plain ints on
        # the hot path, published to the metrics once a second (nebula.web.app).
        self.hits = 0
        self.misses = 0
        self._entries: dict[str, _Entry] = {}
        self._changed: dict[str, int] = {}  # machine id -> epoch of its last change
        self._epoch = 0
        # Reads that started before this epoch are refused: the per-host record of older changes
        # has been dropped (capacity), or everything was cleared. A change marked at epoch E
        # was committed before it was marked, so a read stamped E or later has seen it.
        self._floor = 0

    def __len__(self) -> int:
        return len(self._entries)

    def stamp(self) -> int:
        """Take before reading a host's state; hand to `put` with what was read."""
        return self._epoch

    def get(self, machine_id: str, app_id: str) -> Snapshot | None:
        entry = self._entries.get(machine_id) if self.enabled else None
        if entry is None or entry[0] != app_id:
            self.misses += 1
            return None
        self.hits += 1
        return _as_snapshot(entry)

    def put(self, machine_id: str, entry: Snapshot, since: int) -> None:
        """Keep `entry`, read at `since`, unless the host changed after that."""
        if not self.enabled or since < self._floor:
            return
        if self._changed.get(machine_id, -1) > since:
            return
        self._store(machine_id, entry)

    def replace(self, machine_id: str, entry: Snapshot, since: int) -> None:
        """After this process committed `entry` in a transaction that began at `since`: keep it,
        unless another change came in meanwhile (the order of the two is then unknown)."""
        changed_meanwhile = since < self._floor or self._changed.get(machine_id, -1) > since
        self._mark(machine_id)
        if changed_meanwhile or not self.enabled:
            self._entries.pop(machine_id, None)
        else:
            self._store(machine_id, entry)

    def evict(self, machine_ids: list[str] | tuple[str, ...]) -> None:
        """These hosts changed somewhere: forget them, and refuse reads from before now."""
        for machine_id in machine_ids:
            self._mark(machine_id)
            self._entries.pop(machine_id, None)

    def suspend(self) -> None:
        """Stop answering from memory (the change feed is down): nothing is got or kept."""
        self.enabled = False
        self.clear()

    def resume(self) -> None:
        """The change feed is up (again): start from empty."""
        self.clear()
        self.enabled = self.capacity > 0

    def clear(self) -> None:
        """Forget everything (the change feed was lost: anything may have changed)."""
        self._epoch += 1
        self._floor = self._epoch
        self._entries.clear()
        self._changed.clear()

    def _mark(self, machine_id: str) -> None:
        self._epoch += 1
        self._changed[machine_id] = self._epoch
        if len(self._changed) > max(self.capacity, 1024):
            # Dropping the record of old changes: refuse every read older than now instead.
            self._changed.clear()
            self._floor = self._epoch

    def _store(self, machine_id: str, entry: Snapshot) -> None:
        entries = self._entries
        if machine_id not in entries and len(entries) >= self.capacity:
            # Full: keep who is here. Hosts check in round after round in much the same order,
            # so dropping the oldest (FIFO, LRU) would evict every host just before it comes
            # back: no hits at all for a fleet a little larger than the cache. Refusing
            # newcomers keeps capacity/fleet of the checks answered from memory.
            if not self.full:
                self.full = True
                log.warning(
                    "host cache full (%d hosts): the others are read from the database at "
                    "every check; raise host_cache_size to hold the whole fleet",
                    self.capacity,
                )
            return
        entries[machine_id] = tuple(entry)  # type: ignore[assignment]  # an exact tuple
