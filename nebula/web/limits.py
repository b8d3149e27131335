"""What one request may cost the server: how long its body may take and how large its headers.

- `read_body(request, limit)`: an Omaha body (at most `limit` bytes) under one deadline, the
  settings' body_timeout: a host that stalls half-way, or trickles, is answered 408.
- `bounded(request, read)`: one read of a body that may be long (an upload, an admin JSON
  body), which must make progress within body_timeout.
- `check_limits(request)`: 431 for a request whose header lines together exceed
  max_header_bytes (aiohttp bounds each line and their number, not their sum); 404 for a path,
  400 for a query, with control characters in it (nothing Nebula stores has them, and a NUL
  handed on to PostgreSQL is an error there).

The header timeout is not here: it is aiohttp's keep-alive timer, which closes a connection that
has not delivered a whole request head in time (nebula.web.serve.runner_options sets it).

Imports nebula.errors and nebula.web.keys only.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web

from nebula.errors import RequestTooLargeError, SlowRequestError
from nebula.web.keys import SETTINGS

T = TypeVar("T")


def body_timeout(request: web.Request) -> float:
    return float(request.app[SETTINGS].body_timeout)


async def bounded(request: web.Request, read: Awaitable[T]) -> T:
    """`read` (one read of the request's body), or SlowRequestError if no byte came within
    body_timeout. For bodies that may be long (uploads): each read has to make progress."""
    timeout = body_timeout(request)
    try:
        async with asyncio.timeout(timeout):
            return await read
    except TimeoutError:
        raise SlowRequestError(f"the request body stalled: nothing for {timeout:g} s") from None


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, at most `limit` bytes (RequestTooLargeError beyond, before reading it
    when Content-Length says so), arrived within body_timeout (SlowRequestError else)."""
    length = request.content_length
    if length is not None and length > limit:
        raise RequestTooLargeError(f"request body of {length} bytes is over {limit}")
    if request.content.is_eof():
        # The whole body has arrived (a host's small POST comes in one segment): it is taken
        # from the buffer as it is, with no timer (3% of a steady check-in's CPU) and no read
        # to await.
        body = request.content.read_nowait()
        if len(body) > limit:
            raise RequestTooLargeError(f"request body is over {limit} bytes")
        return body
    timeout = body_timeout(request)
    try:
        async with asyncio.timeout(timeout):
            return await _read_up_to(request, limit)
    except TimeoutError:
        raise SlowRequestError(f"the request body did not arrive within {timeout:g} s") from None


async def _read_up_to(request: web.Request, limit: int) -> bytes:
    # Chunked bodies carry no length: read one byte past the limit to know.
    body = await request.content.read(limit + 1)
    while len(body) <= limit:
        more = await request.content.read(limit + 1 - len(body))
        if not more:
            break
        body += more
    if len(body) > limit:
        raise RequestTooLargeError(f"request body is over {limit} bytes")
    return body


def header_bytes(request: web.BaseRequest) -> int:
    """What the request's header lines take on the wire ("Name: value\\r\\n" each)."""
    return sum(len(name) + len(value) + 4 for name, value in request.raw_headers)


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


def check_limits(request: web.Request) -> None:
    """Raise the answer to a request over the header budget or with control characters in its
    path or query (nebula.web.edge calls this before any handler reads anything: a body is
    left to aiohttp's bounded lingering)."""
    budget = int(request.app[SETTINGS].max_header_bytes)
    if header_bytes(request) > budget:
        raise web.HTTPRequestHeaderFieldsTooLarge(
            text=f"the request's headers are over {budget} bytes together\n"
        )
    if has_control(request.path):
        raise web.HTTPNotFound(text="no such path\n")
    if request.query_string and any(
        has_control(k) or has_control(v) for k, v in request.query.items()
    ):
        raise web.HTTPBadRequest(text="control characters in the query\n")
