"""Release files for first boots: `GET`/`HEAD /v1/release/<board>/<version>/<file>`, no token.

A Flatcar host booted with `flatcar.release_file_server_url=<URL>` fetches, in its initrd,
`<URL>/<board>/<version>/flatcar-NAME.gz` (and `oem-ID.gz`): the extensions it enables, signed
with the payload key, and its first boot fails if one is missing. With the URL set to Nebula's
`<public URL>/v1/release` (what `nebula host-config --release-server` writes), an air-gapped
host gets them from the extension payloads Nebula already stores with each version. The route
stays under /v1/, the one prefix a deployment exposes to hosts (below omaha_prefix when one is
set).

Boards are `amd64-usr` and `arm64-usr`. Only stored extension payloads are served (not the
main payload, not files registered elsewhere); anything else, and any name that cannot be a
stored file or version, is a 404 without a query. The HTTP work (Range, HEAD, ETag, 304/412/416)
is the payload route's (nebula.web.payloads.serve_blob).
"""

from __future__ import annotations

from aiohttp import web

from nebula.store.db import transaction
from nebula.store.groups import FLATCAR_APP_ID
from nebula.store.packages import find_release_file, is_file_name
from nebula.versions import is_valid_version
from nebula.web.keys import CATALOG, READ_SESSIONS, SETTINGS
from nebula.web.payloads import serve_blob

BOARDS = {"amd64-usr": "amd64", "arm64-usr": "arm64"}
_MISSING = "no such release file\n"
_VERSION_MAX = 64  # the packages' version column


async def handle_release_file(request: web.Request) -> web.StreamResponse:
    arch = BOARDS.get(request.match_info["board"])
    version = request.match_info["version"]
    name = request.match_info["name"]
    if (
        arch is None
        or len(version) > _VERSION_MAX
        or version != version.strip()
        or not is_valid_version(version)
        or not is_file_name(name)
    ):
        raise web.HTTPNotFound(text=_MISSING)
    catalog = await request.app[CATALOG].get()
    sha256 = catalog.release_files.get((FLATCAR_APP_ID, arch, version, name))
    if sha256 is None:
        # Uploaded on another replica within cache_ttl: one indexed query, as for payloads.
        async with transaction(request.app[READ_SESSIONS]) as session:
            sha256 = await find_release_file(session, FLATCAR_APP_ID, arch, version, name)
    return serve_blob(request, sha256, name, _MISSING)


def add_routes(app: web.Application) -> None:
    # Under the secret prefix when one is set, like everything hosts fetch.
    prefix = app[SETTINGS].omaha_prefix
    app.router.add_get(f"{prefix}/v1/release/{{board}}/{{version}}/{{name}}", handle_release_file)
