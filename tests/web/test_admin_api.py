"""The admin API (nebula.web.admin): tokens and roles, channels, groups, external packages,
package deletion, and the shape of every error (an RFC 9457 problem document).

Each test runs against a real app on a fresh database of each backend.
"""

from __future__ import annotations

import hashlib
from http import HTTPStatus
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.store import db
from nebula.store.tokens import revoke_token
from tests import crau
from tests.conftest import FakeClock
from tests.factories import make_token
from tests.problem import check_problem

NEW = "4152.2.3"
STABLE_AMD64_ID = "9a2deb70-37be-4026-853f-bfdd6b347bbe"
STABLE_ARM64_ID = "11a585f6-9418-4df0-8863-78b2fd3240f8"
MAIN = "flatcar_production_update.gz"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def expect_error(resp: aiohttp.ClientResponse, status: int, kind: str | None = None) -> str:
    """Assert an admin API error: the status, a problem document (tests.problem); its detail."""
    raw = await resp.text()
    assert resp.status == status, raw
    return check_problem(resp.content_type, await resp.json(), status, kind)


def file_entry(name: str = MAIN, data: bytes | None = None) -> dict[str, Any]:
    data = data if data is not None else name.encode() * 100
    return {
        "name": name,
        "size": len(data),
        "sha1": hashlib.sha1(data).hexdigest(),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def external(version: Any = NEW, arch: str = "amd64", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "version": version,
        "arch": arch,
        "base_url": f"https://cdn.example/flatcar/{version}",
        "files": [file_entry(), file_entry("oem-azure.gz")],
    }
    body.update(overrides)
    return body


async def add_external(client: Any, token: str, **kwargs: Any) -> dict[str, Any]:
    resp = await client.post("/api/v1/packages", json=external(**kwargs), headers=auth(token))
    assert resp.status == 201, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def upload(client: Any, token: str, payload: bytes, version: str = NEW) -> dict[str, Any]:
    form = aiohttp.FormData()
    form.add_field("payload", payload, filename=MAIN, content_type="application/octet-stream")
    resp = await client.post(
        "/api/v1/packages/upload",
        params={"version": version, "arch": "amd64"},
        data=form,
        headers=auth(token),
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def list_packages(client: Any, token: str) -> list[dict[str, Any]]:
    resp = await client.get("/api/v1/packages", headers=auth(token))
    assert resp.status == 200
    return (await resp.json())["packages"]  # type: ignore[no-any-return]


async def channel_version(client: Any, token: str, name: str, arch: str) -> str | None:
    resp = await client.get("/api/v1/channels", headers=auth(token))
    assert resp.status == 200
    found = [c for c in (await resp.json())["channels"] if (c["name"], c["arch"]) == (name, arch)]
    assert len(found) == 1, found
    return found[0]["version"]  # type: ignore[no-any-return]


# -- authentication and roles --------------------------------------------------------------------


async def test_no_header_or_bad_token_is_401(client: Any, admin_token: str) -> None:
    await expect_error(await client.get("/api/v1/whoami"), 401, "AuthError")
    for header in (
        "Bearer nbl_not-a-real-token",
        "Bearer ",
        f"Basic {admin_token}",  # the right secret in the wrong scheme
        admin_token,  # no scheme at all
        f"Bearer {admin_token}x",  # a token that merely starts like a valid one
    ):
        resp = await client.get("/api/v1/whoami", headers={"Authorization": header})
        await expect_error(resp, 401, "AuthError")
    # Writes are refused the same way (not merely hidden behind the role check).
    resp = await client.put("/api/v1/channels/stable", json={"arch": "amd64", "version": NEW})
    await expect_error(resp, 401, "AuthError")


async def test_whoami_names_the_token(client: Any, admin_token: str, viewer_token: str) -> None:
    resp = await client.get("/api/v1/whoami", headers=auth(admin_token))
    assert resp.status == 200
    assert await resp.json() == {"name": "ops", "role": "admin"}
    resp = await client.get("/api/v1/whoami", headers={"Authorization": f"bearer {viewer_token}"})
    assert resp.status == 200
    assert await resp.json() == {"name": "dashboard", "role": "viewer"}


async def test_revoked_token_is_refused_at_once(
    client: Any, db_url: str, engine: AsyncEngine, clock: FakeClock
) -> None:
    token = await make_token(db_url, "temp", "admin")
    other = await make_token(db_url, "other", "admin")
    assert (await client.get("/api/v1/whoami", headers=auth(token))).status == 200
    async with db.transaction(db.session_factory(engine)) as session:
        assert await revoke_token(session, "temp", clock())
    await expect_error(await client.get("/api/v1/whoami", headers=auth(token)), 401, "AuthError")
    resp = await client.put(
        "/api/v1/channels/stable", json={"arch": "amd64", "version": NEW}, headers=auth(token)
    )
    await expect_error(resp, 401, "AuthError")
    # Revoking one token leaves the others working.
    assert (await client.get("/api/v1/whoami", headers=auth(other))).status == 200


async def test_viewer_reads_but_may_not_write(
    client: Any, admin_token: str, viewer_token: str
) -> None:
    package = await add_external(client, admin_token)
    for path in (
        "/api/v1/packages",
        f"/api/v1/packages/{package['id']}",
        "/api/v1/channels",
        "/api/v1/groups",
        "/api/v1/groups/stable?arch=amd64",
        "/api/v1/instances",
    ):
        resp = await client.get(path, headers=auth(viewer_token))
        assert resp.status == 200, (path, await resp.text())

    writes = [
        ("POST", "/api/v1/packages", external(version="4200.0.0")),
        ("POST", "/api/v1/packages/upload?version=4200.0.0&arch=amd64", None),
        ("PUT", "/api/v1/channels/stable", {"arch": "amd64", "version": NEW}),
        ("POST", "/api/v1/groups", {"name": "canary", "arch": "amd64", "channel": "stable"}),
        ("DELETE", f"/api/v1/packages/{package['id']}", None),
    ]
    for method, path, body in writes:
        resp = await client.request(method, path, json=body, headers=auth(viewer_token))
        message = await expect_error(resp, 403, "ForbiddenError")
        assert "viewer" in message, message

    # Nothing of it happened.
    assert [p["id"] for p in await list_packages(client, admin_token)] == [package["id"]]
    assert await channel_version(client, admin_token, "stable", "amd64") is None
    resp = await client.get("/api/v1/groups/canary", headers=auth(admin_token))
    await expect_error(resp, 404, "NotFoundError")


async def test_tokens_are_stored_only_as_hashes(
    client: Any, admin_token: str, viewer_token: str, engine: AsyncEngine
) -> None:
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM api_tokens"))).mappings().all()
    assert {r["name"] for r in rows} == {"ops", "dashboard"}
    everything = " ".join(str(v) for r in rows for v in r.values())
    for token in (admin_token, viewer_token):
        assert token not in everything
        secret = token.removeprefix("nbl_")
        assert len(secret) >= 40  # 256 random bits
        assert secret[:16] not in everything  # not even a recognisable part of it
    by_name = {r["name"]: r["token_hash"] for r in rows}
    assert by_name["ops"] == hashlib.sha256(admin_token.encode()).hexdigest()
    # And a stored hash is useless as a token.
    resp = await client.get("/api/v1/whoami", headers=auth(by_name["ops"]))
    await expect_error(resp, 401, "AuthError")


# -- channels ------------------------------------------------------------------------------------


async def test_channels_list_seeded(client: Any, viewer_token: str) -> None:
    resp = await client.get("/api/v1/channels", headers=auth(viewer_token))
    assert resp.status == 200
    channels = (await resp.json())["channels"]
    assert sorted((c["name"], c["arch"]) for c in channels) == sorted(
        (n, a) for n in ("alpha", "beta", "stable", "lts") for a in ("amd64", "arm64")
    )
    assert all(c["version"] is None and c["package_id"] is None for c in channels)


async def test_set_channel_without_package_is_404(client: Any, admin_token: str) -> None:
    resp = await client.put(
        "/api/v1/channels/stable", json={"arch": "amd64", "version": NEW}, headers=auth(admin_token)
    )
    message = await expect_error(resp, 404, "NotFoundError")
    assert NEW in message and "amd64" in message
    assert "upload" in message  # tells the operator what to do
    assert await channel_version(client, admin_token, "stable", "amd64") is None

    # A package of another arch does not count, nor does a delta into the version.
    await add_external(client, admin_token, arch="arm64")
    await add_external(client, admin_token, from_version="3815.2.0")
    resp = await client.put(
        "/api/v1/channels/stable", json={"arch": "amd64", "version": NEW}, headers=auth(admin_token)
    )
    await expect_error(resp, 404, "NotFoundError")
    # Nor does a channel that does not exist.
    resp = await client.put(
        "/api/v1/channels/nightly",
        json={"arch": "arm64", "version": NEW},
        headers=auth(admin_token),
    )
    assert "nightly" in await expect_error(resp, 404, "NotFoundError")


async def test_set_channel_after_upload(
    client: Any, admin_token: str, signing_key: RSAPrivateKey, clock: FakeClock
) -> None:
    package = await upload(client, admin_token, crau.build_payload(signing_key))
    resp = await client.put(
        "/api/v1/channels/stable", json={"arch": "amd64", "version": NEW}, headers=auth(admin_token)
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["name"] == "stable" and body["arch"] == "amd64"
    assert body["version"] == NEW
    assert body["package_id"] == package["id"]
    assert body["updated_by"] == "ops"
    assert body["updated_at"].startswith(clock().date().isoformat())

    assert await channel_version(client, admin_token, "stable", "amd64") == NEW
    # Only that channel moved.
    assert await channel_version(client, admin_token, "stable", "arm64") is None
    assert await channel_version(client, admin_token, "beta", "amd64") is None


async def test_set_channel_validates_input(client: Any, admin_token: str) -> None:
    for body, word in (
        ({"version": NEW}, "arch"),
        ({"arch": "amd64"}, "version"),
        ({"arch": "s390x", "version": NEW}, "arch"),
        ({"arch": "amd64", "version": 4152}, "version"),
    ):
        resp = await client.put("/api/v1/channels/stable", json=body, headers=auth(admin_token))
        message = await expect_error(resp, 400, "InvalidInputError")
        assert word in message, (body, message)


# -- groups --------------------------------------------------------------------------------------


async def test_groups_list_seeded(client: Any, viewer_token: str) -> None:
    resp = await client.get("/api/v1/groups", headers=auth(viewer_token))
    assert resp.status == 200
    groups = {(g["name"], g["arch"]): g for g in (await resp.json())["groups"]}
    assert len(groups) == 8
    assert groups[("stable", "amd64")]["id"] == STABLE_AMD64_ID
    assert groups[("stable", "arm64")]["id"] == STABLE_ARM64_ID
    assert groups[("stable", "amd64")]["channel"] == "stable"
    assert groups[("lts", "arm64")]["track"] == "lts"


async def test_create_and_show_group(client: Any, admin_token: str) -> None:
    resp = await client.post(
        "/api/v1/groups",
        json={
            "name": "canary",
            "arch": "amd64",
            "channel": "beta",
            "track": "canary-hosts",
            "description": "first wave",
        },
        headers=auth(admin_token),
    )
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert (created["name"], created["track"], created["arch"], created["channel"]) == (
        "canary",
        "canary-hosts",
        "amd64",
        "beta",
    )
    assert created["description"] == "first wave"
    assert created["policy"]["updates_enabled"] is True

    # The track defaults to the name.
    resp = await client.post(
        "/api/v1/groups",
        json={"name": "edge-lab", "arch": "arm64", "channel": "alpha"},
        headers=auth(admin_token),
    )
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["track"] == "edge-lab"

    resp = await client.get("/api/v1/groups", headers=auth(admin_token))
    names = {(g["name"], g["arch"]) for g in (await resp.json())["groups"]}
    assert {("canary", "amd64"), ("edge-lab", "arm64")} <= names and len(names) == 10

    # Shown by name, by track and by id, with the same content.
    for ref in ("canary", "canary-hosts", created["id"]):
        resp = await client.get(f"/api/v1/groups/{ref}", headers=auth(admin_token))
        assert resp.status == 200, (ref, await resp.text())
        shown = await resp.json()
        assert shown["id"] == created["id"], ref
        assert shown["channel"] == "beta"
        assert shown["instances"] == {}


async def test_show_group_by_legacy_uuid_and_arch(client: Any, viewer_token: str) -> None:
    for ref in (STABLE_AMD64_ID, STABLE_AMD64_ID.upper()):
        resp = await client.get(f"/api/v1/groups/{ref}", headers=auth(viewer_token))
        assert resp.status == 200, (ref, await resp.text())
        body = await resp.json()
        assert (body["name"], body["arch"], body["id"]) == ("stable", "amd64", STABLE_AMD64_ID)

    resp = await client.get(
        "/api/v1/groups/stable", params={"arch": "arm64"}, headers=auth(viewer_token)
    )
    assert resp.status == 200
    assert (await resp.json())["id"] == STABLE_ARM64_ID

    # "stable" exists for both arches: the caller must say which.
    resp = await client.get("/api/v1/groups/stable", headers=auth(viewer_token))
    message = await expect_error(resp, 400, "InvalidInputError")
    assert "--arch" in message and "amd64" in message and "arm64" in message

    resp = await client.get("/api/v1/groups/nosuch", headers=auth(viewer_token))
    assert "nosuch" in await expect_error(resp, 404, "NotFoundError")
    # A legacy UUID of the other arch with a contradicting arch is not found.
    resp = await client.get(
        f"/api/v1/groups/{STABLE_AMD64_ID}", params={"arch": "arm64"}, headers=auth(viewer_token)
    )
    await expect_error(resp, 404, "NotFoundError")


async def test_create_group_conflicts_and_errors(client: Any, admin_token: str) -> None:
    async def create(**body: Any) -> aiohttp.ClientResponse:
        return await client.post("/api/v1/groups", json=body, headers=auth(admin_token))  # type: ignore[no-any-return]

    assert (await create(name="canary", arch="amd64", channel="stable")).status == 201
    # Same name, same arch: a conflict. A seeded name too.
    for body in (
        {"name": "canary", "arch": "amd64", "channel": "beta"},
        {"name": "stable", "arch": "amd64", "channel": "stable"},
        {"name": "other", "track": "canary", "arch": "amd64", "channel": "stable"},
    ):
        message = await expect_error(await create(**body), 409, "ConflictError")
        assert "exists" in message, message
    # A name and a track may not cross either: "show canary2" would then match two groups.
    assert (
        await create(name="canary2", track="wave2", arch="amd64", channel="stable")
    ).status == 201
    await expect_error(
        await create(name="wave2", arch="amd64", channel="stable"), 409, "ConflictError"
    )
    await expect_error(
        await create(name="wave3", track="canary2", arch="amd64", channel="stable"),
        409,
        "ConflictError",
    )
    # Same name on the other arch is fine; then the name alone is ambiguous.
    assert (await create(name="canary", arch="arm64", channel="stable")).status == 201
    resp = await client.get("/api/v1/groups/canary", headers=auth(admin_token))
    assert "--arch" in await expect_error(resp, 400, "InvalidInputError")

    message = await expect_error(
        await create(name="x1", arch="amd64", channel="nightly"), 404, "NotFoundError"
    )
    assert "nightly" in message
    for body, word in (
        ({"arch": "amd64", "channel": "stable"}, "name"),
        ({"name": "x2", "channel": "stable"}, "arch"),
        ({"name": "x3", "arch": "amd64"}, "channel"),
        ({"name": "../x", "arch": "amd64", "channel": "stable"}, "name"),
        ({"name": "x4", "arch": "sparc", "channel": "stable"}, "arch"),
        ({"name": "x5", "track": "a b", "arch": "amd64", "channel": "stable"}, "track"),
    ):
        message = await expect_error(await create(**body), 400, "InvalidInputError")
        assert word in message, (body, message)
    resp = await client.get("/api/v1/groups", headers=auth(admin_token))
    assert len((await resp.json())["groups"]) == 8 + 3


# -- external packages ---------------------------------------------------------------------------


async def test_add_external_package(client: Any, admin_token: str, clock: FakeClock) -> None:
    body = external()
    resp = await client.post("/api/v1/packages", json=body, headers=auth(admin_token))
    assert resp.status == 201, await resp.text()
    package = await resp.json()
    assert package["external"] is True
    assert package["codebase"] == f"https://cdn.example/flatcar/{NEW}/"  # a '/' is added
    assert (package["version"], package["arch"], package["kind"]) == (NEW, "amd64", "full")
    assert package["from_version"] is None
    assert package["created_by"] == "ops"
    assert [
        {k: f[k] for k in ("name", "size", "sha1", "sha256")} for f in package["files"]
    ] == body["files"]
    assert [f["required"] for f in package["files"]] == [True, False]

    resp = await client.get(f"/api/v1/packages/{package['id']}", headers=auth(admin_token))
    assert resp.status == 200
    assert await resp.json() == package
    assert await list_packages(client, admin_token) == [package]

    # A base URL that already ends in '/' keeps exactly one; upper-case hex is normalised.
    files = [file_entry()]
    files[0]["sha1"] = files[0]["sha1"].upper()
    resp = await client.post(
        "/api/v1/packages",
        json=external(version="4152.2.4", base_url="https://cdn.example/y/", files=files),
        headers=auth(admin_token),
    )
    assert resp.status == 201, await resp.text()
    other = await resp.json()
    assert other["codebase"] == "https://cdn.example/y/"
    assert other["files"][0]["sha1"] == file_entry()["sha1"]

    # The same version and arch again is a conflict; a delta of it is not.
    resp = await client.post("/api/v1/packages", json=external(), headers=auth(admin_token))
    assert NEW in await expect_error(resp, 409, "ConflictError")
    resp = await client.post(
        "/api/v1/packages", json=external(from_version="3815.2.0"), headers=auth(admin_token)
    )
    assert resp.status == 201, await resp.text()
    delta = await resp.json()
    assert (delta["kind"], delta["from_version"]) == ("delta", "3815.2.0")


def _with_file(**changes: Any) -> list[dict[str, Any]]:
    entry = file_entry()
    entry.update(changes)
    return [entry]


def _without(key: str) -> dict[str, Any]:
    body = external()
    del body[key]
    return body


# (case, body, a word the message must contain): each is refused with 400 and stores nothing.
BAD_PACKAGES: list[tuple[str, Any, str]] = [
    ("sha1-short", external(files=_with_file(sha1="ab" * 19)), "sha1"),
    ("sha1-long", external(files=_with_file(sha1="ab" * 21)), "sha1"),
    ("sha1-not-hex", external(files=_with_file(sha1="zz" * 20)), "sha1"),
    ("sha256-short", external(files=_with_file(sha256="ab" * 31)), "sha256"),
    ("sha256-long", external(files=_with_file(sha256="ab" * 33)), "sha256"),
    ("sha256-null", external(files=_with_file(sha256=None)), "sha256"),
    ("size-0", external(files=_with_file(size=0)), "size"),
    ("size-negative", external(files=_with_file(size=-5)), "size"),
    ("size-not-int", external(files=_with_file(size="big")), "size"),
    ("size-too-big", external(files=_with_file(size=2**63)), "size"),
    ("size-float", external(files=_with_file(size=1200.5)), "size"),
    ("size-bool", external(files=_with_file(size=True)), "size"),
    ("size-string", external(files=_with_file(size="1200")), "size"),
    ("name-null", external(files=_with_file(name=None)), "name"),
    ("name-number", external(files=_with_file(name=7)), "name"),
    ("no-base-url", _without("base_url"), "base_url"),
    ("ftp-base-url", external(base_url="ftp://cdn.example/x/"), "base_url"),
    ("name-dotdot", external(files=_with_file(name="../x")), "../x"),
    ("name-slash", external(files=_with_file(name="a/b.gz")), "a/b.gz"),
    ("name-empty", external(files=_with_file(name="")), "file name"),
    ("file-missing-hashes", external(files=[{"name": "x.gz", "size": 1}]), "sha1"),
    ("same-name-twice", external(files=[file_entry(), file_entry()]), "differ"),
    ("no-files", external(files=[]), "files"),
    ("files-not-list", external(files="x.gz"), "files"),
    ("file-not-object", external(files=["x.gz"]), "file"),
    ("no-version", _without("version"), "version"),
    ("bad-version", external(version="latest"), "version"),
    ("version-not-string", external(version=4152), "version"),
    ("version-whitespace", external(version=" 4152.2.3"), "version"),
    ("bad-arch", external(arch="x86_64"), "arch"),
    ("bad-from-version", external(from_version="old"), "from-version"),
]


async def test_add_external_package_validation(client: Any, admin_token: str) -> None:
    # One database for all cases (they are many): each must leave no package behind.
    for case, body, word in BAD_PACKAGES:
        resp = await client.post("/api/v1/packages", json=body, headers=auth(admin_token))
        try:
            message = await expect_error(resp, 400, "InvalidInputError")
        except AssertionError as exc:
            raise AssertionError(f"{case}: {exc}") from None
        assert word in message, (case, message)
        assert await list_packages(client, admin_token) == [], case


# -- package deletion ----------------------------------------------------------------------------


async def test_delete_package_refused_while_a_channel_uses_it(
    client: Any, admin_token: str
) -> None:
    first = await add_external(client, admin_token)
    resp = await client.put(
        "/api/v1/channels/beta", json={"arch": "amd64", "version": NEW}, headers=auth(admin_token)
    )
    assert resp.status == 200
    resp = await client.delete(f"/api/v1/packages/{first['id']}", headers=auth(admin_token))
    assert "beta" in await expect_error(resp, 409, "ConflictError")
    assert [p["id"] for p in await list_packages(client, admin_token)] == [first["id"]]
    assert await channel_version(client, admin_token, "beta", "amd64") == NEW

    # Once the channel points elsewhere, the package can go.
    await add_external(client, admin_token, version="4152.2.4")
    resp = await client.put(
        "/api/v1/channels/beta",
        json={"arch": "amd64", "version": "4152.2.4"},
        headers=auth(admin_token),
    )
    assert resp.status == 200
    resp = await client.delete(f"/api/v1/packages/{first['id']}", headers=auth(admin_token))
    assert resp.status == 204, await resp.text()
    resp = await client.get(f"/api/v1/packages/{first['id']}", headers=auth(admin_token))
    await expect_error(resp, 404, "NotFoundError")
    resp = await client.delete(f"/api/v1/packages/{first['id']}", headers=auth(admin_token))
    await expect_error(resp, 404, "NotFoundError")
    assert [p["version"] for p in await list_packages(client, admin_token)] == ["4152.2.4"]


# -- malformed bodies and the error shape --------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/v1/packages"), ("POST", "/api/v1/groups"), ("PUT", "/api/v1/channels/stable")],
)
async def test_malformed_json_is_400(client: Any, admin_token: str, method: str, path: str) -> None:
    headers = {**auth(admin_token), "Content-Type": "application/json"}
    resp = await client.request(method, path, data=b'{"arch": "amd64",', headers=headers)
    assert "JSON" in await expect_error(resp, 400, "InvalidInputError")
    resp = await client.request(method, path, data=b"\xff\xfe{}", headers=headers)
    assert "JSON" in await expect_error(resp, 400, "InvalidInputError")
    resp = await client.request(method, path, data=b'["a", "list"]', headers=headers)
    assert "object" in await expect_error(resp, 400, "InvalidInputError")


async def test_every_admin_error_is_a_problem_document(
    client: Any, admin_token: str, viewer_token: str
) -> None:
    """One request per error status the admin API answers (and per way it gets there: a handler's
    NebulaError, the auth middleware, aiohttp's own 404/405/413): each is an RFC 9457 problem
    document with the right status and kind. Catches an error answered as plain JSON or text,
    a problem with a missing or wrong member, and a status that disagrees with the body."""
    token = auth(admin_token)
    group = {"name": "twice", "arch": "amd64", "channel": "stable"}
    resp = await client.post("/api/v1/groups", json=group, headers=token)
    assert resp.status == 201, await resp.text()
    bad_signature = {
        **file_entry(),
        "crau": {
            "signed_size": 100,
            "signed_sha256": "ab" * 32,
            "signature": "c2lnbmF0dXJl",
            "delta": False,
        },
    }
    json_type = {**token, "Content-Type": "application/json"}
    cases: list[tuple[str, str, dict[str, Any], int, str | None]] = [
        ("GET", "/api/v1/channels", {}, 401, "AuthError"),
        ("GET", "/api/v1/channels", {"headers": auth("nbl_wrong")}, 401, "AuthError"),
        (
            "POST",
            "/api/v1/groups",
            {"headers": auth(viewer_token), "json": group},
            403,
            "ForbiddenError",
        ),
        (
            "GET",
            "/api/v1/packages/00000000-0000-0000-0000-000000000000",
            {"headers": token},
            404,
            "NotFoundError",
        ),
        ("GET", "/api/v1/instances?group=nosuch", {"headers": token}, 404, "NotFoundError"),
        ("GET", "/api/v1/nosuch", {"headers": token}, 404, "HTTPNotFound"),
        ("PATCH", "/api/v1/channels", {"headers": token}, 405, "HTTPMethodNotAllowed"),
        ("GET", "/api/v1/instances?limit=many", {"headers": token}, 400, "InvalidInputError"),
        ("POST", "/api/v1/packages", {"headers": token, "data": b"{"}, 400, "InvalidInputError"),
        (
            "POST",
            "/api/v1/packages/upload?version=4152.2.3&arch=amd64",
            {"headers": token, "json": {"not": "multipart"}},
            400,
            "InvalidInputError",
        ),
        (
            "POST",
            "/api/v1/packages/upload?version=4152.2.3&arch=amd64",
            {
                "headers": {**token, "Content-Type": "multipart/form-data; boundary=xyz"},
                "data": b"garbage that is no multipart body",
            },
            400,
            "InvalidInputError",
        ),
        ("POST", "/api/v1/packages/upload?arch=amd64", {"headers": token}, 400, None),
        ("POST", "/api/v1/groups", {"headers": token, "json": group}, 409, "ConflictError"),
        (
            "POST",
            "/api/v1/packages",
            {"headers": json_type, "data": b"x" * (2 << 20)},
            413,
            "RequestTooLargeError",
        ),
        (
            "POST",
            "/api/v1/packages",
            {"headers": token, "json": external(files=[bad_signature])},
            422,
            "SignatureError",
        ),
    ]
    for method, path, kwargs, status, kind in cases:
        resp = await client.request(method, path, **kwargs)
        try:
            detail = await expect_error(resp, status, kind)
        except AssertionError as exc:
            raise AssertionError(f"{method} {path}: {exc}") from None
        # A detail that says something about this request, not only the status phrase again.
        assert detail.lower() != HTTPStatus(status).phrase.lower(), (method, path, detail)
        if status == 401:
            assert resp.headers["WWW-Authenticate"].startswith("Bearer"), resp.headers


async def test_unknown_route_and_method_are_json(client: Any, admin_token: str) -> None:
    resp = await client.get("/api/v1/nosuch", headers=auth(admin_token))
    await expect_error(resp, 404)
    resp = await client.patch("/api/v1/channels", headers=auth(admin_token))
    await expect_error(resp, 405)
