"""Payload files for hosts: `GET`/`HEAD /v1/payloads/{package_id}/{name}`, no token.

The URL ends in the file name because clients build it as codebase + name. aiohttp's
FileResponse does the HTTP work: one byte range (206, or 416 with the size), HEAD, Content-Length,
ETag and conditional requests; update_engine resumes downloads with `Range: bytes=N-`.
"""

from __future__ import annotations

from aiohttp import web

from nebula.store.db import transaction
from nebula.store.packages import find_file
from nebula.web.keys import BLOBS, METRICS, READ_SESSIONS

_UUID_CHARS = frozenset("0123456789abcdef-")


async def handle_payload(request: web.Request) -> web.StreamResponse:
    package_id = request.match_info["package_id"]
    name = request.match_info["name"]
    # Requests are counted once, by count_payload_bytes (404s included: HTTPNotFound is prepared
    # like any response), not here.
    if len(package_id) != 36 or not set(package_id) <= _UUID_CHARS:
        raise web.HTTPNotFound(text="no such payload\n")
    async with transaction(request.app[READ_SESSIONS]) as session:
        file = await find_file(session, package_id, name)
    blobs = request.app[BLOBS]
    if file is None or not file.stored or not blobs.exists(file.sha256):
        raise web.HTTPNotFound(text="no such payload\n")
    response = web.FileResponse(blobs.path(file.sha256), chunk_size=256 * 1024)
    response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    response.headers["Content-Disposition"] = f'attachment; filename="{file.name}"'
    response.content_type = "application/octet-stream"
    return response


async def count_payload_bytes(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: count what payload routes send (the range, not the whole file)."""
    if request.path.startswith("/v1/payloads/") and request.method == "GET":
        metrics = request.app[METRICS]
        metrics.payload_requests.labels(status=str(response.status)).inc()
        if response.status in (200, 206) and response.content_length:
            metrics.payload_bytes.inc(response.content_length)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/payloads/{package_id}/{name}", handle_payload)
    app.on_response_prepare.append(count_payload_bytes)
