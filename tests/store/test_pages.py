"""Cursors and search bounds, without a database: what a cursor carries back, which cursors
are refused, and the id-prefix range the search reads."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from nebula.errors import InvalidInputError
from nebula.store import instances as host_store
from nebula.store.pages import decode_cursor, encode_cursor, parse_limit

LAST_SEEN = host_store.SORTS["last_seen"](True)
VERSION = host_store.SORTS["version"](False)


def test_a_cursor_carries_its_values_back_exactly() -> None:
    at = datetime(2026, 12, 1, 8, 0, 0, 123456, tzinfo=UTC)
    values = [at, "a" * 32, "e96281a6-d1af-4bde-9a0a-97b76e56dc57"]
    assert decode_cursor(LAST_SEEN, encode_cursor(LAST_SEEN, values)) == values
    assert decode_cursor(VERSION, encode_cursor(VERSION, [None, "b", "c"])) == [None, "b", "c"]


def _raw(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "%%%",
        _raw([1, 2]),
        _raw({"o": "version:asc", "k": [None, "b", "c"]}),  # another sort's
        _raw({"o": "last_seen:desc", "k": ["2026-12-01T08:00:00", "a", "b"]}),  # no zone
        _raw({"o": "last_seen:desc", "k": [None, "a", "b"]}),  # not nullable
        _raw({"o": "last_seen:desc", "k": ["2026-12-01T08:00:00+00:00", "a"]}),  # short
        _raw({"o": "last_seen:desc", "k": ["2026-12-01T08:00:00+00:00", "a", {}]}),
        "x" * 3000,
    ],
)
def test_a_cursor_not_made_for_this_order_is_refused(cursor: str) -> None:
    with pytest.raises(InvalidInputError, match="cursor"):
        decode_cursor(LAST_SEEN, cursor)


@pytest.mark.parametrize(
    ("prefix", "above"),
    [
        ("ab", "ac"),
        ("a9", "aa"),
        ("az", "b"),
        ("a-9", "a-a"),
        ("ab-", "ac"),  # trailing punctuation: some collations skip it
        ("zz", None),
        ("-", None),
    ],
)
def test_the_id_prefix_range_ends_where_the_prefix_does(prefix: str, above: str | None) -> None:
    assert host_store.successor(prefix) == above


@pytest.mark.parametrize(("raw", "value"), [(None, 100), ("", 100), ("1", 1), ("1000", 1000)])
def test_limits(raw: str | None, value: int) -> None:
    assert parse_limit(raw) == value
