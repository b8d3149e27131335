"""Release files for air-gapped first boots: GET/HEAD /v1/release/<board>/<version>/<file>,
the layout Flatcar's initrd fetches under flatcar.release_file_server_url, served from the
extension payloads stored with each version. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from yarl import URL

from nebula.web.app import create_app
from tests.conftest import FakeClock
from tests.factories import make_settings, payload_file
from tests.test_service import MAIN, NEW, upload

OLDER = "4081.2.0"


@pytest.fixture
async def stored(
    client: Any, admin_token: str, tmp_path: Path, signing_key: RSAPrivateKey
) -> dict[str, bytes]:
    """NEW for amd64 with two extensions, OLDER for arm64 with one."""
    d = tmp_path / "up" / "amd64"
    files = [
        payload_file(d, MAIN, signing_key, size=8_000),
        payload_file(d, "oem-azure.gz", signing_key, size=30_000),
        payload_file(d, "flatcar-podman.gz", signing_key, size=12_000),
    ]
    await upload(client, admin_token, NEW, files)
    a = tmp_path / "up" / "arm64"
    arm = [payload_file(a, MAIN, signing_key), payload_file(a, "flatcar-podman.gz", signing_key)]
    await upload(client, admin_token, OLDER, arm, arch="arm64")
    return {
        "azure": files[1].read_bytes(),
        "podman": files[2].read_bytes(),
        "arm-podman": arm[1].read_bytes(),
    }


async def test_extension_files_at_the_initrds_layout(client: Any, stored: dict[str, bytes]) -> None:
    for path, want in [
        (f"/v1/release/amd64-usr/{NEW}/flatcar-podman.gz", stored["podman"]),
        (f"/v1/release/amd64-usr/{NEW}/oem-azure.gz", stored["azure"]),
        (f"/v1/release/arm64-usr/{OLDER}/flatcar-podman.gz", stored["arm-podman"]),
    ]:
        resp = await client.get(path)
        assert resp.status == 200, path
        assert await resp.read() == want
        assert resp.headers["ETag"] == f'"{hashlib.sha256(want).hexdigest()}"'
        assert "Last-Modified" not in resp.headers  # the content's tag, as for payloads


async def test_range_head_and_etag_as_for_payloads(client: Any, stored: dict[str, bytes]) -> None:
    path = f"/v1/release/amd64-usr/{NEW}/oem-azure.gz"
    data = stored["azure"]
    etag = f'"{hashlib.sha256(data).hexdigest()}"'

    resp = await client.get(path, headers={"Range": "bytes=0-999"})
    assert resp.status == 206
    assert await resp.read() == data[:1000]
    assert resp.headers["Content-Range"] == f"bytes 0-999/{len(data)}"
    resp = await client.get(path, headers={"Range": "bytes=1000-"})  # a resumed download
    assert resp.status == 206
    assert await resp.read() == data[1000:]
    resp = await client.get(path, headers={"Range": f"bytes={len(data)}-"})
    assert resp.status == 416

    resp = await client.head(path)
    assert resp.status == 200
    assert int(resp.headers["Content-Length"]) == len(data)
    assert await resp.read() == b""

    resp = await client.get(path, headers={"If-None-Match": etag})
    assert resp.status == 304
    resp = await client.get(path, headers={"Range": "bytes=5-", "If-Range": '"stale"'})
    assert resp.status == 200 and await resp.read() == data  # a foreign tag: the whole file
    resp = await client.get(path, headers={"If-Match": '"other"'})
    assert resp.status == 412


@pytest.mark.parametrize(
    "path",
    [
        f"/v1/release/amd64-usr/{NEW}/{MAIN}",  # the main payload is not a release file here
        f"/v1/release/amd64-usr/{NEW}/flatcar-zfs.gz",  # not stored
        "/v1/release/amd64-usr/4593.2.4/flatcar-podman.gz",  # no such version
        f"/v1/release/arm64-usr/{NEW}/flatcar-podman.gz",  # NEW exists for amd64 only
        f"/v1/release/x86_64-usr/{NEW}/flatcar-podman.gz",  # no such board
        f"/v1/release/amd64/{NEW}/flatcar-podman.gz",
        f"/v1/release/amd64-usr/{NEW}/..",
        f"/v1/release/amd64-usr/{NEW}/%2E%2E",
        f"/v1/release/amd64-usr/..%2F..%2F{NEW}/flatcar-podman.gz",
        f"/v1/release/amd64-usr/{NEW}/..%2F..%2F..%2Fetc%2Fpasswd",
        f"/v1/release/amd64-usr/{NEW}/flatcar-podman.gz%00",
        f"/v1/release/amd64-usr/{NEW}%00/flatcar-podman.gz",
        "/v1/release/amd64-usr/" + "9" * 300 + "/flatcar-podman.gz",
        f"/v1/release/amd64-usr/%20{NEW}/flatcar-podman.gz",
        "/v1/release/amd64-usr/flatcar-podman.gz",
    ],
)
async def test_unknown_and_tricks_are_404_never_500(
    client: Any, stored: dict[str, bytes], path: str
) -> None:
    resp = await client.get(URL(path, encoded=True))
    assert resp.status == 404, (path, resp.status, await resp.text())


async def test_a_file_uploaded_on_another_replica_is_served(
    aiohttp_client: Any,
    db_url: str,
    tmp_path: Path,
    key_file: Path,
    clock: FakeClock,
    client: Any,
    admin_token: str,
    signing_key: RSAPrivateKey,
) -> None:
    """A replica whose catalog predates the upload (cache_ttl) still finds the file (one
    query), as a host may have its URL from another replica already."""
    settings = make_settings(db_url, tmp_path, key_file, cache_ttl=3600.0)
    other = await aiohttp_client(create_app(settings, clock=clock))
    path = f"/v1/release/amd64-usr/{NEW}/flatcar-podman.gz"
    assert (await other.get(path)).status == 404  # its catalog is loaded now, without it
    d = tmp_path / "late"
    podman = payload_file(d, "flatcar-podman.gz", signing_key)
    await upload(client, admin_token, NEW, [payload_file(d, MAIN, signing_key), podman])
    resp = await other.get(path)
    assert resp.status == 200
    assert await resp.read() == podman.read_bytes()


async def test_extensions_uploaded_with_a_delta_only(
    client: Any, admin_token: str, tmp_path: Path, signing_key: RSAPrivateKey
) -> None:
    d = tmp_path / "delta"
    delta = payload_file(d, MAIN, signing_key, delta=True)
    podman = payload_file(d, "flatcar-podman.gz", signing_key)
    await upload(client, admin_token, NEW, [delta, podman], from_version="3815.2.0")
    resp = await client.get(f"/v1/release/amd64-usr/{NEW}/flatcar-podman.gz")
    assert resp.status == 200 and await resp.read() == podman.read_bytes()
