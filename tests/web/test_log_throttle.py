"""The throttle of the "database unavailable" line (nebula.web.errors.LogThrottle), pure."""

from __future__ import annotations

from nebula.web.errors import LogThrottle


def test_one_line_per_period_with_the_count_left_out() -> None:
    """A throttle that logged every line, never logged again, or lost the count, fails."""
    throttle = LogThrottle(10.0)
    got = [throttle.allow(t) for t in (100.0, 100.1, 105.0, 109.9, 110.0, 110.5, 200.0)]
    assert got == [0, None, None, None, 3, None, 1]
