"""How many bad admin tokens one address may try: `FailureLimiter`.

An address that sent `limit` wrong or revoked tokens within `window` seconds is answered 429
(with Retry-After) on every admin request until the oldest of those failures is `window` old,
without its token being looked at: a guess that happens to be right must not get through while
the address is blocked, or the block would not slow guessing at all. A missing token is no
guess and is not counted.

The counts live in this process's memory: each worker (and each replica) counts on its own, and
a restart forgets them. That bounds guessing per process, which is what it is for (tokens are
256 random bits; the limit keeps scanners from hammering the token table), not a ban list.
At most `max_addresses` addresses are tracked; past that the one seen longest ago is dropped.

Imports nothing of Nebula.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque


class FailureLimiter:
    def __init__(self, limit: int, window: float, max_addresses: int = 10_000) -> None:
        self.limit = limit  # 0: no limit
        self.window = window
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def retry_after(self, address: str, now: float) -> int | None:
        """Whole seconds until `address` may try again, or None if it may now."""
        if not self.limit:
            return None
        times = self._recent(address, now)
        if times is None or len(times) < self.limit:
            return None
        return max(1, math.ceil(times[0] + self.window - now))

    def fail(self, address: str, now: float) -> None:
        """Count one bad token from `address`."""
        if not self.limit:
            return
        times = self._recent(address, now)
        if times is None:
            times = self._failures[address] = deque(maxlen=self.limit)
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)
        self._failures.move_to_end(address)
        times.append(now)

    def __len__(self) -> int:
        return len(self._failures)
