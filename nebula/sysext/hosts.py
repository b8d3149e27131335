"""What hosts fetch, no token: `GET`/`HEAD /v1/extensions/{group}/{ext}/SHA256SUMS` and the
images beside it, the `Path=` of the sysupdate transfer file `nebula host-config` writes.

`{group}` is the track the host sends (GROUP= in update.conf). The index lists exactly the
images of `{ext}` promoted to that track, both arches, in sha256sum format; an image is served
only to a track it is promoted to, so a group only sees what was promoted to it. A track
without a promoted image of `{ext}` is a 404, as is every name that cannot be one (checked
before any query: a NUL or a '..' never reaches the database). The images go out through the
payload route's serve_blob (Range, HEAD, strong ETag of the content, 304/412/416).

The index costs one indexed query: sysupdate asks for it once per timer run per host, far from
the Omaha check's rate, and a promotion is then seen at once on every replica.
"""

from __future__ import annotations

from aiohttp import web

from nebula.errors import InvalidInputError
from nebula.provisioning.spec import check_group
from nebula.store.db import transaction
from nebula.sysext.names import INDEX, ImageName, is_ext_name, parse_image_name, render_index
from nebula.sysext.store import promoted_images
from nebula.web.keys import READ_SESSIONS, SETTINGS
from nebula.web.payloads import serve_blob

_MISSING = "no such sysext image in this group\n"


async def handle_extension_file(request: web.Request) -> web.StreamResponse:
    track = request.match_info["group"]
    ext = request.match_info["ext"]
    file_name = request.match_info["file"]
    try:
        check_group(track)
        if not is_ext_name(ext):
            raise InvalidInputError(ext)
        if file_name != INDEX:
            parse_image_name(file_name, ext)
    except InvalidInputError:
        raise web.HTTPNotFound(text=_MISSING) from None
    async with transaction(request.app[READ_SESSIONS]) as session:
        images = await promoted_images(session, track, ext)
    if not images:
        raise web.HTTPNotFound(text=_MISSING)
    files = {ImageName(i.name, i.version, i.arch).file_name: i.sha256 for i in images}
    if file_name == INDEX:
        return web.Response(
            text=render_index((sha, name) for name, sha in files.items()),
            content_type="text/plain",
            headers={"Cache-Control": "no-cache"},
        )
    return serve_blob(request, files.get(file_name), file_name, _MISSING)


def add_routes(app: web.Application) -> None:
    # Under the secret prefix when one is set, like everything hosts fetch.
    prefix = app[SETTINGS].omaha_prefix
    app.router.add_get(f"{prefix}/v1/extensions/{{group}}/{{ext}}/{{file}}", handle_extension_file)
