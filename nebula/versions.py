"""Parse and order Flatcar OS versions ("3815.2.0", "4152.2.3+dev", "0.0.0.0").

Pure: imports nothing of Nebula. A Flatcar version is dot-separated integers (usually three; a
fresh install reports "0.0.0.0"), optionally followed by "-prerelease" and "+build". Ordering
follows SemVer: numbers first (missing trailing parts count as 0), a prerelease sorts before the
release, and build metadata only breaks ties so that distinct strings never compare equal.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

# ASCII only: `\d` would also match other scripts' digits, which int() then reads as numbers.
# Dot-separated identifiers are never empty ("1.0.0-." is not a prerelease of 1.0.0).
_VERSION_RE = re.compile(
    r"^(?P<nums>[0-9]{1,9}(?:\.[0-9]{1,9}){0,5})"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:[.+][0-9A-Za-z-]+)*))?\Z"
)


class InvalidVersionError(ValueError):
    """A string that is not a Flatcar version."""


@functools.total_ordering
@dataclass(frozen=True, slots=True)
class Version:
    """A parsed, ordered version. `str()` gives back the original text."""

    text: str
    numbers: tuple[int, ...]
    prerelease: tuple[int | str, ...]
    build: str

    def _key(self) -> tuple[object, ...]:
        nums = self.numbers + (0,) * (6 - len(self.numbers))
        # A release (no prerelease) sorts after any prerelease of the same numbers.
        pre: tuple[object, ...] = (
            (1,)
            if not self.prerelease
            else (0, *((0, p, "") if isinstance(p, int) else (1, 0, p) for p in self.prerelease))
        )
        return (nums, pre, self.build)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        return self.text


@functools.lru_cache(maxsize=4096)
def parse_version(text: str) -> Version:
    """Parse `text`; raise InvalidVersionError if it is not a version. Cached: hosts repeat them."""
    m = _VERSION_RE.match(text.strip()) if text else None
    if m is None:
        raise InvalidVersionError(f"not a version: {text!r}")
    pre = tuple(int(p) if p.isdigit() else p for p in (m["pre"] or "").split(".") if p)
    return Version(
        text=text.strip(),
        numbers=tuple(int(n) for n in m["nums"].split(".")),
        prerelease=pre,
        build=m["build"] or "",
    )


def try_parse_version(text: str | None) -> Version | None:
    """Like parse_version, but None for a missing or unparseable string (hosts send anything)."""
    if not text:
        return None
    try:
        return parse_version(text)
    except InvalidVersionError:
        return None


def is_valid_version(text: str) -> bool:
    return try_parse_version(text) is not None
