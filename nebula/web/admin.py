"""The admin API under /api/v1: JSON, always behind a bearer token (viewer reads, admin writes).

Every change runs in one transaction that also bumps the catalog stamp, then drops this
process's catalog so the next host request sees it (other replicas within cache_ttl).
Payload uploads stream: see `upload_package`.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web
from sqlalchemy import select

from nebula.errors import (
    InvalidInputError,
    NebulaError,
    PayloadError,
    SlowRequestError,
)
from nebula.ingest import Ingested, ingest
from nebula.payload import TrustedKey, check_signature
from nebula.store import apps as app_store
from nebula.store import groups as group_store
from nebula.store import packages as package_store
from nebula.store.db import transaction
from nebula.store.models import Channel, Package
from nebula.store.tokens import Principal
from nebula.web import apps, channels
from nebula.web.api import PRINCIPAL, actor, change, json_body, opt, req
from nebula.web.audit import record
from nebula.web.keys import (
    BLOBS,
    CLOCK,
    METRICS,
    READ_SESSIONS,
    SETTINGS,
    TRUSTED_KEYS,
)
from nebula.web.limits import bounded
from nebula.web.openapi.spec import (
    APP,
    ARCH,
    EXTERNAL_BODY,
    STR,
    UPLOAD_BODY,
    VERSION,
    doc,
    listing,
    obj,
    ref,
)
from nebula.web.serialize import (
    channel_json,
    group_json,
    package_json,
)

log = logging.getLogger(__name__)

routes = web.RouteTableDef()


@routes.get("/api/v1/whoami")
@doc("The token's name and role", ref("Principal"))
async def whoami(request: web.Request) -> web.Response:
    principal: Principal = request[PRINCIPAL]
    return web.json_response({"name": principal.name, "role": principal.role})


# -- packages ------------------------------------------------------------------------------------


@routes.get("/api/v1/packages")
@doc(
    "List packages",
    listing("packages", ref("Package")),
    query={"arch": ARCH, "version": VERSION, "app": APP},
    errors=(404,),
)
async def list_packages(request: web.Request) -> web.Response:
    q = request.query
    async with transaction(request.app[READ_SESSIONS]) as session:
        found = await package_store.list_packages(
            session,
            app_id=await app_store.app_id_of(session, q.get("app")),
            arch=q.get("arch"),
            version=q.get("version"),
        )
        base = request.app[SETTINGS].host_base_url
        return web.json_response({"packages": [package_json(p, base) for p in found]})


@routes.get("/api/v1/packages/{id}")
@doc("Show a package and its files", ref("Package"))
async def show_package(request: web.Request) -> web.Response:
    async with transaction(request.app[READ_SESSIONS]) as session:
        package = await package_store.get_package(session, request.match_info["id"])
        return web.json_response(package_json(package, request.app[SETTINGS].host_base_url))


@routes.delete("/api/v1/packages/{id}")
@doc("Delete a package no channel points at", None, status=204, errors=(409,))
async def delete_package(request: web.Request) -> web.Response:
    base = request.app[SETTINGS].host_base_url

    async def work(session: Any) -> None:
        package = await package_store.delete_package(session, request.match_info["id"])
        message = f"package {package.version} ({package.arch}, {package.kind}) deleted"
        record(session, request, "package_delete", message, old=package_json(package, base))

    await change(request, work)
    return web.Response(status=204)


async def _recorded(session: Any, request: web.Request, package: Any) -> Any:
    """Log a new package; hand it back."""
    kind = f"delta from {package.from_version}" if package.kind == "delta" else "full"
    body = package_json(package, request.app[SETTINGS].host_base_url)
    message = f"package {package.version} ({package.arch}, {kind}) added"
    record(session, request, "package_add", message, new=body)
    return package


def _package_target(q: Any) -> tuple[str, str, str | None]:
    version = package_store.check_version(q.get("version") or "")
    arch = package_store.check_arch(q.get("arch") or "")
    from_version = q.get("from_version") or None
    if from_version is not None:
        package_store.check_version(from_version, "from-version")
    return version, arch, from_version


async def _part_chunks(request: web.Request, part: BodyPartReader) -> AsyncIterator[bytes]:
    # Each read has to make progress (an upload may be long, but not stalled).
    while chunk := await bounded(request, part.read_chunk(256 * 1024)):
        yield chunk


async def _next_part(
    request: web.Request, reader: MultipartReader
) -> MultipartReader | BodyPartReader | None:
    # aiohttp raises ValueError (or asserts) on a body that is not the multipart it claims.
    try:
        return await bounded(request, reader.next())
    except (ValueError, AssertionError) as exc:
        raise InvalidInputError(f"the multipart body does not parse: {exc}") from None


async def _drain(request: web.Request) -> None:
    """Read what the client still sends, so that it gets our error instead of a reset; a
    client that stalls gets it anyway after body_timeout."""
    try:
        while await bounded(request, request.content.readany()):
            pass
    except SlowRequestError:
        pass


@routes.post("/api/v1/packages/upload")
@doc(
    "Upload a package's files (multipart: a payload part, then extension parts)",
    ref("Package"),
    status=201,
    query={"version": VERSION, "arch": ARCH, "from_version": VERSION, "app": APP},
    body=UPLOAD_BODY,
    body_media="multipart/form-data",
    body_required=True,
    errors=(404, 408, 409, 422, 507),
)
async def upload_package(request: web.Request) -> web.Response:
    """multipart/form-data: a `payload` part first, then any `extension` parts.

    Query: version, arch, from_version (for a delta), app (default Flatcar). Each file is
    verified (CrAU, trusted version-2 signature), hashed and stored while it streams in; then
    the package is recorded.
    """
    version, arch, from_version = _package_target(request.query)
    blobs = request.app[BLOBS]
    metrics = request.app[METRICS]
    ingested: list[Ingested] = []
    try:
        if not request.content_type.startswith("multipart/"):
            raise InvalidInputError(
                "send the files as multipart/form-data: a 'payload' part, then 'extension' parts"
            )
        # Refuse a duplicate before reading the files: add_package checks again, but by then
        # the files would be in the payload store, which keeps them although nothing uses them.
        async with transaction(request.app[READ_SESSIONS]) as session:
            app_id = await _app_id(session, request.query.get("app"))
            await package_store.check_new_package(session, app_id, arch, version, from_version)
        try:
            reader = await request.multipart()
        except ValueError as exc:  # e.g. no boundary in the Content-Type
            raise InvalidInputError(f"the multipart body does not parse: {exc}") from None
        while (part := await _next_part(request, reader)) is not None:
            if not isinstance(part, BodyPartReader) or part.name not in ("payload", "extension"):
                raise InvalidInputError("parts must be named 'payload' or 'extension'")
            if (part.name == "payload") != (not ingested):
                raise InvalidInputError("send exactly one 'payload' part, before any extension")
            name = package_store.check_file_name(part.filename or "")
            if any(i.name == name for i in ingested):
                raise InvalidInputError(f"two files named {name}")
            try:
                ingested.append(
                    await ingest(
                        name, _part_chunks(request, part), blobs, request.app[TRUSTED_KEYS]
                    )
                )
            except PayloadError as exc:
                raise type(exc)(f"{name}: {exc}") from None
        if not ingested:
            raise InvalidInputError("no 'payload' part in the upload")
        _check_kind(ingested[0].name, ingested[0].info.is_delta, from_version)
        for item in ingested:
            blobs.commit(item.temp, item.info.sha256_hex)
        specs = [
            package_store.FileSpec(
                name=i.name,
                size=i.info.size,
                sha1=i.info.sha1.hex(),
                sha256=i.info.sha256_hex,
                stored=True,
                signer=i.info.signer.fingerprint,
            )
            for i in ingested
        ]
        package = await change(
            request,
            lambda s: _add_package(request, s, app_id, version, arch, from_version, None, specs),
        )
    except NebulaError:
        metrics.uploads.labels(outcome="refused").inc()
        for item in ingested:
            blobs.discard(item.temp)
        await _drain(request)
        raise
    except BaseException:
        # A connection cut inside a later part, a full disk, a lost database: the parts that
        # came in complete must not stay behind in incoming/ (the one being read removed itself).
        metrics.uploads.labels(outcome="failed").inc()
        for item in ingested:
            blobs.discard(item.temp)
        raise
    metrics.uploads.labels(outcome="stored").inc()
    log.info("package %s %s (%s) uploaded by %s", version, arch, package.kind, actor(request))
    return web.json_response(package_json(package, request.app[SETTINGS].host_base_url), status=201)


async def _app_id(session: Any, ref: Any) -> str:
    if ref is not None and not isinstance(ref, str):
        raise InvalidInputError("app must be a string: an app id or name")
    return (await app_store.find_app(session, ref)).id if ref else group_store.FLATCAR_APP_ID


async def _add_package(
    request: web.Request,
    session: Any,
    app_id: str,
    version: str,
    arch: str,
    from_version: str | None,
    base_url: str | None,
    specs: list[package_store.FileSpec],
) -> Any:
    package = await package_store.add_package(
        session,
        app_id=app_id,
        version=version,
        arch=arch,
        from_version=from_version,
        base_url=base_url,
        files=specs,
        actor=actor(request),
        now=request.app[CLOCK](),
    )
    return await _recorded(session, request, package)


def _check_kind(name: str, is_delta: bool, from_version: str | None) -> None:
    """The main payload is a delta exactly when the package names the version it applies to."""
    if is_delta != (from_version is not None):
        raise PayloadError(
            f"{name} is a delta payload: give --from-version"
            if is_delta
            else f"{name} is a full payload, but --from-version was given"
        )


def _crau_signer(name: str, raw: object, keys: Sequence[TrustedKey]) -> tuple[str, bool]:
    """Check the facts a client read from its local copy of a file (`crau`: signed_size,
    signed_sha256 hex, signature base64, delta) against our trusted keys, as an upload is
    checked; return the signer's fingerprint and whether the file is a delta payload.

    The client checked the CrAU structure and computed the digest of the signed bytes; the
    signature itself, and so which keys are trusted, is decided here, where the keys are.
    """
    try:
        if not isinstance(raw, dict):
            raise TypeError
        size, digest_hex, sig_b64, delta = (
            raw["signed_size"],
            raw["signed_sha256"],
            raw["signature"],
            raw["delta"],
        )
        if not (isinstance(size, int) and isinstance(delta, bool) and isinstance(sig_b64, str)):
            raise TypeError
        digest = bytes.fromhex(digest_hex)
        signature = base64.b64decode(sig_b64, validate=True)
        if len(digest) != 32 or not signature:
            raise ValueError
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise InvalidInputError(
            f"{name}: crau needs signed_size (an integer), signed_sha256 (64 hex digits), "
            "signature (base64) and delta (true or false)"
        ) from None
    try:
        signer = check_signature(digest, signature, keys, size)
    except PayloadError as exc:
        raise type(exc)(f"{name}: {exc}") from None
    return signer.fingerprint, delta


@routes.post("/api/v1/packages")
@doc(
    "Add a package whose files are hosted elsewhere",
    ref("Package"),
    status=201,
    body=EXTERNAL_BODY,
    body_required=True,
    errors=(404, 409, 422),
)
async def add_external_package(request: web.Request) -> web.Response:
    """A package whose files are hosted elsewhere: base_url plus each file's size and hashes.

    A file may carry `crau`, the signature facts of a local copy (see _crau_signer): its
    signature is then checked against the trusted keys as for an upload, and a main payload's
    kind against from_version. A file without them is taken on trust (`--file` specs).
    """
    data = await json_body(request)
    version, arch, from_version = _package_target(data)
    base_url = req(data, "base_url")
    if not base_url.startswith(("http://", "https://")):
        raise InvalidInputError("base_url must be an http:// or https:// URL")
    if not base_url.endswith("/"):
        base_url += "/"  # clients join codebase and name; old ones by plain concatenation
    raw_files = data.get("files")
    if not isinstance(raw_files, list) or not raw_files:
        raise InvalidInputError("files must be a non-empty list, the main payload first")
    specs: list[package_store.FileSpec] = []
    for f in raw_files:
        # Exact JSON types: str()/int() would turn null into a file named "None" and cut a
        # size of 4096.5 to 4096, which hosts would then fail on.
        if (
            not isinstance(f, dict)
            or not all(isinstance(f.get(k), str) for k in ("name", "sha1", "sha256"))
            or not isinstance(f.get("size"), int)
            or isinstance(f.get("size"), bool)
        ):
            raise InvalidInputError(
                "each file needs name, size (an integer), sha1 and sha256 (hex)"
            )
        signer = None
        if f.get("crau") is not None:
            signer, is_delta = _crau_signer(f["name"], f["crau"], request.app[TRUSTED_KEYS])
            if not specs:
                _check_kind(f["name"], is_delta, from_version)
        specs.append(
            package_store.FileSpec(
                name=f["name"],
                size=f["size"],
                sha1=f["sha1"].lower(),
                sha256=f["sha256"].lower(),
                stored=False,
                signer=signer,
            )
        )

    async def work(session: Any) -> Any:
        app_id = await _app_id(session, data.get("app"))
        return await _add_package(
            request, session, app_id, version, arch, from_version, base_url, specs
        )

    package = await change(request, work)
    return web.json_response(package_json(package, request.app[SETTINGS].host_base_url), status=201)


# -- channels ------------------------------------------------------------------------------------


@routes.get("/api/v1/channels")
@doc(
    "List an application's channels",
    listing("channels", ref("Channel")),
    query={"app": APP},
    errors=(404,),
)
async def list_channels(request: web.Request) -> web.Response:
    async with transaction(request.app[READ_SESSIONS]) as session:
        app_id = await _app_id(session, request.query.get("app"))
        rows = await group_store.list_channels(session, app_id)
        return web.json_response({"channels": [channel_json(c, p) for c, p in rows]})


@routes.put("/api/v1/channels/{name}")
@doc(
    "Point a channel at the package of a version",
    ref("Channel"),
    body=obj({"arch": ARCH, "version": VERSION}, {"app": APP}),
    body_required=True,
)
async def set_channel(request: web.Request) -> web.Response:
    data = await json_body(request)
    arch = req(data, "arch")
    version = req(data, "version")

    async def work(session: Any) -> tuple[Channel, Any]:
        app_id = await app_store.app_id_of(session, opt(data, "app"))
        name = request.match_info["name"]
        old = await group_store.get_channel(session, name, package_store.check_arch(arch), app_id)
        was = await session.get(Package, old.package_id) if old.package_id else None
        channel, package = await group_store.set_channel(
            session, name, arch, version, actor(request), request.app[CLOCK](), old.app_id
        )
        if was is None or was.id != package.id:
            followers = [g.id for g in await group_store.followers(session, channel.id)]
            old_version = was.version if was else None
            record(
                session,
                request,
                "channel_set",
                f"channel {name} ({arch}) {old_version or 'none'} -> {version}",
                followers,
                channel=name,
                arch=arch,
                changes={"version": [old_version, version]},
            )
        return channel, package

    channel, package = await change(request, work)
    log.info("channel %s (%s) -> %s by %s", channel.name, arch, version, actor(request))
    return web.json_response(channel_json(channel, package))


# -- groups --------------------------------------------------------------------------------------


async def _channel_names(session: Any) -> dict[int, str]:
    return {c.id: c.name for c in (await session.execute(select(Channel))).scalars()}


@routes.get("/api/v1/groups")
@doc(
    "List an application's groups",
    listing("groups", ref("Group")),
    query={"app": APP},
    errors=(404,),
)
async def list_groups(request: web.Request) -> web.Response:
    async with transaction(request.app[READ_SESSIONS]) as session:
        names = await _channel_names(session)
        found = await group_store.list_groups(
            session, await _app_id(session, request.query.get("app"))
        )
        return web.json_response(
            {
                "groups": [
                    group_json(g, names.get(g.channel_id) if g.channel_id else None) for g in found
                ]
            }
        )


@routes.post("/api/v1/groups")
@doc(
    "Create a group of hosts on a channel",
    ref("Group"),
    status=201,
    body=obj(
        {"name": STR, "arch": ARCH, "channel": STR},
        {"track": STR, "description": STR, "app": APP},
    ),
    body_required=True,
    errors=(404, 409),
)
async def create_group(request: web.Request) -> web.Response:
    data = await json_body(request)

    async def work(session: Any) -> dict[str, Any]:
        app_id = await _app_id(session, data.get("app"))
        group = await group_store.create_group(
            session,
            name=req(data, "name"),
            track=opt(data, "track"),
            arch=req(data, "arch"),
            channel=req(data, "channel"),
            description=opt(data, "description") or "",
            now=request.app[CLOCK](),
            app_id=app_id,
        )
        body = group_json(group, data["channel"])
        message = f"group {group.name} ({group.arch}) created, following {data['channel']}"
        record(session, request, "group_create", message, [group.id], new=body)
        return body

    return web.json_response(await change(request, work), status=201)


@routes.get("/api/v1/groups/{ref}")
@doc(
    "Show a group and its hosts' counts by status",
    ref("Group"),
    query={"arch": ARCH, "app": APP},
)
async def show_group(request: web.Request) -> web.Response:
    q = request.query
    async with transaction(request.app[READ_SESSIONS]) as session:
        group = await group_store.find_group(
            session,
            request.match_info["ref"],
            q.get("arch"),
            await app_store.app_id_of(session, q.get("app")),
        )
        names = await _channel_names(session)
        body = group_json(group, names.get(group.channel_id) if group.channel_id else None)
        body["instances"] = await group_store.status_counts(session, group.id)
        return web.json_response(body)


def add_routes(app: web.Application) -> None:
    app.router.add_routes(routes)
    app.router.add_routes(apps.routes)
    app.router.add_routes(channels.routes)
