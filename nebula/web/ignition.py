"""Host configs for hosts: `GET /v1/ignition/{group}`, no token, only with `ignition_public`.

The Ignition JSON that `nebula host-config -o ignition` prints, for a group that exists, with
Nebula's public URL as SERVER, so a host's own Ignition config can merge it by URL
(`ignition.config.merge`). The query takes the other options of the command under the same
names (`alias-from-hostname`, `reboot-strategy`, `reboot-window`, `reboot-window-length`,
`extension` and `sysext` repeated, `sysext-url`, `release-server`, `arch`); a bad one is a 400
that says which. Off by default: the config names the group and the server, and what a fleet
runs is the operator's to publish. Off, or for a group Nebula does not have: 404. The group is
looked up in the catalog snapshot (no query): by track, group id or name. A sysext image
without a hash in the query and without `sysext-url` gets the SHA-256 of the image Nebula serves
to that track (nebula.sysext), one query, so the host's first download is verified.
"""

from __future__ import annotations

from aiohttp import web

from nebula.errors import InvalidInputError
from nebula.provisioning import build_spec, render_ignition
from nebula.store.catalog import Catalog, GroupEntry
from nebula.store.db import transaction
from nebula.store.groups import FLATCAR_APP_ID
from nebula.sysext.store import hashes_by_file
from nebula.web.keys import CATALOG, READ_SESSIONS, SETTINGS

_OPTIONS = frozenset(
    {
        "arch",
        "alias-from-hostname",
        "reboot-strategy",
        "reboot-window",
        "reboot-window-length",
        "extension",
        "sysext",
        "sysext-url",
        "release-server",
    }
)
_TRUE = {"", "1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def find_group(catalog: Catalog, ref: str, arch: str | None) -> GroupEntry | None:
    """Flatcar's group whose track, id or name is `ref` (and of `arch`, when given)."""
    found = [
        g
        for (app_id, _track, _arch), g in catalog.groups.items()
        if app_id == FLATCAR_APP_ID
        and ref in (g.track, g.id, g.name)
        and (arch is None or g.arch == arch)
    ]
    found.sort(key=lambda g: g.arch)  # amd64 first, as for hosts that do not say
    return found[0] if found else None


def _flag(request: web.BaseRequest, name: str) -> bool:
    values = request.query.getall(name, [])
    if not values:
        return False
    value = values[-1].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidInputError(f"{name}={values[-1]!r}: use true or false")


def _one(request: web.BaseRequest, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise InvalidInputError(f"{name} given {len(values)} times: give it once")
    return values[0] if values else None


async def handle_ignition(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    if not settings.ignition_public:
        raise web.HTTPNotFound(text="no host configs here (ignition_public is off)\n")
    unknown = sorted(set(request.query) - _OPTIONS)
    if unknown:
        raise InvalidInputError(f"unknown option {unknown[0]!r}: use {', '.join(sorted(_OPTIONS))}")
    ref = request.match_info["group"]
    arch = _one(request, "arch")
    if arch is not None and arch not in ("amd64", "arm64"):
        raise InvalidInputError(f"arch must be amd64 or arm64, got {arch!r}")
    group = find_group(await request.app[CATALOG].get(), ref, arch)
    if group is None:
        raise web.HTTPNotFound(text="no such group\n")
    # GROUP= is what the host sends as its track: the group's track, unless the request named
    # it by id (the legacy CoreOS UUIDs are tracks too).
    track = ref if ref == group.id else group.track
    spec = build_spec(
        group=track,
        server=settings.host_base_url,
        arch=group.arch,
        alias_from_hostname=_flag(request, "alias-from-hostname"),
        reboot_strategy=_one(request, "reboot-strategy"),
        reboot_window=_one(request, "reboot-window"),
        reboot_window_length=_one(request, "reboot-window-length"),
        extensions=request.query.getall("extension", []),
        sysexts=request.query.getall("sysext", []),
        sysext_url=_one(request, "sysext-url"),
        release_server=_flag(request, "release-server"),
    )
    if spec.sysext_url is None and any(s.sha256 is None for s in spec.sysexts):
        # Images Nebula serves to this track: the first download is verified against them.
        async with transaction(request.app[READ_SESSIONS]) as session:
            spec = spec.with_hashes(await hashes_by_file(session, spec.group))
    return web.Response(
        text=render_ignition(spec),
        content_type="application/json",
        headers={"Cache-Control": "no-cache"},
    )


def add_routes(app: web.Application) -> None:
    # Under the secret prefix when one is set, like everything hosts fetch.
    prefix = app[SETTINGS].omaha_prefix
    app.router.add_get(f"{prefix}/v1/ignition/{{group}}", handle_ignition)
