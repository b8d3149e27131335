"""Maintenance windows: weekly time ranges in an IANA time zone, written the way people say them.

    "Mon-Fri 02:00-05:00 Europe/Berlin"   weekdays, 2 to 5 in the morning, Berlin time
    "Sat,Sun 22:00-06:00 UTC"            an overnight window: it starts on Sat and Sun evenings
    "daily 01:00-03:00 America/New_York"

A window that ends before it starts runs past midnight and belongs to the day it starts on. Times
are wall-clock times in the zone, so a window keeps its local hours across daylight saving.
Pure: imports nothing of Nebula; `now` is always passed in.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# ASCII digits only: `\d` also matches other scripts' digits, which int() reads as numbers.
_TIME = re.compile(r"^([01]?[0-9]|2[0-3]):([0-5][0-9])\Z")


class WindowError(ValueError):
    """A window that cannot be understood; the message says why."""


@dataclass(frozen=True, slots=True)
class Window:
    days: frozenset[int]  # 0 = Monday
    start: time
    end: time
    tz: str

    def contains(self, now: datetime) -> bool:
        local = now.astimezone(ZoneInfo(self.tz))
        at = local.time().replace(tzinfo=None)
        today = local.weekday()
        if self.start < self.end:
            return today in self.days and self.start <= at < self.end
        # Past midnight: the evening part today, or the morning part of a window begun yesterday.
        yesterday = (today - 1) % 7
        return (today in self.days and at >= self.start) or (
            yesterday in self.days and at < self.end
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "days": sorted(self.days),
            "start": self.start.strftime("%H:%M"),
            "end": self.end.strftime("%H:%M"),
            "tz": self.tz,
        }

    def __str__(self) -> str:
        return f"{_format_days(self.days)} {self.start:%H:%M}-{self.end:%H:%M} {self.tz}"


def _format_days(days: frozenset[int]) -> str:
    if days == frozenset(range(7)):
        return "daily"
    return ",".join(DAYS[d].capitalize() for d in sorted(days))


def _parse_days(text: str) -> frozenset[int]:
    text = text.lower()
    if text in ("daily", "*", "every"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.split(","):
        # One day or one range; each end a day's name or its start, at least 3 letters ("Mon",
        # "Tues", "Thursday"), so "Monkey", "Mon-" or "Mon-Fri-Sun" are errors, not Mon or Mon-Fri.
        ends = part.split("-")
        if len(ends) > 2:
            raise WindowError(f"{part!r} is not a day or day range like Mon-Fri")
        a, b = _day(ends[0], part), _day(ends[-1], part)
        d = a
        days.add(d)
        while d != b:  # ranges wrap around the week: Fri-Mon is Fri, Sat, Sun, Mon
            d = (d + 1) % 7
            days.add(d)
    return frozenset(days)


def _day(text: str, part: str) -> int:
    for i, name in enumerate(_DAY_NAMES):
        if len(text) >= 3 and name.startswith(text):
            return i
    raise WindowError(f"{part!r} is not a day or day range like Mon-Fri")


def _parse_time(text: str) -> time:
    m = _TIME.match(text)
    if m is None:
        raise WindowError(f"{text!r} is not a time like 02:00")
    return time(int(m[1]), int(m[2]))


def _check_zone(tz: str) -> str:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise WindowError(f"{tz!r} is not an IANA time zone like Europe/Berlin") from None
    return tz


def parse_window(text: str) -> Window:
    """'DAYS HH:MM-HH:MM ZONE' (zone defaults to UTC)."""
    parts = text.split()
    if len(parts) not in (2, 3):
        raise WindowError(f"{text!r}: write a window as 'Mon-Fri 02:00-05:00 Europe/Berlin'")
    days = _parse_days(parts[0])
    start_text, sep, end_text = parts[1].partition("-")
    if not sep:
        raise WindowError(f"{parts[1]!r} is not a time range like 02:00-05:00")
    start, end = _parse_time(start_text), _parse_time(end_text)
    if start == end:
        raise WindowError(f"{parts[1]!r} is empty: start and end are the same")
    return Window(days, start, end, _check_zone(parts[2] if len(parts) == 3 else "UTC"))


def window_from_json(data: dict[str, Any]) -> Window:
    try:
        raw_days = list(data["days"])
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in raw_days):
            raise WindowError(f"days must be numbers 0 (Monday) to 6, got {raw_days!r}")
        days = frozenset(raw_days)
        if not days or not days <= frozenset(range(7)):
            raise WindowError(f"days must be 0 (Monday) to 6, got {sorted(days)}")
        start, end = _parse_time(str(data["start"])), _parse_time(str(data["end"]))
        if start == end:
            raise WindowError(f"{start:%H:%M}-{end:%H:%M} is empty: start and end are the same")
        return Window(days, start, end, _check_zone(str(data["tz"])))
    except (KeyError, TypeError) as exc:
        raise WindowError(f"a window needs days, start, end and tz: {exc}") from None


def is_open(windows: Sequence[Window], now: datetime) -> bool:
    """No windows means always open."""
    return not windows or any(w.contains(now) for w in windows)


def next_opening(windows: Sequence[Window], now: datetime) -> datetime | None:
    """When the next window opens (None if open now or there are none); for status displays.
    Scans minute steps of the coming week, which is cheap enough for an admin request. A week
    that ends daylight saving is an hour longer than 7 * 24 hours, so the scan covers 8 days."""
    if is_open(windows, now):
        return None
    t = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    for _ in range(8 * 24 * 60):
        if is_open(windows, t):
            return t
        t += timedelta(minutes=1)
    return None
