"""Payload files for hosts: `GET`/`HEAD /v1/payloads/{package_id}/{name}` (under the secret
`omaha_prefix` when one is set), no token.

The URL ends in the file name because clients build it as codebase + name. aiohttp's
FileResponse does the HTTP work: one byte range (206, or 416 with the size), HEAD and
Content-Length; update_engine resumes downloads with `Range: bytes=N-`, and the bytes go out with
sendfile(2) (the kernel copies them; no Python loop touches them). Which file a URL names comes
from the catalog snapshot, so a download of a known file costs no database query.

The one validator is the strong ETag `"<sha256 hex>"` of the content, not FileResponse's
mtime-and-size: the same file has another mtime on every replica (and after a restore), and a
download resumed on another replica must see the same tag. So the conditional headers
(If-Match, If-None-Match, If-Range) are decided here against that tag, FileResponse is shown the
request without them, and no Last-Modified is sent (dates are per-replica facts too).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

from nebula.store.db import transaction
from nebula.store.packages import find_delta_extension, find_file, is_file_name
from nebula.web.edge import add_prepare_hook
from nebula.web.keys import BLOBS, CATALOG, METRICS, READ_SESSIONS, SETTINGS

# Routes whose answers are payload files (counted by count_payload_requests): update
# payloads, release files of first boots, sysext images and their index.
PAYLOAD_PATHS = ("/v1/payloads/", "/v1/release/", "/v1/extensions/")
_UUID_CHARS = frozenset("0123456789abcdef-")
_CACHE_CONTROL = "public, max-age=31536000, immutable"
# What FileResponse must not see: it would decide them by the file's mtime.
_CONDITIONALS = (
    hdrs.IF_MATCH,
    hdrs.IF_NONE_MATCH,
    hdrs.IF_MODIFIED_SINCE,
    hdrs.IF_UNMODIFIED_SINCE,
    hdrs.IF_RANGE,
)


def _listed(header: str | None, etag: str, *, weak: bool) -> bool:
    """Whether `etag` is in an If-Match/If-None-Match list (or the list is `*`).

    The weak comparison (If-None-Match) ignores a `W/` prefix; the strong one (If-Match) never
    matches a weak tag. Our tags hold only hex digits, so splitting on commas is exact.
    """
    if header is None:
        return False
    for raw in header.split(","):
        tag = raw.strip()
        if tag == "*":
            return True
        if tag.startswith("W/"):
            if not weak:
                continue
            tag = tag[2:]
        if tag == etag:
            return True
    return False


class PayloadFileResponse(web.FileResponse):
    """A FileResponse for a content-addressed file whose ETag is its SHA-256 (see above).

    `on_sent` is told how many bytes of the file went out, once the body is done or broke off:
    asyncio's sendfile leaves the file's position after the last byte it handed to the socket,
    even when the client went away midway (and aiohttp's fallback, which reads the file in
    chunks, leaves it after the last chunk written). A download aborted after a megabyte counts
    a megabyte, not its Content-Length."""

    def __init__(
        self, path: Path, sha256_hex: str, on_sent: Callable[[int], None] = lambda _: None
    ) -> None:
        super().__init__(path, chunk_size=256 * 1024)
        self.validator = f'"{sha256_hex}"'
        self._on_sent = on_sent

    async def _sendfile(
        self, request: web.BaseRequest, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        try:
            return await super()._sendfile(request, fobj, offset, count)
        finally:
            # Nothing sent leaves the position where it was (at 0, or before `offset`).
            sent = min(count, fobj.tell() - offset)
            if sent > 0:
                self._on_sent(sent)

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return await super().prepare(request)
        headers = CIMultiDict(request.headers)
        for name in _CONDITIONALS:
            headers.popall(name, None)
        # If-Range (RFC 9110 13.1.5): the range only if the tag matches strongly; a date (or a
        # weak or foreign tag) cannot prove the client holds these bytes, so all of them.
        if_range = request.headers.get(hdrs.IF_RANGE)
        if if_range is not None and if_range.strip() != self.validator:
            headers.popall(hdrs.RANGE, None)
        # A range unit other than bytes (or none) must be ignored (RFC 9110 14.2), not refused
        # with a 416 as FileResponse would: the client gets the whole file.
        ranges = request.headers.get(hdrs.RANGE)
        if ranges is not None and ranges.partition("=")[0].strip().lower() != "bytes":
            headers.popall(hdrs.RANGE, None)
        return await super().prepare(request.clone(headers=headers))


async def handle_payload(request: web.Request) -> web.StreamResponse:
    package_id = request.match_info["package_id"]
    name = request.match_info["name"]
    # Requests are counted once, by count_payload_requests (404s included: HTTPNotFound is prepared
    # like any response), not here.
    # Neither a query nor a log line for what cannot be a stored file: a NUL (x%00) would
    # reach PostgreSQL's driver and fail there, and other control characters the log.
    if len(package_id) != 36 or not set(package_id) <= _UUID_CHARS or not is_file_name(name):
        raise web.HTTPNotFound(text="no such payload\n")
    sha256 = await _stored_sha256(request, package_id, name)
    return serve_blob(request, sha256, name, "no such payload\n")


def serve_blob(
    request: web.Request, sha256: str | None, name: str, missing: str
) -> web.StreamResponse:
    """The stored file `sha256` as download `name`: 200/206/304/412/416 as above, or a 404
    saying `missing` when there is no such file (or its blob is gone)."""
    blobs = request.app[BLOBS]
    # The blob is checked as well: a package deleted on another replica lingers in this
    # process's catalog for up to cache_ttl, its file does not.
    if sha256 is None or not blobs.exists(sha256):
        raise web.HTTPNotFound(text=missing)
    etag = f'"{sha256}"'
    if request.headers.get(hdrs.IF_MATCH) is not None and not _listed(
        request.headers.get(hdrs.IF_MATCH), etag, weak=False
    ):
        raise web.HTTPPreconditionFailed(headers={hdrs.ETAG: etag})
    if _listed(request.headers.get(hdrs.IF_NONE_MATCH), etag, weak=True):
        return web.Response(
            status=304, headers={hdrs.ETAG: etag, hdrs.CACHE_CONTROL: _CACHE_CONTROL}
        )
    metrics = request.app[METRICS]
    response = PayloadFileResponse(blobs.path(sha256), sha256, metrics.payload_bytes.inc)
    response.headers[hdrs.CACHE_CONTROL] = _CACHE_CONTROL
    response.headers[hdrs.CONTENT_DISPOSITION] = f'attachment; filename="{name}"'
    response.content_type = "application/octet-stream"
    return response


async def _stored_sha256(request: web.Request, package_id: str, name: str) -> str | None:
    """The SHA-256 of a file in the payload store, from the catalog's file map: no query.

    Only a file the catalog does not know costs one: a package uploaded on another replica is
    missing here for up to cache_ttl, while a host may already have its URL from that replica.
    """
    catalog = await request.app[CATALOG].get()
    sha256 = catalog.stored_files.get((package_id, name))
    if sha256 is not None:
        return sha256
    async with transaction(request.app[READ_SESSIONS]) as session:
        file = await find_file(session, package_id, name)
        if file is None:
            # A delta is offered with its target's extensions under its own codebase.
            return await find_delta_extension(session, package_id, name)
    return file.sha256 if file.stored else None


def own_validator(request: web.Request, response: web.StreamResponse) -> None:
    """A prepare hook (nebula.web.edge): FileResponse writes its mtime-based ETag and
    Last-Modified just before the headers go out; put the content's tag back and drop the
    date."""
    if isinstance(response, PayloadFileResponse):
        response.headers[hdrs.ETAG] = response.validator
        response.headers.pop(hdrs.LAST_MODIFIED, None)


def count_payload_requests(request: web.Request, response: web.StreamResponse) -> None:
    """A prepare hook (nebula.web.edge): count the requests of payload routes by status: the
    payloads of update checks, the release files of first boots and the sysext images hosts
    fetch alike (under the secret prefix when one is set). Their bytes are counted as they go
    out (PayloadFileResponse)."""
    if request.method != "GET":  # every host's check-in is a POST: the cheap test first
        return
    path = request.path
    prefix = request.app[SETTINGS].omaha_prefix
    if prefix and path.startswith(prefix + "/"):
        path = path[len(prefix) :]
    if path.startswith(PAYLOAD_PATHS):
        request.app[METRICS].payload_requests.labels(status=str(response.status)).inc()


def add_routes(app: web.Application) -> None:
    # Under the secret prefix when one is set, as the codebases in the answers say.
    prefix = app[SETTINGS].omaha_prefix
    app.router.add_get(f"{prefix}/v1/payloads/{{package_id}}/{{name}}", handle_payload)
    add_prepare_hook(app, own_validator)
    add_prepare_hook(app, count_payload_requests)
