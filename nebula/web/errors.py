"""The one place exceptions become HTTP answers.

NebulaError subclasses carry their status; the admin API answers an RFC 9457 problem document
(`application/problem+json`, see `problem`), the hosts' routes plain text. A body aiohttp cannot
decode is the client's 400; a lost database connection is a 503 (update_engine backs off on it); a
full payload disk a 507 that says so; a client that hung up is logged at INFO and not answered (it
is gone); anything else unexpected is logged with its traceback and answered with a bare 500 that
shows nothing of it. What the client sent (the path) is logged with its control characters escaped.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from http import HTTPStatus
from typing import Any

from aiohttp import web
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from nebula.errors import NebulaError
from nebula.web.logs import client_error, printable, reason

log = logging.getLogger(__name__)


PROBLEM_JSON = "application/problem+json"

# A problem's `type` is a URI (RFC 9457 3.1.1) that names its kind: a tag URI (RFC 4151), which
# identifies without pretending there is a page to fetch. The kind is the NebulaError class (or
# aiohttp's HTTPException) name, also given bare in `kind` for scripts.
PROBLEM_TYPE = "tag:nebula,2026:problem:"


def problem(status: int, detail: str, kind: str) -> dict[str, Any]:
    """An RFC 9457 problem document: type, title (constant per type: the status phrase, as each
    kind has one status), status, detail (this occurrence, in words), and two extensions:
    `kind`, and `error`, the detail again under the name CLIs before 0.9 read."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return {
        "type": PROBLEM_TYPE + kind,
        "title": title,
        "status": status,
        "detail": detail,
        "kind": kind,
        "error": detail,
    }


def answer(request: web.Request, status: int, message: str, kind: str) -> web.Response:
    """An error in the shape of its route: a problem document under /api/, else text."""
    if request.path.startswith("/api/"):
        return web.json_response(
            problem(status, message, kind), status=status, content_type=PROBLEM_JSON
        )
    return web.Response(status=status, text=message + "\n")


def _http_detail(request: web.Request, exc: web.HTTPException) -> str:
    """What aiohttp's own refusal means for this request, in words (its default text is just
    "404: Not Found")."""
    where = f"{request.method} {printable(request.path)}"
    text = (exc.text or "").strip()
    if text and text != f"{exc.status}: {exc.reason}":
        return text  # our own words (limits_middleware), or aiohttp's specific ones (413)
    if exc.status == 404:
        return f"no such admin API route: {where} (the routes: GET /api/v1/openapi.json)"
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        return f"{where}: method not allowed here; use {allowed or 'another method'}"
    return f"{where}: {exc.reason}"


# SQLSTATE classes that mean "the database cannot serve us now", not "this query is wrong":
# 08 connection exception, 53 insufficient resources, 55 object not in prerequisite state (e.g. a
# database not accepting connections), 57 operator intervention (shutdown, cannot connect now).
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "55", "57")


def _is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says the database is unreachable or refusing us."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OperationalError | PoolTimeoutError | ConnectionError | OSError):
            return True
        if isinstance(current, asyncio.TimeoutError):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES:
            return True
        current = current.__cause__ or getattr(current, "orig", None)
    return False


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not s for s in seen):
        seen.append(current)
        current = current.__cause__ or getattr(current, "orig", None)
    return seen


def _disk_error(exc: BaseException) -> int | None:
    """The errno of a full disk (or quota) anywhere in `exc`'s causes; else None."""
    for cause in _causes(exc):
        if isinstance(cause, OSError) and cause.errno in _DISK_FULL:
            return cause.errno
    return None


def _client_gone(request: web.Request, exc: BaseException) -> bool:
    """A connection error while the client's own connection is gone: the client hung up.

    A database's connection errors come wrapped by SQLAlchemy (DBAPIError) or from the pool;
    a bare ConnectionError with the request's transport closed is the host's socket.
    """
    transport = request.transport
    if transport is not None and not transport.is_closing():
        return False
    return isinstance(exc, ConnectionError) and not any(
        isinstance(c, DBAPIError | PoolTimeoutError) for c in _causes(exc)
    )


class LogThrottle:
    """At most one line per `every` seconds, counting the ones left out: while the database is
    down every request fails the same way, and a fleet's worth of identical ERROR lines (a
    thousand in three seconds, measured) buries the rest of the log."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.next_at = float("-inf")
        self.skipped = 0

    def allow(self, now: float) -> int | None:
        """None: leave this line out; otherwise how many were left out since the last one."""
        if now < self.next_at:
            self.skipped += 1
            return None
        skipped, self.skipped = self.skipped, 0
        self.next_at = now + self.every
        return skipped


# Per application (create_app sets it), so that one app's outage never silences another's.
OUTAGE_LOG = web.AppKey("outage_log", LogThrottle)


def error_answer(request: web.Request, exc: Exception) -> web.StreamResponse | None:
    """The answer to what a handler raised, or None when aiohttp should handle it as raised:
    its own HTTP answers outside the admin API, and every success or redirect.
    (nebula.web.edge calls this for every route.)"""
    if isinstance(exc, web.HTTPException):
        # aiohttp's own answers (unknown route 404, wrong method 405, body too large 413) in
        # the admin API's JSON shape; successes and redirects pass through as they are.
        if exc.status < 400 or not request.path.startswith("/api/"):
            return None
        response = answer(request, exc.status, _http_detail(request, exc), type(exc).__name__)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    if isinstance(exc, NebulaError):
        response = answer(request, exc.http_status, str(exc), type(exc).__name__)
        if exc.http_status == 401 and request.path.startswith("/api/"):
            response.headers["WWW-Authenticate"] = 'Bearer realm="nebula"'  # RFC 9110 11.6.1
        return response
    where = f"{request.method} {printable(request.path)}"
    if _client_gone(request, exc):
        # The host hung up (mid-body, say): it is no outage, and nobody will read this.
        log.info("client closed the connection during %s", where)
        return answer(request, 400, "client closed the connection", "ClientGone")
    if client_error(exc):
        # A body aiohttp cannot decode (a broken chunk, a gzip that is not): the client's.
        log.info("malformed request body on %s: %s", where, reason(exc))
        return answer(request, 400, f"malformed request body: {reason(exc)}", "BadBody")
    if (code := _disk_error(exc)) is not None:
        strerror = os.strerror(code)
        log.error("payload store: %s on %s", strerror, where)
        return answer(
            request,
            507,
            f"the payload store is out of space ({strerror}): free space on the payload "
            "disk, then upload again",
            "InsufficientStorage",
        )
    if _is_unavailable(exc):
        throttle = request.app.get(OUTAGE_LOG)
        skipped = 0 if throttle is None else throttle.allow(time.monotonic())
        if skipped is not None:
            more = f" ({skipped} more answered 503 since the last line)" if skipped else ""
            log.error("database unavailable on %s: %s%s", where, exc, more)
        response = answer(request, 503, "service unavailable, retry later", "Unavailable")
        response.headers["Retry-After"] = "60"
        return response
    log.exception("unexpected error on %s", where, exc_info=exc)
    return answer(request, 500, "internal error", "InternalError")
