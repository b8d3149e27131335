"""nebula.store.hostcache: a snapshot read before a change never comes back after it.

Each test is a sequence a wrong cache gets wrong: a read racing with a change puts the old state
back, a commit racing with another process's change keeps its own (maybe older) state, a cache
that lost its change feed keeps answering.
"""

from __future__ import annotations

import gc

from nebula.store.hostcache import HostCache, Snapshot, snapshot

APP = "e96281a6-d1af-4bde-9a0a-97b76e56dc57"


def state(status: str) -> Snapshot:
    return snapshot(APP, "g", "3815.2.0", status, None, False, 7)


def test_put_and_get() -> None:
    cache = HostCache(10)
    cache.put("a", state("idle"), cache.stamp())
    assert cache.get("a", APP) == state("idle")
    assert cache.get("a", "another-app") is None  # one app per host is kept
    assert cache.get("b", APP) is None


def test_a_full_cache_adds_nothing_for_the_garbage_collector_to_walk() -> None:
    """Half a million snapshots as objects the collector tracks made each full collection walk
    them all with the event loop stopped (a 130 ms pause at the default size). Catches entries
    kept as tracked objects (a dataclass, a NamedTuple) instead of plain tuples; what `get`
    hands out is still a Snapshot with its fields."""
    cache = HostCache(20_000)
    gc.collect()
    before = len(gc.get_objects())
    for n in range(20_000):
        cache.put(f"{n:032x}", snapshot(APP, "g", "3815.2.0", "idle", None, False, n), 0)
    gc.collect()  # plain tuples of atomic values are untracked by a collection
    assert len(gc.get_objects()) - before < 1_000
    got = cache.get(f"{7:032x}", APP)
    assert isinstance(got, Snapshot) and got.facts == 7 and got.status == "idle"


def test_read_that_started_before_a_change_is_not_kept() -> None:
    """Catches a cache that takes any put: the old state read before another process granted
    the host would answer its next check."""
    cache = HostCache(10)
    since = cache.stamp()  # a read starts
    cache.evict(["a"])  # meanwhile another process changed the host
    cache.put("a", state("idle"), since)  # the read ends with what it saw before
    assert cache.get("a", APP) is None
    later = cache.stamp()
    cache.put("a", state("granted"), later)  # a read after the change is kept
    assert cache.get("a", APP) == state("granted")
    # Changes of other hosts do not spoil reads of this one.
    since = cache.stamp()
    cache.evict(["b"])
    cache.put("a", state("downloading"), since)
    assert cache.get("a", APP) == state("downloading")


def test_commit_racing_with_another_change_is_dropped() -> None:
    """Catches replace() keeping this process's committed state although another change of the
    same host came in during the transaction (which of the two is newer is unknown)."""
    cache = HostCache(10)
    since = cache.stamp()
    cache.evict(["a"])
    cache.replace("a", state("granted"), since)
    assert cache.get("a", APP) is None
    since = cache.stamp()
    cache.replace("a", state("granted"), since)
    assert cache.get("a", APP) == state("granted")
    # ... and an older read finishing after that commit does not overwrite it.
    cache.put("a", state("idle"), since)
    assert cache.get("a", APP) == state("granted")


def test_suspended_cache_answers_nothing() -> None:
    """Catches a cache that keeps answering while its change feed is down."""
    cache = HostCache(10)
    cache.put("a", state("idle"), cache.stamp())
    since = cache.stamp()
    cache.suspend()
    assert cache.get("a", APP) is None
    cache.put("a", state("idle"), cache.stamp())
    assert cache.get("a", APP) is None
    cache.resume()
    assert cache.get("a", APP) is None  # starts empty
    cache.put("a", state("idle"), since)  # a read from before the outage is refused
    assert cache.get("a", APP) is None
    cache.put("a", state("idle"), cache.stamp())
    assert cache.get("a", APP) == state("idle")


def test_a_full_cache_keeps_who_is_there_and_forgetting_changes_refuses_old_reads() -> None:
    cache = HostCache(3)
    for name in "abcd":
        cache.put(name, state("idle"), cache.stamp())
    assert len(cache) == 3 and cache.get("a", APP) is not None and cache.get("d", APP) is None
    assert cache.full
    # Marking more hosts than the record of changes holds: reads from before are refused.
    since = cache.stamp()
    cache.evict(["a", *(f"h{i}" for i in range(2000))])
    cache.put("a", state("idle"), since)
    assert cache.get("a", APP) is None
    assert cache.get("b", APP) is not None  # not changed: still good
    cache.put("a", state("idle"), cache.stamp())
    assert cache.get("a", APP) is not None


def test_a_fleet_larger_than_the_cache_still_hits_in_rounds() -> None:
    """Hosts check in round after round in the same order. Catches FIFO or LRU eviction: each
    host would be dropped just before its next check, and no check would ever hit."""
    cache = HostCache(300)
    fleet = [f"{i:032x}" for i in range(400)]
    hits = 0
    for _ in range(5):
        for machine_id in fleet:
            if cache.get(machine_id, APP) is not None:
                hits += 1
            else:
                cache.put(machine_id, state("idle"), cache.stamp())
    assert hits == 4 * 300  # every round after the first: the 300 that fit


def test_versions_and_statuses_are_shared_strings() -> None:
    # A million hosts on a few versions: one string object each, not one per host.
    one = snapshot(APP, "g", "".join(["4152", ".2.3"]), "idle", None, False, 1)
    two = snapshot(APP, "g", "".join(["415", "2.2.3"]), "idle", None, False, 1)
    assert one.version is two.version
