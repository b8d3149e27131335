"""Durations as operators write them: "90s", "15m", "1h", "2h30m", "7d", or plain seconds.

Pure: imports nothing of Nebula.
"""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+)([smhdw])")


def parse_duration(value: str | int) -> int:
    """Seconds in `value`; ValueError with a readable message if it is not a positive duration."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int):
        seconds = value
    else:
        text = value.strip().lower()
        if text.isascii() and text.isdigit():
            seconds = int(text)
        else:
            parts = _PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"{value!r} is not a duration like 90s, 15m, 2h or 1h30m")
            seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"{value!r}: a duration must be positive")
    return seconds


def format_duration(seconds: int | float) -> str:
    """The shortest exact form: 3600 -> "1h", 5400 -> "1h30m", 45 -> "45s"."""
    rest = int(seconds)
    if rest <= 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out)
