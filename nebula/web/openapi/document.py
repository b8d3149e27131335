"""The OpenAPI 3.1 document of the admin API, built from the router's own routes, served at
GET /api/v1/openapi.json (a token is needed, as everywhere under /api/; a viewer may read it).

Every /api/ route is in the document because the document is made from the router: a route
that has no `@doc` beside its handler is listed with a summary that says so, and
tests/web/test_openapi.py fails on it. What every route of a kind answers is added here, from
the route's shape, rather than repeated on each handler.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from nebula import __version__
from nebula.web.errors import PROBLEM_JSON
from nebula.web.openapi.spec import SCHEMAS, STR, Doc, doc, doc_of, ref

PATH = "/api/v1/openapi.json"
UNDOCUMENTED = "UNDOCUMENTED: this route has no @doc beside its handler"

# What a path parameter names, by its name in the route.
PATH_PARAMETERS = {
    "ref": "a group: its name (with ?arch= when both arches have it) or its id",
    "name": "a channel's name",
    "id": "a package's id",
    "machine_id": "a host's machine id (braces and capitals are accepted)",
    "version": "an OS version, e.g. 4152.2.3",
    "token_name": "an API token's name",
}

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_WRITES = ("POST", "PUT", "PATCH", "DELETE")


def api_routes(app: web.Application) -> list[tuple[str, str, Any]]:
    """(method, path template, handler) of every /api/ route, HEAD (aiohttp's twin of each
    GET) left out."""
    found = []
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/api/") and route.method not in ("HEAD", "*"):
            found.append((route.method, path, route.handler))
    return found


def _errors(method: str, path: str, declared: Doc) -> set[int]:
    """What a route answers besides success, from its shape and its Doc."""
    statuses = {401, 429, 503, *declared.errors}  # every route: token, rate limit, database
    if method in _WRITES:
        statuses |= {403}
    if declared.body is not None:
        statuses |= {400, 413}
    if declared.query:
        statuses |= {400}
    if _PLACEHOLDER.search(path):
        statuses |= {404}
    return statuses


def _operation(method: str, path: str, handler: Any) -> dict[str, Any]:
    declared = doc_of(handler) or Doc(UNDOCUMENTED, None)
    name = getattr(handler, "__name__", "handler")
    operation: dict[str, Any] = {
        "operationId": name,
        "summary": declared.summary,
        "security": [{"token": []}],
    }
    if declared.description:
        operation["description"] = declared.description
    parameters = [
        {
            "name": p,
            "in": "path",
            "required": True,
            "schema": STR,
            "description": PATH_PARAMETERS.get(p, p),
        }
        for p in _PLACEHOLDER.findall(path)
    ]
    parameters += [
        {"name": q, "in": "query", "required": False, "schema": schema}
        for q, schema in declared.query.items()
    ]
    if parameters:
        operation["parameters"] = parameters
    if declared.body is not None:
        operation["requestBody"] = {
            "required": declared.body_required,
            "content": {declared.body_media: {"schema": declared.body}},
        }
    success: dict[str, Any] = {"description": declared.summary}
    if declared.answer is not None:
        success["content"] = {"application/json": {"schema": declared.answer}}
    responses: dict[str, Any] = {str(declared.status): success}
    for status in sorted(_errors(method, path, declared)):
        responses[str(status)] = {"$ref": "#/components/responses/Problem"}
    operation["responses"] = responses
    return operation


def build_document(app: web.Application) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, handler in api_routes(app):
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, handler)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Nebula admin API",
            "version": __version__,
            "description": (
                "Nebula's admin API. Every route needs `Authorization: Bearer <token>`; a "
                "viewer token may read (GET), an admin token may also change. Every error is "
                "an RFC 9457 problem document (application/problem+json)."
            ),
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": SCHEMAS,
            "responses": {
                "Problem": {
                    "description": "An error, as an RFC 9457 problem document",
                    "content": {PROBLEM_JSON: {"schema": ref("Problem")}},
                }
            },
            "securitySchemes": {
                "token": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a token from `nebula token create`",
                }
            },
        },
        "security": [{"token": []}],
    }


routes = web.RouteTableDef()


@routes.get(PATH)
@doc("This document: the admin API in OpenAPI 3.1", ref("OpenApi"))
async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(build_document(request.app))


def add_routes(app: web.Application) -> None:
    app.router.add_routes(routes)
