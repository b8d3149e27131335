"""Keyset pagination: pages of any size, as fast deep in a million rows as at the start.

A page is `WHERE (sort key, tie-breakers) > (the last row's) ORDER BY them LIMIT n`: with an
index on exactly those columns the database reads n entries from the cursor on, where OFFSET
would read and throw away every row before the page. The tie-breakers make the order total
(each row has its own place), so rows that share a sort value are neither repeated nor
skipped across pages.

A nullable sort key is read in two segments, the rows that have a value and those that do
not (NULL sorts last ascending, first descending, as PostgreSQL's b-tree keeps them), each a
range of the same index: a row comparison cannot say where NULL falls. The cursor is opaque to
clients (base64url of JSON) and names the order it was made for, so that it is not replayed
against another.

Imports nebula.errors only.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, literal, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.sql.elements import ColumnElement

from nebula.errors import InvalidInputError

Column = ColumnElement[Any] | QueryableAttribute[Any]
MAX_LIMIT = 1000
MAX_CURSOR = 2048  # characters: a real cursor is a few hundred


@dataclass(frozen=True, slots=True)
class Order:
    """A total order: `key` (may be nullable), then `ties`, never null and unique together."""

    name: str  # what the cursor is tied to, e.g. "last_seen:desc"
    key: Column
    ties: tuple[Column, ...]
    descending: bool = False
    nullable: bool = False
    key_is_time: bool = False  # a datetime: written to the cursor as ISO 8601
    # Columns equal to the leading sort columns (another table's side of a join, or the prefix
    # one index holds), compared non-strictly as well: the planner can then start that index
    # at the cursor too, where the full row comparison alone would be a filter on a scan from
    # the start (a join on machine id; (last_seen_at, id) without the app).
    bound: tuple[Column, ...] = ()


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[Any]  # the rows of the statement, without the sort columns added for the cursor
    next: str | None  # the cursor of the page after this one; None on the last page


def parse_limit(raw: str | None, default: int = 100) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInputError(f"limit must be an integer from 1 to {MAX_LIMIT}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise InvalidInputError(f"limit must be from 1 to {MAX_LIMIT}, got {value}")
    return value


def encode_cursor(order: Order, values: Sequence[Any]) -> str:
    out = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    raw = json.dumps({"o": order.name, "k": out}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(order: Order, text: str | None) -> list[Any] | None:
    """The sort values a cursor carries; InvalidInputError for one this order did not make."""
    if not text:
        return None
    bad = InvalidInputError(
        "cursor is not one this list gave out for this sort: pass the `next` of the previous "
        "page unchanged, with the same sort and order"
    )
    if len(text) > MAX_CURSOR:
        raise bad
    try:
        data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad from None
    if not isinstance(data, dict) or data.get("o") != order.name:
        raise bad
    values = data.get("k")
    if not isinstance(values, list) or len(values) != 1 + len(order.ties):
        raise bad
    if not all(isinstance(v, str | int) and not isinstance(v, bool) for v in values[1:]):
        raise bad
    key = values[0]
    if key is None:
        if not order.nullable:
            raise bad
    elif order.key_is_time:
        try:
            key = datetime.fromisoformat(key) if isinstance(key, str) else None
        except ValueError:
            key = None
        if key is None or key.tzinfo is None:
            raise bad
    elif not isinstance(key, str | int) or isinstance(key, bool):
        raise bad
    return [key, *values[1:]]


def _typed(columns: Sequence[Column], values: Sequence[Any]) -> Any:
    # Each value bound with its column's type, so that a time is stored as the column stores it.
    return tuple_(*(literal(v, c.type) for c, v in zip(columns, values, strict=True)))


async def read_page(
    session: AsyncSession,
    stmt: Select[Any],
    order: Order,
    after: list[Any] | None,
    limit: int,
    convert: Callable[[Any], Any] = lambda row: row,
) -> Page:
    """One page of `stmt` (filters applied, no ORDER BY or LIMIT) in `order`, after the row
    whose sort values are `after` (None: from the start)."""
    width = 1 + len(order.ties)
    keyed = stmt.add_columns(order.key, *order.ties)
    # Ascending: the rows with a value, then those without; descending the other way round.
    segments = [False, True] if order.nullable else [False]
    if order.descending:
        segments.reverse()
    start = 0
    if after is not None and order.nullable:
        start = segments.index(after[0] is None)
    rows: list[Any] = []
    for position, null_segment in enumerate(segments[start:]):
        query = keyed
        columns = list(order.ties) if null_segment else [order.key, *order.ties]
        if order.nullable:
            query = query.where(order.key.is_(None) if null_segment else order.key.is_not(None))
        if after is not None and position == 0:
            values = after[1:] if null_segment else after
            row, bound = tuple_(*columns), _typed(columns, values)
            query = query.where(row < bound if order.descending else row > bound)
            if order.bound and not null_segment:
                near = tuple_(*order.bound)
                limit_at = _typed(order.bound, values[: len(order.bound)])
                query = query.where(near <= limit_at if order.descending else near >= limit_at)
        query = query.order_by(*(c.desc() if order.descending else c.asc() for c in columns))
        rows += (await session.execute(query.limit(limit + 1 - len(rows)))).all()
        if len(rows) > limit:
            break
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = encode_cursor(order, list(rows[-1][-width:])) if more and rows else None
    return Page([convert(r[:-width]) for r in rows], cursor)
