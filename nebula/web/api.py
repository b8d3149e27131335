"""What every admin API route shares: the token check, the acting principal, JSON bodies, and
`change`, which runs a change in one transaction together with the catalog stamp bump.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from nebula.config import split_listen
from nebula.errors import (
    AuthError,
    ForbiddenError,
    InvalidInputError,
    NebulaError,
    RequestTooLargeError,
)
from nebula.store.catalog import bump_stamp
from nebula.store.db import transaction
from nebula.store.tokens import Principal, authenticate, touch
from nebula.web.errors import answer
from nebula.web.forwarded import Network, client_address
from nebula.web.keys import (
    AUTH_FAILURES,
    CATALOG,
    CLOCK,
    READ_SESSIONS,
    SESSIONS,
    SETTINGS,
    TRUSTED_PROXIES,
)
from nebula.web.limits import bounded

log = logging.getLogger(__name__)
PRINCIPAL = web.RequestKey("principal", Principal)
MAX_JSON = 1 << 20


ADMIN_PATHS = ("/api/", "/metrics")


def listener_refusal(request: web.Request) -> web.Response | None:
    """With admin_listen set, the admin API and /metrics answer only on that listener: the
    answer to such a request elsewhere, or None to go on.

    Elsewhere they are a 404 that says so (a bare "Not Found" sends an operator whose CLI points
    at the public port looking for a broken server). The admin address itself is not named:
    hosts reach this port too.
    """
    admin = request.app[SETTINGS].admin_listen
    if admin and request.path.startswith(ADMIN_PATHS):
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        port = sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else None
        if port != split_listen(admin)[1]:
            return answer(
                request,
                404,
                f"{request.path} is served on the admin listener (nebula serve --admin-listen), "
                "not on this port: point the CLI's --server or NEBULA_URL at that address",
                "AdminListenerError",
            )
    return None


async def authorize(request: web.Request) -> web.Response | None:
    """An /api/ request's token: it must name a principal, and only admins may change
    anything (AuthError, ForbiddenError). The principal is kept on the request; None to go
    on, or the answer to an address that sent too many bad tokens (429 for a while,
    nebula.web.ratelimit)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("the admin API needs 'Authorization: Bearer <token>'")
    limiter = request.app[AUTH_FAILURES]
    proxies: tuple[Network, ...] = request.app[TRUSTED_PROXIES]
    address = (
        client_address(request.remote, request.headers.get("X-Forwarded-For"), proxies) or "unknown"
    )
    now = request.app[CLOCK]().timestamp()
    if (wait := limiter.retry_after(address, now)) is not None:
        response = answer(
            request,
            429,
            f"too many bad tokens from {address}: try again in {wait} s",
            "TooManyAttempts",
        )
        response.headers["Retry-After"] = str(wait)
        return response
    async with transaction(request.app[READ_SESSIONS]) as session:
        principal = await authenticate(session, token.strip())
    if principal is None:
        limiter.fail(address, now)
        raise AuthError("unknown or revoked token")
    await _note_use(request, principal)
    if request.method not in ("GET", "HEAD") and not principal.can_write:
        raise ForbiddenError(f"token {principal.name} has role {principal.role}: read only")
    request[PRINCIPAL] = principal
    return None


async def _note_use(request: web.Request, principal: Principal) -> None:
    """Keep the token's last-used time, to the minute (nebula.store.tokens.touch): a write
    only when the time read with the token is a minute behind. Bookkeeping: a failure to
    write it is logged, and the request goes on."""
    now = request.app[CLOCK]()
    if principal.token_id is None or not principal.stale(now):
        return
    try:
        async with transaction(request.app[SESSIONS]) as session:
            await touch(session, principal.token_id, now)
    except (SQLAlchemyError, OSError, NebulaError) as exc:
        log.warning("cannot note the use of token %s: %s", principal.name, exc)


# What every admin answer says to a browser that should never render or keep it: it is data,
# not a page; not to be framed, cached or sniffed into something else.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """A prepare hook (nebula.web.edge): SECURITY_HEADERS on every /api/ answer, errors
    included."""
    if request.path.startswith("/api/"):
        response.headers.update(SECURITY_HEADERS)


def actor(request: web.Request) -> str:
    principal: Principal = request[PRINCIPAL]
    return principal.name


async def json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_JSON:
        raise RequestTooLargeError(
            f"the JSON body is {request.content_length} bytes, over the limit of {MAX_JSON}"
        )
    try:
        # read() gets the whole body (a single content.read(n) may return only part of it);
        # the app's client_max_size bounds it.
        data = json.loads(await bounded(request, request.read()) or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise InvalidInputError("body is not JSON Nebula reads: nested too deep") from None
    if not isinstance(data, dict):
        raise InvalidInputError("body must be a JSON object")
    if _has_nul(data):
        # No field Nebula stores may hold one, and PostgreSQL refuses it in text (a 500).
        raise InvalidInputError("body has a NUL character (\\u0000) in it")
    return data


def _has_nul(value: Any) -> bool:
    # A loop, not recursion: the body may nest as deep as the JSON parser allows.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and "\x00" in item:
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def opt(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"{key} must be a string")
    return value


def req(data: dict[str, Any], key: str) -> str:
    value = opt(data, key)
    if value is None:
        raise InvalidInputError(f"{key} is required")
    return value


async def change(request: web.Request, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run an admin change in one transaction with the stamp bump; refresh the catalog."""
    async with transaction(request.app[SESSIONS]) as session:
        result = await work(session)
        await bump_stamp(session)
    request.app[CATALOG].invalidate()
    return result


# -- identity ------------------------------------------------------------------------------------
