"""One access line per request, and the request-duration histogram, both written from aiohttp's
access-log hook (`RequestLog`): it is called once the answer's last byte went out, with the
final status (a payload FileResponse decides 200, 206, 304 or 416 only as it starts sending,
after every middleware has returned) and the whole duration.

- The request id is the client's `X-Request-Id` when it is sane (1 to 128 letters, digits and
  `._:-`; a proxy's id then follows the request through), otherwise a fresh one; every answer
  echoes it (`echo_request_id`, a prepare hook of nebula.web.edge, so that errors and payload
  files carry it too).
- The route is the pattern the request matched (`/v1/payloads/{package_id}/{name}`), never the
  raw path: a label of the histogram, and bounded. Unmatched requests are "unmatched".
- Never a header, a query string or a body: tokens travel in headers, hosts' data in bodies.
  The host's machine id of an Omaha request (`note_machine_id`) is logged, escaped and cut.

Imports nebula.metrics and nebula.web.keys and nebula.web.logs only.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from nebula.web.keys import METRICS
from nebula.web.logs import printable

log = logging.getLogger("nebula.access")

REQUEST_ID_HEADER = "X-Request-Id"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_MACHINE_KEY = web.RequestKey("nebula_machine_id", str)
MACHINE_ID_LOGGED = 64  # characters of a host's machine id kept in its line
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


class _Ids:
    """Fresh request ids: 16 random hex digits per process, then a 16-digit counter (32 hex
    digits, as a uuid4's). uuid4 cost a system call for randomness on every request, 4% of a
    steady check-in's CPU; these are unique all the same, across workers too (each process
    draws its own prefix, again after a fork)."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = secrets.token_hex(8)
        self.counter = itertools.count(1)

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


_FRESH = _Ids()


def _given_or_fresh(request: web.BaseRequest) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if given and _SANE_ID.fullmatch(given) else _FRESH.next()


def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """A prepare hook (nebula.web.edge): every answer names its request id. The access line
    reads it back from the answer (`logged_id`): nothing is kept on the request, whose
    mapping costs an exception for every key it lacks."""
    response.headers[REQUEST_ID_HEADER] = _given_or_fresh(request)


def logged_id(request: web.BaseRequest, response: web.StreamResponse) -> str:
    """The id the answer named, or for an answer no hook saw (aiohttp's own, to a request
    that never reached the application) the client's or a fresh one."""
    return response.headers.get(REQUEST_ID_HEADER) or _given_or_fresh(request)


def note_machine_id(request: web.BaseRequest, machine_id: str | None) -> None:
    """The host an Omaha request came from, for its access line."""
    if machine_id:
        # Escaped only if a line is written (RequestLog): not on every check-in.
        request[_MACHINE_KEY] = machine_id


def _routed(request: web.BaseRequest) -> web.Request | None:
    """The request as the application saw it; None for what never reached it (bad HTTP)."""
    try:
        if isinstance(request, web.Request) and request.match_info is not None:
            return request
    except (AttributeError, AssertionError):  # aiohttp asserts that routing has happened
        pass
    return None


def route_of(request: web.BaseRequest) -> str:
    """The pattern of the route the request matched, or "unmatched" (404, 405, bad HTTP)."""
    routed = _routed(request)
    info = routed.match_info if routed is not None else None
    resource = getattr(getattr(info, "route", None), "resource", None)
    if resource is None:
        return UNMATCHED
    return str(resource.canonical)


def method_of(request: web.BaseRequest) -> str:
    return request.method if request.method in METHODS else "other"


class RequestLog(AbstractAccessLogger):
    """aiohttp's access logger: the histogram always, the line when INFO is on."""

    @property
    def enabled(self) -> bool:
        return True  # the histogram needs every request, whatever the log level

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        try:
            route, method = route_of(request), method_of(request)
            routed = _routed(request)
            if routed is not None and METRICS in routed.app:
                routed.app[METRICS].observe_http(route, method, time)
            if not log.isEnabledFor(logging.INFO):
                return
            fields: dict[str, Any] = {
                "request_id": logged_id(request, response),
                "method": method,
                "route": route,
                "status": response.status,
                "duration_ms": round(time * 1000, 3),
                "bytes": response.body_length,
                "peer": printable(request.remote or ""),
            }
            machine = request.get(_MACHINE_KEY)
            if machine:
                fields["machine_id"] = printable(machine[:MACHINE_ID_LOGGED])
            text = " ".join(f"{k}={v}" for k, v in fields.items())
            log.info("%s", text, extra={"fields": fields})
        except Exception:
            log.exception("cannot log a request")
