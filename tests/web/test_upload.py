"""Payload uploads (POST /api/v1/packages/upload): what is stored, and everything refused.

A refused upload must say which problem it has, and leave nothing behind: no package row, no file
in the payload store (objects/ or incoming/).
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from nebula.config import Settings
from tests import crau
from tests.problem import check_problem

NEW, OLD = "4152.2.3", "3815.2.0"
MAIN, AZURE, PODMAN = "flatcar_production_update.gz", "oem-azure.gz", "flatcar-podman.gz"
UPLOAD = "/api/v1/packages/upload"


@pytest.fixture(scope="module")
def untrusted_key() -> RSAPrivateKey:
    return crau.make_rsa_key()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def payload(key: RSAPrivateKey | None, size: int = 4096, tag: bytes = b"", **kwargs: Any) -> bytes:
    block = (tag + b"-payload-data-" + str(size).encode()) * (size // 8 + 1)
    return crau.build_payload(key, data=block[:size], **kwargs)


def form(*parts: tuple[str, str, bytes]) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for field, filename, content in parts:
        data.add_field(field, content, filename=filename, content_type="application/octet-stream")
    return data


def params(version: str = NEW, arch: str = "amd64", **extra: str) -> dict[str, str]:
    return {"version": version, "arch": arch, **extra}


def stored_files(settings: Settings, sub: str = "objects") -> list[bytes]:
    root = Path(settings.payload_dir) / sub
    return sorted(p.read_bytes() for p in root.rglob("*") if p.is_file())


async def package_count(client: Any, token: str) -> int:
    resp = await client.get("/api/v1/packages", headers=auth(token))
    assert resp.status == 200
    return len((await resp.json())["packages"])


async def error_of(resp: aiohttp.ClientResponse, status: int) -> dict[str, str]:
    raw = await resp.text()
    assert resp.status == status, raw
    body = await resp.json()
    check_problem(resp.content_type, body, status)
    return body  # type: ignore[no-any-return]


async def assert_nothing_stored(client: Any, token: str, settings: Settings) -> None:
    assert await package_count(client, token) == 0
    assert stored_files(settings, "objects") == []
    assert stored_files(settings, "incoming") == []


async def test_upload_with_extensions(
    client: Any, admin_token: str, settings: Settings, signing_key: RSAPrivateKey
) -> None:
    files = [
        (MAIN, payload(signing_key, 64 * 1024, b"main")),
        (AZURE, payload(signing_key, 4096, b"azure")),
        (PODMAN, payload(signing_key, 8192, b"podman")),
    ]
    parts = [("payload", *files[0]), *(("extension", *f) for f in files[1:])]
    resp = await client.post(UPLOAD, params=params(), data=form(*parts), headers=auth(admin_token))
    assert resp.status == 201, await resp.text()
    package = await resp.json()

    assert (package["version"], package["arch"], package["kind"]) == (NEW, "amd64", "full")
    assert package["from_version"] is None
    assert package["external"] is False
    assert package["codebase"] == f"http://nebula.test/v1/payloads/{package['id']}/"
    assert package["created_by"] == "ops"
    der = signing_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert [
        (f["name"], f["size"], f["sha1"], f["sha256"], f["required"], f["signer"])
        for f in package["files"]
    ] == [
        (
            name,
            len(data),
            hashlib.sha1(data).hexdigest(),
            hashlib.sha256(data).hexdigest(),
            name == MAIN,
            hashlib.sha256(der).hexdigest(),
        )
        for name, data in files
    ]

    # The payload store holds exactly these bytes, unmodified; nothing is left in incoming/.
    assert stored_files(settings) == sorted(data for _, data in files)
    assert stored_files(settings, "incoming") == []

    resp = await client.get(f"/api/v1/packages/{package['id']}", headers=auth(admin_token))
    assert await resp.json() == package
    resp = await client.get("/api/v1/packages", headers=auth(admin_token))
    assert (await resp.json())["packages"] == [package]


async def test_refused_payloads_say_why(
    client: Any,
    admin_token: str,
    settings: Settings,
    signing_key: RSAPrivateKey,
    untrusted_key: RSAPrivateKey,
) -> None:
    good = payload(signing_key)
    cases: list[tuple[str, bytes, dict[str, str], str, list[str]]] = [
        ("unsigned", payload(None), params(), "UnsignedPayloadError", ["unsigned"]),
        (
            "signature version 1 only",
            payload(signing_key, sig_version=1),
            params(),
            "UnsignedPayloadError",
            ["version-2"],
        ),
        (
            "untrusted key",
            payload(untrusted_key),
            params(),
            "SignatureError",
            ["signature", "trusted"],
        ),
        (
            "corrupted signature",
            payload(signing_key, corrupt_signature=True),
            params(),
            "SignatureError",
            ["signature"],
        ),
        ("truncated", good[:-300], params(), "TruncatedPayloadError", ["truncated"]),
        ("truncated in the manifest", good[:30], params(), "TruncatedPayloadError", ["truncated"]),
        ("gzip", gzip.compress(b"not a payload" * 100), params(), "NotCrAUError", ["CrAU", "gzip"]),
        ("empty", b"", params(), "NotCrAUError", ["empty"]),
        ("trailing bytes", good + b"\0" * 10, params(), "MalformedPayloadError", ["trailing"]),
        (
            "delta without from_version",
            payload(signing_key, delta=True),
            params(),
            "PayloadError",
            ["delta", "from"],
        ),
        (
            "full with from_version",
            good,
            params(from_version=OLD),
            "PayloadError",
            ["full", "from"],
        ),
    ]
    for case, data, query, kind, words in cases:
        resp = await client.post(
            UPLOAD, params=query, data=form(("payload", MAIN, data)), headers=auth(admin_token)
        )
        try:
            body = await error_of(resp, 422)
        except AssertionError as exc:
            raise AssertionError(f"{case}: {exc}") from None
        assert body["kind"] == kind, (case, body)
        assert MAIN in body["error"], (case, body)  # which file
        for word in words:  # which problem
            assert word in body["error"], (case, word, body)
        await assert_nothing_stored(client, admin_token, settings)


@pytest.mark.parametrize("bad_position", [1, 2])
async def test_a_bad_extension_refuses_the_whole_package(
    client: Any,
    admin_token: str,
    settings: Settings,
    signing_key: RSAPrivateKey,
    untrusted_key: RSAPrivateKey,
    bad_position: int,
) -> None:
    files = [
        (MAIN, payload(signing_key, 16 * 1024)),
        (AZURE, payload(signing_key, 4096, b"azure")),
        (PODMAN, payload(signing_key, 4096, b"podman")),
    ]
    bad_name = files[bad_position][0]
    files[bad_position] = (bad_name, payload(untrusted_key, 4096, b"bad"))
    parts = [("payload", *files[0]), *(("extension", *f) for f in files[1:])]
    resp = await client.post(UPLOAD, params=params(), data=form(*parts), headers=auth(admin_token))
    body = await error_of(resp, 422)
    assert body["kind"] == "SignatureError"
    assert bad_name in body["error"]
    await assert_nothing_stored(client, admin_token, settings)


async def test_duplicate_upload_is_409_and_stores_nothing(
    client: Any, admin_token: str, settings: Settings, signing_key: RSAPrivateKey
) -> None:
    first = payload(signing_key, tag=b"first")
    resp = await client.post(
        UPLOAD, params=params(), data=form(("payload", MAIN, first)), headers=auth(admin_token)
    )
    assert resp.status == 201, await resp.text()

    for again in (first, payload(signing_key, tag=b"second")):
        resp = await client.post(
            UPLOAD,
            params=params(),
            data=form(("payload", MAIN, again), ("extension", AZURE, payload(signing_key))),
            headers=auth(admin_token),
        )
        body = await error_of(resp, 409)
        assert body["kind"] == "ConflictError"
        assert NEW in body["error"] and "exists" in body["error"]
        # Neither the refused main payload nor its extension went into the store.
        assert stored_files(settings) == [first]
        assert stored_files(settings, "incoming") == []
    assert await package_count(client, admin_token) == 1

    # The same version for the other arch is another package.
    resp = await client.post(
        UPLOAD,
        params=params(arch="arm64"),
        data=form(("payload", MAIN, first)),
        headers=auth(admin_token),
    )
    assert resp.status == 201, await resp.text()
    assert await package_count(client, admin_token) == 2
    assert stored_files(settings) == [first]  # the same bytes are kept once


async def test_delta_upload(client: Any, admin_token: str, signing_key: RSAPrivateKey) -> None:
    full = payload(signing_key, tag=b"full")
    delta = payload(signing_key, tag=b"delta", delta=True)
    resp = await client.post(
        UPLOAD, params=params(), data=form(("payload", MAIN, full)), headers=auth(admin_token)
    )
    assert resp.status == 201, await resp.text()
    resp = await client.post(
        UPLOAD,
        params=params(from_version=OLD),
        data=form(("payload", MAIN, delta)),
        headers=auth(admin_token),
    )
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert (created["kind"], created["from_version"], created["version"]) == ("delta", OLD, NEW)
    assert created["files"][0]["sha256"] == hashlib.sha256(delta).hexdigest()

    resp = await client.get("/api/v1/packages", headers=auth(admin_token))
    listed = {(p["kind"], p["from_version"]) for p in (await resp.json())["packages"]}
    assert listed == {("full", None), ("delta", OLD)}

    # A second delta from the same version conflicts; one from another version does not.
    resp = await client.post(
        UPLOAD,
        params=params(from_version=OLD),
        data=form(("payload", MAIN, delta)),
        headers=auth(admin_token),
    )
    assert (await error_of(resp, 409))["kind"] == "ConflictError"
    resp = await client.post(
        UPLOAD,
        params=params(from_version="3760.2.0"),
        data=form(("payload", MAIN, delta)),
        headers=auth(admin_token),
    )
    assert resp.status == 201, await resp.text()


def _raw_multipart(*parts: tuple[str, str | None, bytes]) -> aiohttp.MultipartWriter:
    """A form whose parts may lack a file name (aiohttp.FormData always gives bytes one)."""
    writer = aiohttp.MultipartWriter("form-data")
    for field, filename, content in parts:
        part = writer.append(content, {"Content-Type": "application/octet-stream"})
        if filename is None:
            part.set_content_disposition("form-data", name=field)
        else:
            part.set_content_disposition("form-data", name=field, filename=filename)
    return writer


BOUNDARY = "nebula-test-boundary"


def _hand_made(filename: str, content: bytes) -> bytes:
    """One payload part whose file name is sent exactly as given (clients quote a '/')."""
    return (
        (
            f"--{BOUNDARY}\r\n"
            f'Content-Disposition: form-data; name="payload"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


async def test_malformed_uploads_are_400(
    client: Any, admin_token: str, settings: Settings, signing_key: RSAPrivateKey
) -> None:
    main = payload(signing_key, tag=b"main")
    ext = payload(signing_key, tag=b"ext")
    cases: list[tuple[str, dict[str, str], Any, list[str]]] = [
        (
            "extension first",
            params(),
            form(("extension", AZURE, ext), ("payload", MAIN, main)),
            ["payload"],
        ),
        (
            "two payloads",
            params(),
            form(("payload", MAIN, main), ("payload", "second.gz", ext)),
            ["payload"],
        ),
        ("unknown part name", params(), form(("file", MAIN, main)), ["payload", "extension"]),
        ("only an extension", params(), form(("extension", AZURE, ext)), ["payload"]),
        ("no parts", params(), _raw_multipart(), ["payload"]),
        ("no file name", params(), _raw_multipart(("payload", None, main)), ["file name"]),
        ("path as file name", params(), _hand_made("../evil.gz", main), ["../evil.gz"]),
        (
            "quoted path as file name",
            params(),
            form(("payload", "../evil.gz", main)),
            ["file name"],
        ),
        (
            "same extension twice",
            params(),
            form(("payload", MAIN, main), ("extension", AZURE, ext), ("extension", AZURE, ext)),
            [AZURE],
        ),
        ("no version", {"arch": "amd64"}, form(("payload", MAIN, main)), ["version"]),
        ("bad arch", params(arch="x86_64"), form(("payload", MAIN, main)), ["arch"]),
        (
            "bad from_version",
            params(from_version="yesterday"),
            form(("payload", MAIN, main)),
            ["from-version"],
        ),
    ]
    for case, query, data, words in cases:
        headers = auth(admin_token)
        if isinstance(data, bytes):
            headers["Content-Type"] = f"multipart/form-data; boundary={BOUNDARY}"
        resp = await client.post(UPLOAD, params=query, data=data, headers=headers)
        try:
            body = await error_of(resp, 400)
        except AssertionError as exc:
            raise AssertionError(f"{case}: {exc}") from None
        assert body["kind"] == "InvalidInputError", (case, body)
        for word in words:
            assert word in body["error"], (case, word, body)
        await assert_nothing_stored(client, admin_token, settings)

    # The refusals left the server in order: a good upload still works.
    resp = await client.post(
        UPLOAD, params=params(), data=form(("payload", MAIN, main)), headers=auth(admin_token)
    )
    assert resp.status == 201, await resp.text()
