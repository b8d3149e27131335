"""The admin API's OpenAPI document (issue 9, item 2): it lists exactly the router's /api/
routes, each with a @doc, its references resolve and its schemas are valid JSON Schema; and a
hypothesis-driven walk sends generated requests to every documented operation of a real server
and checks that every answer's status is documented, that its body is JSON, that errors are
problem documents and that successes match the documented schema.
"""

from __future__ import annotations

import json
import re
import string
from functools import partial
from typing import Any

import jsonschema
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nebula.web.openapi.document import PATH, UNDOCUMENTED
from tests.factories import Host
from tests.problem import check_problem
from tests.web.test_admin_api import STABLE_AMD64_ID, STABLE_ARM64_ID, add_external, auth
from tests.web.test_admin_security import ADMIN_READS

EXAMPLES = 25  # per operation: about 600 requests in all
WRITES = {"post", "put", "patch", "delete"}


def router_operations(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every /api/ route, read from the router here (not through
    the document's own helper, which would then be checked against itself)."""
    found = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or ""
        if path.startswith("/api/") and route.method != "HEAD":
            found.add((route.method.lower(), path))
    return found


def document_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m, p) for p, item in document["paths"].items() for m in item}


async def fetch_document(client: Any, token: str) -> dict[str, Any]:
    resp = await client.get(PATH, headers=auth(token))
    assert resp.status == 200, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def test_document_lists_exactly_the_routes(client: Any, viewer_token: str) -> None:
    """Catches a route left out of the document (or one documented that the router does not
    have), a route without a @doc, and a document a viewer may not read."""
    document = await fetch_document(client, viewer_token)
    assert document["openapi"] == "3.1.0"
    routes = router_operations(client.server.app)
    assert len(routes) >= 24, routes
    assert document_operations(document) == routes
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation["summary"] != UNDOCUMENTED, (method, path)
            assert operation["responses"], (method, path)
            # Every route needs a token; a write needs an admin's.
            assert "401" in operation["responses"], (method, path)
            admin_only = method in WRITES or (method.upper(), path) in ADMIN_READS
            assert ("403" in operation["responses"]) == admin_only, (method, path)
            names = set(re.findall(r"\{(\w+)\}", path))
            params = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert params == names, (method, path)
    resp = await client.get(PATH)
    assert resp.status == 401


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


async def test_document_references_resolve_and_schemas_are_valid(
    client: Any, viewer_token: str
) -> None:
    """Catches a $ref to a schema that does not exist and a schema JSON Schema refuses."""
    document = await fetch_document(client, viewer_token)
    for target in set(_refs(document)):
        node: Any = document
        assert target.startswith("#/"), target
        for part in target[2:].split("/"):
            assert part in node, target
            node = node[part]
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    for item in document["paths"].values():
        for operation in item.values():
            body = operation.get("requestBody", {}).get("content", {})
            for media in body.values():
                jsonschema.Draft202012Validator.check_schema(media["schema"])


# -- the walk ------------------------------------------------------------------------------------

JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)


WORDS = ["4152.2.3", "3815.2.0", "stable", "amd64", "1h", "Mon-Fri 02:00-05:00 UTC"]


def from_schema(
    schema: dict[str, Any], components: dict[str, Any], valid: bool
) -> st.SearchStrategy[Any]:
    """Values for a schema: plausible ones when `valid`, else also junk (any text, wrong types,
    unknown keys)."""
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kinds = schema.get("type")
    if isinstance(kinds, list):
        return st.one_of(*(from_schema({**schema, "type": k}, components, valid) for k in kinds))
    if kinds == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        values = {k: from_schema(v, components, valid) for k, v in props.items()}
        found = st.fixed_dictionaries(
            {k: v for k, v in values.items() if k in required},
            optional={k: v for k, v in values.items() if k not in required},
        )
        return found if valid else found | JUNK
    if kinds == "array":
        return st.lists(from_schema(schema.get("items", {}), components, valid), max_size=2)
    if kinds == "string":
        if "pattern" in schema:
            return st.integers(-3, 2000).map(str)
        return st.sampled_from(WORDS) if valid else st.sampled_from(WORDS) | st.text(max_size=12)
    if kinds == "integer":
        return st.integers(0, 100) if valid else st.integers(-3, 2**63)
    if kinds == "number":
        return st.floats(0, 100) if valid else st.floats(allow_nan=False)
    if kinds == "boolean":
        return st.booleans()
    if kinds == "null":
        return st.none()
    return st.none() if valid else JUNK


