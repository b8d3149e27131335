"""Tables for nebula.versions: what parses, and how Flatcar versions order.

The order decides whether a host is offered an update or a downgrade, so every row here is a
case a wrong comparison (string order, SemVer without padding, build metadata ignored or
prerelease sorted after the release) would get wrong.
"""

from __future__ import annotations

import itertools

import pytest

from nebula.versions import (
    InvalidVersionError,
    Version,
    is_valid_version,
    parse_version,
    try_parse_version,
)

# Strictly increasing: every pair (i < j) must compare a < b, never equal.
ASCENDING = [
    "0.0.0.0",  # a fresh install reports this
    "0.0.1",
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",  # numeric identifiers compare as numbers, not text
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.0+build.1",  # build metadata only breaks the tie with the bare release
    "1.0.1",
    "2.0.0",
    "10.0.0",  # not string order: "10" > "2"
    "3510.2.1",
    "3815.2.0",
    "3815.2.0+dev",
    "3815.2.1",
    "3815.10.0",
    "4152.2.3-nightly",
    "4152.2.3",
    "4152.2.3+dev",
]


@pytest.mark.parametrize(
    ("low", "high"),
    list(itertools.combinations(ASCENDING, 2)),
    ids=lambda v: v,
)
def test_order(low: str, high: str) -> None:
    a, b = parse_version(low), parse_version(high)
    assert a < b
    assert b > a
    assert a != b
    assert not b < a
    assert a <= b and b >= a


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("3815.2.0", "3815.2.0"),
        ("3815.2", "3815.2.0"),  # missing trailing parts count as 0
        ("0", "0.0.0.0"),
        ("3815.2.0", " 3815.2.0 "),  # hosts pad attributes; the parser strips
        ("03815.2.0", "3815.2.0"),
    ],
)
def test_equal(left: str, right: str) -> None:
    a, b = parse_version(left), parse_version(right)
    assert a == b
    assert hash(a) == hash(b)
    assert not a < b and not b < a


@pytest.mark.parametrize(
    ("text", "numbers", "prerelease", "build"),
    [
        ("3815.2.0", (3815, 2, 0), (), ""),
        ("0.0.0.0", (0, 0, 0, 0), (), ""),
        ("4152.2.3+dev", (4152, 2, 3), (), "dev"),
        ("4152.2.3-rc.1", (4152, 2, 3), ("rc", 1), ""),
        ("4152.2.3-rc.1+build.7", (4152, 2, 3), ("rc", 1), "build.7"),
        ("4152.2.3+2024-01-01.abc", (4152, 2, 3), (), "2024-01-01.abc"),
        ("7", (7,), (), ""),
    ],
)
def test_parts(
    text: str, numbers: tuple[int, ...], prerelease: tuple[object, ...], build: str
) -> None:
    v = parse_version(text)
    assert v.numbers == numbers
    assert v.prerelease == prerelease
    assert v.build == build
    assert str(v) == text


INVALID = [
    "",
    " ",
    "stable",
    "v3815.2.0",
    "3815.2.0.",
    ".3815.2.0",
    "3815..2",
    "3815.2.0-",  # an empty prerelease
    "3815.2.0+",  # empty build metadata
    "3815.2.0-.",  # a prerelease made only of empty identifiers
    "3815.2.0-rc..1",
    "3815.2.0+.",
    "3815.2.0_x86_64",  # the os@sp form, not a version
    "3815.2.0 beta",
    "1.2.3.4.5.6.7",  # more parts than any Flatcar version has
    "1234567890.0.0",  # a part over nine digits
    "-1.0.0",
    "3815.2.0\n4000.0.0",
    "\u0663\u0668\u0661\u0665.2.0",  # Arabic-Indic digits: int() reads them, a version must not
    "\uff13\uff18\uff11\uff15.2.0",  # fullwidth digits
]


@pytest.mark.parametrize("text", INVALID, ids=repr)
def test_invalid(text: str) -> None:
    with pytest.raises(InvalidVersionError, match="not a version"):
        parse_version(text)
    assert try_parse_version(text) is None
    assert not is_valid_version(text)


@pytest.mark.parametrize("text", [None, ""])
def test_try_parse_missing(text: str | None) -> None:
    assert try_parse_version(text) is None


def test_invalid_error_is_a_value_error() -> None:
    # Callers that only know ValueError (click, json handlers) still catch it.
    with pytest.raises(ValueError):
        parse_version("nope")


def test_not_comparable_with_strings() -> None:
    v = parse_version("3815.2.0")
    assert v != "3815.2.0"
    with pytest.raises(TypeError):
        _ = v < "4000.0.0"  # type: ignore[operator]


def test_sorting_a_shuffled_list() -> None:
    shuffled = list(reversed(ASCENDING))
    shuffled = shuffled[1::2] + shuffled[::2]
    assert [str(v) for v in sorted(parse_version(s) for s in shuffled)] == ASCENDING


def test_version_is_hashable_value() -> None:
    assert {parse_version("3815.2.0"), parse_version("3815.2")} == {parse_version("3815.2.0")}
    assert isinstance(parse_version("1.0.0"), Version)
