"""Tables for nebula.windows: parsing maintenance windows, and whether one is open at an instant.

Pure: no database. Instants are written in UTC and the comment says the local wall-clock time
they are in the window's zone, because that mapping is what a wrong implementation gets wrong
(the UTC weekday instead of the local one, a fixed offset across daylight saving, ...).

Calendar used below (2026): Mon 23 Mar .. Sun 29 Mar (Europe switches to summer time on Sun 29
Mar at 01:00 UTC), Sun 25 Oct (back to winter time at 01:00 UTC), Fri 27 Nov.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from nebula.windows import (
    Window,
    WindowError,
    is_open,
    next_opening,
    parse_window,
    window_from_json,
)

MON, TUE, WED, THU, FRI, SAT, SUN = range(7)
ALL_DAYS = frozenset(range(7))


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


# -- parse_window --------------------------------------------------------------------------------

VALID = [
    # text, days, start, end, tz
    (
        "Mon-Fri 02:00-05:00 Europe/Berlin",
        {MON, TUE, WED, THU, FRI},
        (2, 0),
        (5, 0),
        "Europe/Berlin",
    ),
    ("Sat,Sun 22:00-06:00 UTC", {SAT, SUN}, (22, 0), (6, 0), "UTC"),
    ("daily 01:00-03:00 America/New_York", ALL_DAYS, (1, 0), (3, 0), "America/New_York"),
    # No zone: UTC (not the server's local zone).
    ("Mon-Fri 02:00-05:00", {MON, TUE, WED, THU, FRI}, (2, 0), (5, 0), "UTC"),
    # Day ranges wrap around the week (a non-wrapping loop would give Mon..Fri or nothing).
    ("Fri-Mon 01:00-02:00", {FRI, SAT, SUN, MON}, (1, 0), (2, 0), "UTC"),
    ("Sun-Mon 01:00-02:00", {SUN, MON}, (1, 0), (2, 0), "UTC"),
    ("Sat-Tue 01:00-02:00", {SAT, SUN, MON, TUE}, (1, 0), (2, 0), "UTC"),
    ("Mon-Sun 01:00-02:00", ALL_DAYS, (1, 0), (2, 0), "UTC"),
    # A one-day "range" is that day, not the whole week.
    ("Wed-Wed 01:00-02:00", {WED}, (1, 0), (2, 0), "UTC"),
    ("Wed 01:00-02:00", {WED}, (1, 0), (2, 0), "UTC"),
    ("Mon,Wed-Fri 01:00-02:00", {MON, WED, THU, FRI}, (1, 0), (2, 0), "UTC"),
    ("Mon,Mon 01:00-02:00", {MON}, (1, 0), (2, 0), "UTC"),
    # Case and longer day names.
    ("MON-fri 01:00-02:00", {MON, TUE, WED, THU, FRI}, (1, 0), (2, 0), "UTC"),
    ("Monday,Tues,Thursday 01:00-02:00", {MON, TUE, THU}, (1, 0), (2, 0), "UTC"),
    ("Saturday-Sunday 01:00-02:00", {SAT, SUN}, (1, 0), (2, 0), "UTC"),
    ("DAILY 01:00-02:00", ALL_DAYS, (1, 0), (2, 0), "UTC"),
    ("* 01:00-02:00", ALL_DAYS, (1, 0), (2, 0), "UTC"),
    # Hours without a leading zero; the extremes of the clock.
    ("Mon 2:00-5:30", {MON}, (2, 0), (5, 30), "UTC"),
    ("Mon 00:00-23:59", {MON}, (0, 0), (23, 59), "UTC"),
    ("Mon 23:59-00:00", {MON}, (23, 59), (0, 0), "UTC"),
    # Zones far from UTC, both sides.
    ("Mon 09:00-10:00 Pacific/Kiritimati", {MON}, (9, 0), (10, 0), "Pacific/Kiritimati"),
    ("Fri 20:00-22:00 America/Adak", {FRI}, (20, 0), (22, 0), "America/Adak"),
    # Extra blanks between the parts are fine.
    ("  Mon   02:00-05:00   UTC ", {MON}, (2, 0), (5, 0), "UTC"),
]


@pytest.mark.parametrize(
    ("text", "days", "start", "end", "tz"), [pytest.param(*row, id=row[0]) for row in VALID]
)
def test_parse_window(
    text: str, days: set[int], start: tuple[int, int], end: tuple[int, int], tz: str
) -> None:
    assert parse_window(text) == Window(frozenset(days), time(*start), time(*end), tz)


INVALID = [
    # text, a piece of the message that names the problem
    ("Xyz 02:00-05:00", r"'xyz' is not a day"),
    ("Mo 02:00-05:00", r"'mo' is not a day"),  # too short to be sure
    ("Monkey 02:00-05:00", r"'monkey' is not a day"),  # starts like Mon, is not Monday
    ("Mon-Xyz 02:00-05:00", r"'mon-xyz' is not a day"),
    ("Mon-Fri-Sun 02:00-05:00", r"'mon-fri-sun' is not a day"),  # not silently Mon-Fri
    ("Mon- 02:00-05:00", r"'mon-' is not a day"),  # not silently Mon
    ("-Mon 02:00-05:00", r"'-mon' is not a day"),
    ("Mon,,Tue 02:00-05:00", r"'' is not a day"),
    ("Mon 25:00-26:00", r"'25:00' is not a time"),
    ("Mon 24:00-01:00", r"'24:00' is not a time"),
    ("Mon 02:00-2:60", r"'2:60' is not a time"),
    ("Mon 02:00-05", r"'05' is not a time"),
    ("Mon 02:00:00-05:00", r"is not a time"),
    ("Mon 002:00-05:00", r"'002:00' is not a time"),
    ("Mon -1:00-05:00", r"'' is not a time"),
    # Digits of other scripts are digits to `\d` and int(), not to an operator reading the list.
    ("Mon \u0662:00-05:00", r"is not a time"),  # ARABIC-INDIC DIGIT TWO
    ("Mon 02:00-05:\uff10\uff10", r"is not a time"),  # FULLWIDTH DIGIT ZERO
    ("Mon 02:00-02:00", r"'02:00-02:00' is empty"),
    ("Mon 0200-0500", r"'0200' is not a time"),
    ("Mon 02:00", r"'02:00' is not a time range"),
    ("Mon 02:00-05:00 Mars/Olympus_Mons", r"'Mars/Olympus_Mons' is not an IANA time zone"),
    ("Mon 02:00-05:00 ../../etc/passwd", r"is not an IANA time zone"),
    ("Mon 02:00-05:00 CEST", r"'CEST' is not an IANA time zone"),
    # Wrong number of parts.
    ("", r"write a window as"),
    ("Mon", r"write a window as"),
    ("02:00-05:00", r"write a window as"),
    ("Mon 02:00-05:00 Europe/Berlin extra", r"write a window as"),
    ("Mon 02:00 05:00 UTC", r"write a window as"),
    ("Mon 02:00 05:00", r"'02:00' is not a time range"),
]


@pytest.mark.parametrize(("text", "message"), [pytest.param(*row, id=row[0]) for row in INVALID])
def test_parse_window_rejects(text: str, message: str) -> None:
    with pytest.raises(WindowError, match=message):
        parse_window(text)


def test_window_error_is_a_value_error() -> None:
    # Callers that validate input catch ValueError; a WindowError must be one.
    assert issubclass(WindowError, ValueError)


# -- Window.contains -----------------------------------------------------------------------------

CONTAINS = [
    # window, instant (UTC), open?
    # Plain window: start inclusive, end exclusive, to the second and microsecond.
    ("Mon-Fri 02:00-05:00 UTC", utc(2026, 3, 23, 1, 59, 59), False),
    ("Mon-Fri 02:00-05:00 UTC", utc(2026, 3, 23, 2, 0), True),
    ("Mon-Fri 02:00-05:00 UTC", utc(2026, 3, 23, 4, 59, 59, 999999), True),
    ("Mon-Fri 02:00-05:00 UTC", utc(2026, 3, 23, 5, 0), False),
    ("Mon-Fri 02:00-05:00 UTC", utc(2026, 3, 27, 3, 0), True),  # Friday
    ("Mon-Fri 02:00-05:00 UTC", utc(2026, 3, 28, 3, 0), False),  # Saturday
    ("Mon-Fri 02:00-05:00 UTC", utc(2026, 3, 29, 3, 0), False),  # Sunday
    # Overnight: the evening part on a listed day, the morning part on the day after it only.
    ("Sat,Sun 22:00-06:00 UTC", utc(2026, 3, 28, 21, 59), False),  # Sat evening, before
    ("Sat,Sun 22:00-06:00 UTC", utc(2026, 3, 28, 22, 0), True),  # Sat evening
    ("Sat,Sun 22:00-06:00 UTC", utc(2026, 3, 28, 23, 59, 59), True),
    ("Sat,Sun 22:00-06:00 UTC", utc(2026, 3, 29, 0, 0), True),  # Sun morning, from Sat
    ("Sat,Sun 22:00-06:00 UTC", utc(2026, 3, 29, 5, 59), True),
    ("Sat,Sun 22:00-06:00 UTC", utc(2026, 3, 29, 6, 0), False),
    ("Sat,Sun 22:00-06:00 UTC", utc(2026, 3, 29, 12, 0), False),  # Sun midday
    ("Sat,Sun 22:00-06:00 UTC", utc(2026, 3, 29, 22, 0), True),  # Sun evening
    ("Sat,Sun 22:00-06:00 UTC", utc(2026, 3, 30, 5, 59), True),  # Mon morning, from Sun
    ("Sat,Sun 22:00-06:00 UTC", utc(2026, 3, 30, 22, 0), False),  # Mon evening
    # Sat morning would be the tail of a Friday window, and Friday is not listed.
    ("Sat,Sun 22:00-06:00 UTC", utc(2026, 3, 28, 3, 0), False),
    # One listed day: its morning is not in the window (the window begins that evening), the
    # next morning is, and the morning after that is not.
    ("Fri 22:00-06:00 UTC", utc(2026, 3, 27, 3, 0), False),
    ("Fri 22:00-06:00 UTC", utc(2026, 3, 28, 3, 0), True),
    ("Fri 22:00-06:00 UTC", utc(2026, 3, 29, 3, 0), False),
    # Sun evening runs into Monday: the wrap of the week (yesterday of Monday is Sunday).
    ("Sun 23:00-01:00 UTC", utc(2026, 3, 30, 0, 30), True),
    ("Sun 23:00-01:00 UTC", utc(2026, 3, 23, 0, 30), True),  # the Monday before, too
    ("Sun 23:00-01:00 UTC", utc(2026, 3, 24, 0, 30), False),
    # Ending at midnight: up to the last second of the listed day, not into the next.
    ("Mon 22:00-00:00 UTC", utc(2026, 3, 23, 23, 59, 59), True),
    ("Mon 22:00-00:00 UTC", utc(2026, 3, 24, 0, 0), False),
    # Wrap-around day range.
    ("Fri-Mon 01:00-02:00 UTC", utc(2026, 3, 29, 1, 30), True),  # Sun
    ("Fri-Mon 01:00-02:00 UTC", utc(2026, 3, 30, 1, 30), True),  # Mon
    ("Fri-Mon 01:00-02:00 UTC", utc(2026, 3, 25, 1, 30), False),  # Wed
    # Wall-clock hours in the window's zone: Berlin is UTC+1 in winter, UTC+2 in summer.
    ("Mon-Fri 02:00-05:00 Europe/Berlin", utc(2026, 3, 23, 0, 59), False),  # 01:59 CET
    ("Mon-Fri 02:00-05:00 Europe/Berlin", utc(2026, 3, 23, 1, 0), True),  # 02:00 CET
    ("Mon-Fri 02:00-05:00 Europe/Berlin", utc(2026, 3, 23, 4, 0), False),  # 05:00 CET
    ("Mon-Fri 02:00-05:00 Europe/Berlin", utc(2026, 7, 6, 0, 0), True),  # 02:00 CEST, Mon
    ("Mon-Fri 02:00-05:00 Europe/Berlin", utc(2026, 7, 6, 3, 0), False),  # 05:00 CEST
    # The local day decides: Sun 23:30 UTC is Mon 00:30 CET, not yet; 01:00 UTC is Mon 02:00.
    ("Mon 02:00-05:00 Europe/Berlin", utc(2026, 3, 22, 23, 30), False),
    ("Mon 02:00-05:00 Europe/Berlin", utc(2026, 3, 23, 1, 0), True),
    ("daily 01:00-03:00 America/New_York", utc(2026, 11, 27, 6, 0), True),  # 01:00 EST
    ("daily 01:00-03:00 America/New_York", utc(2026, 11, 27, 5, 59), False),  # 00:59 EST
    ("daily 01:00-03:00 America/New_York", utc(2026, 7, 1, 5, 0), True),  # 01:00 EDT
    ("daily 01:00-03:00 America/New_York", utc(2026, 7, 1, 7, 0), False),  # 03:00 EDT
    # Daylight saving begins in Berlin on Sun 29 Mar at 01:00 UTC (02:00 CET -> 03:00 CEST): the
    # hour 02:00-03:00 does not exist, so the window runs from 03:00 to 05:00 CEST, which is
    # 01:00-03:00 UTC. A fixed +1 offset would say open until 04:00 UTC.
    ("Sun 02:00-05:00 Europe/Berlin", utc(2026, 3, 29, 0, 59), False),  # 01:59 CET
    ("Sun 02:00-05:00 Europe/Berlin", utc(2026, 3, 29, 1, 0), True),  # 03:00 CEST
    ("Sun 02:00-05:00 Europe/Berlin", utc(2026, 3, 29, 2, 59), True),  # 04:59 CEST
    ("Sun 02:00-05:00 Europe/Berlin", utc(2026, 3, 29, 3, 0), False),  # 05:00 CEST
    ("Sun 02:00-05:00 Europe/Berlin", utc(2026, 3, 29, 3, 30), False),  # 05:30 CEST
    # The Saturday before is still winter time: 02:00-05:00 CET = 01:00-04:00 UTC.
    ("Sat 02:00-05:00 Europe/Berlin", utc(2026, 3, 28, 3, 30), True),  # 04:30 CET
    ("Sat 02:00-05:00 Europe/Berlin", utc(2026, 3, 28, 4, 0), False),  # 05:00 CET
    # Daylight saving ends on Sun 25 Oct at 01:00 UTC (03:00 CEST -> 02:00 CET): 02:00-03:00
    # happens twice, so the window lasts four hours, 00:00-04:00 UTC. A fixed +2 offset would
    # close at 03:00 UTC; a window computed from the first occurrence only would close at 01:00.
    ("Sun 02:00-05:00 Europe/Berlin", utc(2026, 10, 24, 23, 59), False),  # 01:59 CEST
    ("Sun 02:00-05:00 Europe/Berlin", utc(2026, 10, 25, 0, 0), True),  # 02:00 CEST
    ("Sun 02:00-05:00 Europe/Berlin", utc(2026, 10, 25, 0, 59), True),  # 02:59 CEST
    ("Sun 02:00-05:00 Europe/Berlin", utc(2026, 10, 25, 1, 0), True),  # 02:00 CET (again)
    ("Sun 02:00-05:00 Europe/Berlin", utc(2026, 10, 25, 3, 30), True),  # 04:30 CET
    ("Sun 02:00-05:00 Europe/Berlin", utc(2026, 10, 25, 3, 59), True),  # 04:59 CET
    ("Sun 02:00-05:00 Europe/Berlin", utc(2026, 10, 25, 4, 0), False),  # 05:00 CET
    # A window inside the repeated hour is open twice that night.
    ("Sun 02:15-02:45 Europe/Berlin", utc(2026, 10, 25, 0, 30), True),  # 02:30 CEST
    ("Sun 02:15-02:45 Europe/Berlin", utc(2026, 10, 25, 1, 0), False),  # 02:00 CET
    ("Sun 02:15-02:45 Europe/Berlin", utc(2026, 10, 25, 1, 30), True),  # 02:30 CET
    # A window inside the skipped hour never opens that day.
    ("Sun 02:15-02:45 Europe/Berlin", utc(2026, 3, 29, 0, 30), False),  # 01:30 CET
    ("Sun 02:15-02:45 Europe/Berlin", utc(2026, 3, 29, 1, 0), False),  # 03:00 CEST
    # Pacific/Kiritimati is UTC+14: Monday 09:00 local is Sunday 19:00 UTC. The UTC weekday
    # (Sunday) is not in the window; the local one (Monday) is.
    ("Mon 09:00-10:00 Pacific/Kiritimati", utc(2026, 11, 29, 19, 30), True),  # Mon 09:30
    ("Mon 09:00-10:00 Pacific/Kiritimati", utc(2026, 11, 30, 9, 30), False),  # Mon 23:30
    ("Mon 09:00-10:00 Pacific/Kiritimati", utc(2026, 11, 30, 19, 30), False),  # Tue 09:30
    # America/Adak is UTC-10 in winter, UTC-9 in summer: Friday evening there is Saturday UTC.
    ("Fri 20:00-22:00 America/Adak", utc(2026, 11, 28, 6, 30), True),  # Fri 20:30 HST
    ("Fri 20:00-22:00 America/Adak", utc(2026, 11, 27, 6, 30), False),  # Thu 20:30
    ("Fri 20:00-22:00 America/Adak", utc(2026, 11, 28, 8, 0), False),  # Fri 22:00
    ("Fri 20:00-22:00 America/Adak", utc(2026, 7, 4, 5, 30), True),  # Fri 20:30 HDT
    ("Fri 20:00-22:00 America/Adak", utc(2026, 7, 4, 6, 30), True),  # Fri 21:30 HDT
    ("Fri 20:00-22:00 America/Adak", utc(2026, 7, 4, 7, 0), False),  # Fri 22:00 HDT
    # Overnight window far west: the morning part is on the local next day (Sat), which is
    # already Saturday UTC; the evening part is Friday local but Saturday UTC too.
    ("Fri 22:00-02:00 America/Adak", utc(2026, 11, 28, 8, 30), True),  # Fri 22:30
    ("Fri 22:00-02:00 America/Adak", utc(2026, 11, 28, 11, 30), True),  # Sat 01:30
    ("Fri 22:00-02:00 America/Adak", utc(2026, 11, 29, 11, 30), False),  # Sun 01:30
]


@pytest.mark.parametrize(
    ("text", "now", "expected"),
    [pytest.param(t, n, e, id=f"{t} @ {n:%a %Y-%m-%d %H:%M:%S}") for t, n, e in CONTAINS],
)
def test_contains(text: str, now: datetime, expected: bool) -> None:
    window = parse_window(text)
    assert window.contains(now) is expected
    # The same instant written in another zone is the same instant.
    assert window.contains(now.astimezone(ZoneInfo("Asia/Kolkata"))) is expected
    assert is_open([window], now) is expected


# -- is_open -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "now", [utc(2026, 3, 23, 3, 0), utc(2026, 3, 29, 12, 0), utc(2026, 10, 25, 1, 30)]
)
def test_no_windows_is_always_open(now: datetime) -> None:
    assert is_open([], now) is True
    assert is_open((), now) is True


SEVERAL = ("Mon-Fri 02:00-05:00 UTC", "Sat,Sun 22:00-06:00 UTC", "Wed 12:00-13:00 Europe/Berlin")


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (utc(2026, 3, 23, 3, 0), True),  # the first only
        (utc(2026, 3, 28, 23, 0), True),  # the second only
        (utc(2026, 3, 25, 11, 30), True),  # the third only (12:30 CET)
        (utc(2026, 3, 25, 12, 30), False),  # 13:30 CET: none
        (utc(2026, 3, 23, 12, 0), False),  # none
        (utc(2026, 3, 30, 3, 0), True),  # Mon 03:00: the first and the tail of the second
    ],
)
def test_several_windows_any_open(now: datetime, expected: bool) -> None:
    windows = [parse_window(w) for w in SEVERAL]
    assert is_open(windows, now) is expected
    # Any, not all and not the first: the order of the list does not matter.
    assert is_open(list(reversed(windows)), now) is expected


# -- JSON ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [row[0] for row in VALID])
def test_json_round_trip(text: str) -> None:
    window = parse_window(text)
    data = window.to_json()
    assert set(data) == {"days", "start", "end", "tz"}
    assert data["days"] == sorted(window.days)
    assert window_from_json(data) == window
    # And str() is a form parse_window reads back to the same window.
    assert parse_window(str(window)) == window


def test_to_json_shape() -> None:
    assert parse_window("Sat,Sun 22:00-06:00 Europe/Berlin").to_json() == {
        "days": [5, 6],
        "start": "22:00",
        "end": "06:00",
        "tz": "Europe/Berlin",
    }
    assert str(parse_window("daily 1:05-3:00")) == "daily 01:05-03:00 UTC"
    assert str(parse_window("Sun-Tue 01:00-02:00")) == "Mon,Tue,Sun 01:00-02:00 UTC"


GOOD = {"days": [0, 4], "start": "02:00", "end": "05:00", "tz": "UTC"}

BAD_JSON: list[tuple[str, Any, str]] = [
    ("not a dict: None", None, "needs days, start, end and tz"),
    ("not a dict: text", "Mon 02:00-05:00 UTC", "needs days, start, end and tz"),
    ("not a dict: list", [0, 1], "needs days, start, end and tz"),
    ("no days", {k: v for k, v in GOOD.items() if k != "days"}, "needs days, start, end and tz"),
    ("no start", {k: v for k, v in GOOD.items() if k != "start"}, "needs days"),
    ("no end", {k: v for k, v in GOOD.items() if k != "end"}, "needs days"),
    ("no tz", {k: v for k, v in GOOD.items() if k != "tz"}, "needs days"),
    ("days empty", {**GOOD, "days": []}, "days must be 0"),
    ("day 7", {**GOOD, "days": [0, 7]}, "days must be 0"),
    ("day -1", {**GOOD, "days": [-1]}, "days must be 0"),
    ("days a number", {**GOOD, "days": 3}, "needs days"),
    # Text days would iterate as characters; int("x") raises a plain ValueError, which the
    # callers (that skip bad stored windows on WindowError) would not catch.
    ("days text", {**GOOD, "days": "0,1"}, "days must be numbers"),
    ("day name", {**GOOD, "days": ["mon"]}, "days must be numbers"),
    ("day fraction", {**GOOD, "days": [1.5]}, "days must be numbers"),
    ("day bool", {**GOOD, "days": [True]}, "days must be numbers"),
    ("day null", {**GOOD, "days": [None]}, "days must be numbers"),
    ("bad start", {**GOOD, "start": "25:00"}, "'25:00' is not a time"),
    ("start a number", {**GOOD, "start": 200}, "'200' is not a time"),
    ("bad end", {**GOOD, "end": "2:60"}, "'2:60' is not a time"),
    ("start with a newline", {**GOOD, "start": "02:00\n"}, "is not a time"),
    # parse_window refuses an empty range; reading one back must not turn it into 24 hours.
    ("empty range", {**GOOD, "end": "02:00"}, "is empty"),
    ("bad zone", {**GOOD, "tz": "Nowhere/Null"}, "not an IANA time zone"),
    ("zone null", {**GOOD, "tz": None}, "not an IANA time zone"),
]


@pytest.mark.parametrize(("data", "message"), [pytest.param(d, m, id=i) for i, d, m in BAD_JSON])
def test_window_from_json_rejects(data: Any, message: str) -> None:
    with pytest.raises(WindowError, match=message):
        window_from_json(data)


def test_window_from_json_accepts_extra_keys() -> None:
    assert window_from_json({**GOOD, "note": "x"}) == Window(
        frozenset({MON, FRI}), time(2), time(5), "UTC"
    )


# -- next_opening --------------------------------------------------------------------------------

NEXT = [
    # windows, now, next opening
    ((), utc(2026, 3, 23, 12, 0), None),  # no windows: always open, nothing to wait for
    (("Mon-Fri 02:00-05:00 UTC",), utc(2026, 3, 23, 3, 0), None),  # open now
    (("Mon-Fri 02:00-05:00 UTC",), utc(2026, 3, 23, 2, 0), None),  # opens this instant
    (("Mon-Fri 02:00-05:00 UTC",), utc(2026, 3, 23, 5, 0), utc(2026, 3, 24, 2, 0)),
    (("Mon-Fri 02:00-05:00 UTC",), utc(2026, 3, 27, 5, 0), utc(2026, 3, 30, 2, 0)),  # Fri->Mon
    (("Mon-Fri 02:00-05:00 UTC",), utc(2026, 3, 23, 1, 59, 30), utc(2026, 3, 23, 2, 0)),
    (("Mon-Fri 02:00-05:00 UTC",), utc(2026, 3, 23, 1, 59), utc(2026, 3, 23, 2, 0)),
    # The earliest of several.
    (
        ("Mon-Fri 02:00-05:00 UTC", "Sat,Sun 22:00-06:00 UTC"),
        utc(2026, 3, 27, 12, 0),
        utc(2026, 3, 28, 22, 0),
    ),
    # Once a week, a minute after it closed: almost a week ahead.
    (("Mon 02:00-02:01 UTC",), utc(2026, 3, 23, 2, 1), utc(2026, 3, 30, 2, 0)),
    # In the window's zone: Kiritimati's Monday 09:00 is Sunday 19:00 UTC.
    (("Mon 09:00-10:00 Pacific/Kiritimati",), utc(2026, 11, 27, 12, 0), utc(2026, 11, 29, 19, 0)),
    # Across the start of summer time: Sun 02:00 Berlin does not exist; the window opens with
    # the jump to 03:00 CEST = 01:00 UTC.
    (("Sun 02:00-05:00 Europe/Berlin",), utc(2026, 3, 28, 12, 0), utc(2026, 3, 29, 1, 0)),
    # Across the end of summer time: a week that is 7 days and an hour long. From Monday 00:01
    # CEST (Sun 22:01 UTC) the next Monday 00:00 is Monday 00:00 CET = Sun 25 Oct 23:00 UTC,
    # 7 days and 59 minutes later. (A scan of exactly 7 * 24 hours said None here.)
    (("Mon 00:00-00:01 Europe/Berlin",), utc(2026, 10, 18, 22, 1), utc(2026, 10, 25, 23, 0)),
]


@pytest.mark.parametrize(
    ("texts", "now", "expected"),
    [pytest.param(w, n, e, id=f"{'+'.join(w) or 'none'} @ {n:%a %H:%M:%S}") for w, n, e in NEXT],
)
def test_next_opening(texts: tuple[str, ...], now: datetime, expected: datetime | None) -> None:
    windows = [parse_window(t) for t in texts]
    opening = next_opening(windows, now)
    assert opening == expected
    if opening is not None:
        # It is an opening: open then, closed the minute before, and closed until then.
        assert opening > now
        assert is_open(windows, opening)
        assert not is_open(windows, opening - timedelta(minutes=1))