SEGMENT = st.text(
    alphabet=string.ascii_letters + string.digits + "-_.{}~ %",
    min_size=1,
    max_size=40,
)
KNOWN = {
    "ref": ["stable", "beta", "nosuch", STABLE_AMD64_ID, STABLE_ARM64_ID],
    "name": ["stable", "alpha", "nosuch"],
    "version": ["4152.2.3", "3815.2.0", "1.2"],
    "machine_id": ["0" * 32, "{" + "0" * 32 + "}"],
    "token_name": ["nosuch", "stable"],  # never the walk's own token: that would end the walk
}


@st.composite
def requests(
    draw: st.DrawFn, components: dict[str, Any], path: str, operation: dict[str, Any], package: str
) -> tuple[str, dict[str, Any]]:
    """One request to `operation` at `path`: mostly a plausible one, now and then junk."""
    valid = draw(st.integers(0, 3)) > 0
    concrete = path
    for name in re.findall(r"\{(\w+)\}", path):
        known = st.sampled_from([*KNOWN.get(name, []), *([package] if name == "id" else [])])
        value = draw(known if valid else known | SEGMENT)
        concrete = concrete.replace("{" + name + "}", value)
    params = {}
    for p in operation.get("parameters", []):
        if p["in"] == "query" and draw(st.booleans()):
            value = draw(from_schema(p["schema"], components, valid))
            params[p["name"]] = value if isinstance(value, str) else json.dumps(value)
    kwargs: dict[str, Any] = {"params": params}
    content = operation.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        kwargs["json"] = draw(from_schema(content["application/json"]["schema"], components, valid))
    elif content:
        kwargs["data"] = draw(st.binary(max_size=64))
        kwargs["headers"] = {"Content-Type": draw(st.sampled_from(sorted(content)))}
    return concrete, kwargs


def _tag(method: str, case: tuple[str, dict[str, Any]]) -> tuple[str, str, dict[str, Any]]:
    return (method, *case)


def _validator(schema: dict[str, Any], document: dict[str, Any]) -> jsonschema.Validator:
    # The components travel with the schema, so that "#/components/..." resolves in it.
    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


async def test_every_answer_is_documented(client: Any, admin_token: str) -> None:
    """Catches, over generated requests to every operation: a status the document does not
    list (a 500 first of all), a body that is not JSON, an error that is no problem document,
    and a success whose body does not match its documented schema."""
    document = await fetch_document(client, admin_token)
    package = await add_external(client, admin_token, version="4152.2.3")
    resp = await client.post("/v1/update/", data=Host(machine_id="0" * 32).check())
    assert resp.status == 200  # a host to show, hold, release and delete
    components = document["components"]["schemas"]
    cases: list[tuple[str, str, dict[str, Any]]] = []
    for path, item in sorted(document["paths"].items()):
        for method, operation in sorted(item.items()):

            @settings(
                max_examples=EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(requests(components, path, operation, package["id"]).map(partial(_tag, method)))
            def collect(case: tuple[str, str, dict[str, Any]]) -> None:
                cases.append(case)

            collect()
    seen: set[tuple[str, str]] = set()
    for method, path, kwargs in cases:
        headers = {**auth(admin_token), **kwargs.pop("headers", {})}
        resp = await client.request(method, path, headers=headers, **kwargs)
        raw = await resp.read()
        where = f"{method.upper()} {path} {kwargs} -> {resp.status}: {raw[:300]!r}"
        template = _template(document, method, path)
        assert template is not None, where
        responses = document["paths"][template][method]["responses"]
        assert str(resp.status) in responses, where
        seen.add((method, template))
        if method == "delete" and template == "/api/v1/instances/{machine_id}":
            await client.post("/v1/update/", data=Host(machine_id="0" * 32).check())  # again
        if resp.status == 204:
            assert raw == b"", where
            continue
        body = json.loads(raw)
        if resp.status >= 400:
            check_problem(resp.content_type, body, resp.status)
            continue
        assert resp.content_type == "application/json", where
        schema = responses[str(resp.status)]["content"]["application/json"]["schema"]
        errors = sorted(_validator(schema, document).iter_errors(body), key=str)
        assert not errors, (where, [e.message for e in errors[:3]])
    # The walk reached every operation, not only the first few.
    assert seen == document_operations(document), sorted(document_operations(document) - seen)


def _template(document: dict[str, Any], method: str, path: str) -> str | None:
    """The documented path template `path` falls under (the most literal one first)."""
    best: tuple[int, str] | None = None
    for template, item in document["paths"].items():
        if method not in item:
            continue
        pattern = "^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            score = -template.count("{")
            if best is None or score > best[0]:
                best = (score, template)
    return best[1] if best else None


pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
