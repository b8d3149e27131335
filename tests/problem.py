"""What every admin API error must look like: an RFC 9457 problem document.

Shared by the API tests: `check_problem` asserts the media type and the members, so a route (or
a middleware) that answers an error in any other shape fails wherever it is exercised.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from nebula.web.errors import PROBLEM_JSON, PROBLEM_TYPE

MEMBERS = {"type", "title", "status", "detail", "kind", "error"}


def check_problem(content_type: str, body: Any, status: int, kind: str | None = None) -> str:
    """Assert a problem document for `status` (and of `kind`, if given); return its detail."""
    assert content_type == PROBLEM_JSON, (content_type, body)
    assert isinstance(body, dict) and set(body) == MEMBERS, body
    assert body["status"] == status, body
    assert body["title"] == HTTPStatus(status).phrase, body
    assert isinstance(body["detail"], str) and body["detail"].strip(), body
    assert body["error"] == body["detail"], body  # the name older CLIs read
    assert body["type"] == PROBLEM_TYPE + body["kind"], body
    if kind is not None:
        assert body["kind"] == kind, body
    return str(body["detail"])
