"""The admin API of sysext hosting, under /api/v1/sysext (token; viewer reads, admin writes):

    GET    /api/v1/sysext/images[?name=EXT]                  images, with the groups they are in
    POST   /api/v1/sysext/images?file=FILE[&ext=EXT]         upload: the raw image as the body
    DELETE /api/v1/sysext/images/{name}/{version}[?arch=A]   forget (409 while promoted)
    POST   /api/v1/sysext/promotions   {name, version, group, arch?}   offer to a group
    DELETE /api/v1/sysext/promotions   {name, version, group, arch?}   take back

The token check is the admin API's middleware (nebula.web.api). An upload's file name is checked
before a byte is read, the body streams to the payload store (nebula.sysext.ingest) and is moved
into place before the row is written, so a recorded image always has its bytes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from nebula.errors import InvalidInputError, NebulaError
from nebula.store.db import transaction
from nebula.store.models import SysextImage
from nebula.sysext import store
from nebula.sysext.ingest import receive
from nebula.sysext.names import ImageName, check_image_arch, parse_image_name
from nebula.web.api import actor, change, json_body, opt, req
from nebula.web.keys import BLOBS, CLOCK, READ_SESSIONS, SETTINGS
from nebula.web.openapi.spec import PROMOTION_BODY, STR, SYSEXT_ARCH, array, doc, listing, obj, ref
from nebula.web.serialize import iso

log = logging.getLogger(__name__)

routes = web.RouteTableDef()


def image_json(image: SysextImage, groups: tuple[str, ...], base_url: str) -> dict[str, Any]:
    file_name = ImageName(image.name, image.version, image.arch).file_name
    return {
        "name": image.name,
        "version": image.version,
        "arch": image.arch,
        "file": file_name,
        "sha256": image.sha256,
        "size": image.size,
        "created_at": iso(image.created_at),
        "created_by": image.created_by,
        "groups": list(groups),
        "urls": [f"{base_url}/v1/extensions/{g}/{image.name}/{file_name}" for g in groups],
    }


def _arch(raw: str | None) -> str | None:
    return None if raw is None else check_image_arch(raw)


@routes.get("/api/v1/sysext/images")
@doc(
    "List the sysext images and the groups each is promoted to",
    listing("images", ref("SysextImage")),
)
async def list_images(request: web.Request) -> web.Response:
    base = request.app[SETTINGS].host_base_url
    async with transaction(request.app[READ_SESSIONS]) as session:
        rows = await store.list_images(session, request.query.get("name") or None)
        return web.json_response({"images": [image_json(r.image, r.tracks, base) for r in rows]})


async def _chunks(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(256 * 1024):
        yield chunk


async def _drain(request: web.Request) -> None:
    """Read what the client still sends, so that it gets our error instead of a reset."""
    while await request.content.readany():
        pass


@routes.post("/api/v1/sysext/images")
@doc(
    "Upload a sysext image (the body is the image itself)",
    ref("SysextImage"),
    status=201,
    query={"file": STR, "ext": STR},
    body={"type": "string", "contentMediaType": "application/octet-stream"},
    body_media="application/octet-stream",
    body_required=True,
    errors=(409,),
)
async def upload_image(request: web.Request) -> web.Response:
    blobs = request.app[BLOBS]
    try:
        file_name = request.query.get("file", "")
        if not file_name:
            raise InvalidInputError("give the image's file name: ?file=<ext>-<version>-<arch>.raw")
        image = parse_image_name(file_name, request.query.get("ext") or None)
        if request.content_type.startswith("multipart/"):
            raise InvalidInputError("send the image itself as the body, not multipart form data")
        # Refuse a taken name before reading a byte (add_image checks again at the end).
        async with transaction(request.app[READ_SESSIONS]) as session:
            await store.check_new_image(session, image)
    except NebulaError:
        await _drain(request)
        raise
    received = await receive(_chunks(request), blobs)
    if received.size == 0:
        blobs.discard(received.temp)
        raise InvalidInputError(f"{file_name}: the image is empty")
    try:
        blobs.commit(received.temp, received.sha256)
    except BaseException:
        blobs.discard(received.temp)
        raise
    row = await change(
        request,
        lambda s: store.add_image(
            s, image, received.sha256, received.size, actor(request), request.app[CLOCK]()
        ),
    )
    log.info("sysext %s uploaded by %s", image.file_name, actor(request))
    return web.json_response(image_json(row, (), request.app[SETTINGS].host_base_url), status=201)


@routes.delete("/api/v1/sysext/images/{name}/{version}")
@doc(
    "Delete a sysext image promoted to no group",
    obj({"deleted": array(ref("SysextImage"))}),
    query={"arch": SYSEXT_ARCH},
    errors=(409,),
)
async def delete_image(request: web.Request) -> web.Response:
    name, version = request.match_info["name"], request.match_info["version"]
    arch = _arch(request.query.get("arch") or None)
    deleted = await change(request, lambda s: store.delete_image(s, name, version, arch))
    base = request.app[SETTINGS].host_base_url
    return web.json_response({"deleted": [image_json(i, (), base) for i in deleted]})


async def _promotion(request: web.Request) -> tuple[str, str, str, str | None]:
    data = await json_body(request)
    return req(data, "name"), req(data, "version"), req(data, "group"), _arch(opt(data, "arch"))


@routes.post("/api/v1/sysext/promotions")
@doc(
    "Promote a sysext version to a group (it joins the group's SHA256SUMS)",
    ref("SysextPromotion"),
    body=PROMOTION_BODY,
    body_required=True,
    errors=(404, 409),
)
async def promote(request: web.Request) -> web.Response:
    name, version, group, arch = await _promotion(request)
    now = request.app[CLOCK]()
    track, images = await change(
        request,
        lambda s: store.promote(s, name, version, group, arch, actor(request), now),
    )
    log.info("sysext %s %s promoted to %s by %s", name, version, track, actor(request))
    base = request.app[SETTINGS].host_base_url
    return web.json_response(
        {
            "group": track,
            "index": f"{base}/v1/extensions/{track}/{name}/SHA256SUMS",
            "images": [ImageName(i.name, i.version, i.arch).file_name for i in images],
        }
    )


@routes.delete("/api/v1/sysext/promotions")
@doc(
    "Take a sysext version out of a group's index",
    ref("SysextDemotion"),
    body=PROMOTION_BODY,
    body_required=True,
    errors=(404,),
)
async def demote(request: web.Request) -> web.Response:
    name, version, group, arch = await _promotion(request)
    track, removed = await change(request, lambda s: store.demote(s, name, version, group, arch))
    log.info("sysext %s %s demoted from %s by %s", name, version, track, actor(request))
    return web.json_response({"group": track, "removed": removed})


def add_routes(app: web.Application) -> None:
    app.router.add_routes(routes)
