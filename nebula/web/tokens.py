"""Admin API for API tokens: list, create (the secret is in that answer and nowhere else
ever after), revoke. Admins only, reading included: a viewer learns no token's name.
Every change is written to the activity log under the acting token's name.

The same operations work on the database directly (`nebula token ... --db`): the first token
has to come from somewhere.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from nebula.errors import ForbiddenError, InvalidInputError
from nebula.store import tokens as token_store
from nebula.store.db import transaction
from nebula.store.models import ApiToken
from nebula.store.tokens import Principal
from nebula.web.api import PRINCIPAL, actor, change, json_body
from nebula.web.keys import CLOCK, READ_SESSIONS
from nebula.web.openapi.spec import STR, doc, listing, obj, ref
from nebula.web.serialize import iso

routes = web.RouteTableDef()
ROLE = {"type": "string", "enum": list(token_store.ROLES)}


def _admin_only(request: web.Request) -> None:
    principal: Principal = request[PRINCIPAL]
    if not principal.can_write:
        raise ForbiddenError(
            f"token {principal.name} has role {principal.role}: tokens are for admins"
        )


def token_json(token: ApiToken) -> dict[str, Any]:
    return {
        "name": token.name,
        "role": token.role,
        "created_at": iso(token.created_at),
        "last_used_at": iso(token.last_used_at),
        "revoked_at": iso(token.revoked_at),
    }


@routes.get("/api/v1/tokens")
@doc(
    "List API tokens: name, role, created, last used (to the minute), revoked (admins only)",
    listing("tokens", ref("Token")),
    errors=(403,),
)
async def list_tokens(request: web.Request) -> web.Response:
    _admin_only(request)
    async with transaction(request.app[READ_SESSIONS]) as session:
        found = await token_store.list_tokens(session)
        return web.json_response({"tokens": [token_json(t) for t in found]})


@routes.post("/api/v1/tokens")
@doc(
    "Create a token; the answer holds its secret, shown this once",
    ref("TokenCreated"),
    status=201,
    body=obj({"name": STR}, {"role": ROLE}),
    body_required=True,
    errors=(409,),
)
async def create_token(request: web.Request) -> web.Response:
    data = await json_body(request)
    name = token_store.check_token_name(data.get("name"))
    role = data.get("role", "viewer")
    if role not in token_store.ROLES:
        raise InvalidInputError(f"role must be one of {', '.join(token_store.ROLES)}")
    now = request.app[CLOCK]()
    secret = await change(
        request, lambda s: token_store.create_token(s, name, role, now, actor(request))
    )
    return web.json_response(
        {"name": name, "role": role, "created_at": iso(now), "token": secret}, status=201
    )


@routes.delete("/api/v1/tokens/{token_name}")
@doc("Revoke a token at once", ref("Token"), errors=(409,))
async def revoke_token(request: web.Request) -> web.Response:
    name = request.match_info["token_name"]
    now = request.app[CLOCK]()

    async def work(session: Any) -> dict[str, Any]:
        token = await token_store.revoke_named(session, name, now, actor(request))
        return token_json(token)

    return web.json_response(await change(request, work))


def add_routes(app: web.Application) -> None:
    app.router.add_routes(routes)
