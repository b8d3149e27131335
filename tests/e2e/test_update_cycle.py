"""End to end: a simulated Flatcar host updates from a real Nebula socket, as in contract §3.

Upload a signed payload and an extension through the admin API, point stable at it, then drive
one host through: update check, 13/1, a download cut in two and resumed with Range, 14/1, 3/1,
a ping while it waits for its reboot, and the first check after the reboot (new boot id,
3/2 previousversion=<old>), which must leave the host `complete`. The bytes the host got must be
the bytes uploaded, matching the advertised size and SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from lxml import etree

from tests.factories import Host, assert_status_counts_match, payload_file

OLD, NEW = "3815.2.0", "4152.2.3"


async def _omaha(http: aiohttp.ClientSession, base: str, body: bytes) -> etree._Element:
    async with http.post(
        f"{base}/v1/update/", data=body, headers={"Content-Type": "text/xml"}
    ) as resp:
        assert resp.status == 200, await resp.text()
        return etree.fromstring(await resp.read())


async def _instance(http: aiohttp.ClientSession, base: str, token: str, machine_id: str) -> dict:
    async with http.get(
        f"{base}/api/v1/instances", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        found = [i for i in (await resp.json())["instances"] if i["machine_id"] == machine_id]
    assert len(found) == 1
    return found[0]


async def test_host_updates_end_to_end(
    server: str, admin_token: str, tmp_path: Path, signing_key: RSAPrivateKey, db_url: str
) -> None:
    auth = {"Authorization": f"Bearer {admin_token}"}
    main = payload_file(tmp_path / "up", "flatcar_production_update.gz", signing_key, size=300_000)
    ext = payload_file(tmp_path / "up", "oem-azure.gz", signing_key, size=5_000)
    host = Host(machine_id="dbff85b41ae14f41bde761eefbdafaac", version=OLD, alias="web-1")

    async with aiohttp.ClientSession() as http:
        form = aiohttp.FormData()
        form.add_field("payload", main.read_bytes(), filename=main.name)
        form.add_field("extension", ext.read_bytes(), filename=ext.name)
        async with http.post(
            f"{server}/api/v1/packages/upload",
            params={"version": NEW, "arch": "amd64"},
            data=form,
            headers=auth,
        ) as resp:
            assert resp.status == 201, await resp.text()
        async with http.put(
            f"{server}/api/v1/channels/stable", headers=auth, json={"arch": "amd64", "version": NEW}
        ) as resp:
            assert resp.status == 200, await resp.text()

        # 1. The update check offers NEW, main payload first, the extension after it.
        doc = await _omaha(http, server, host.check())
        check = doc.find("app/updatecheck")
        assert check is not None and check.get("status") == "ok"
        codebase = check.find("urls/url").get("codebase")
        assert codebase.startswith(server) and codebase.endswith("/")
        packages = check.findall("manifest/packages/package")
        assert [p.get("name") for p in packages] == [main.name, ext.name]
        assert [p.get("required") for p in packages] == ["true", "false"]
        action = check.find("manifest/actions/action")
        assert action.get("DisablePayloadBackoff") == "true"
        assert (await _instance(http, server, admin_token, host.machine_id))["status"] == "granted"

        # 2. Download started.
        await _omaha(http, server, host.event(13, 1))
        assert (await _instance(http, server, admin_token, host.machine_id))[
            "status"
        ] == "downloading"

        # 3. The download: cut after the first half, resumed with `Range: bytes=N-`.
        url = codebase + packages[0].get("name")
        size = int(packages[0].get("size"))
        half = size // 2
        async with http.get(url, headers={"Range": f"bytes=0-{half - 1}"}) as resp:
            assert resp.status == 206
            first = await resp.read()
        async with http.get(url, headers={"Range": f"bytes={half}-"}) as resp:
            assert resp.status == 206
            assert resp.headers["Content-Range"] == f"bytes {half}-{size - 1}/{size}"
            second = await resp.read()
        got = first + second
        assert got == main.read_bytes()
        assert len(got) == size
        assert base64.b64encode(hashlib.sha256(got).digest()).decode() == action.get("sha256")
        assert hashlib.sha256(got).hexdigest() == packages[0].get("hash_sha256")
        async with http.get(codebase + ext.name) as resp:
            assert await resp.read() == ext.read_bytes()

        # 4. Download finished, 5./6. installed; then pings while it waits for a reboot.
        await _omaha(http, server, host.event(14, 1))
        assert (await _instance(http, server, admin_token, host.machine_id))[
            "status"
        ] == "downloaded"
        await _omaha(http, server, host.event(3, 1))
        doc = await _omaha(http, server, host.ping())
        assert doc.find("app/ping").get("status") == "ok"
        assert doc.find("app/updatecheck") is None
        assert (await _instance(http, server, admin_token, host.machine_id))[
            "status"
        ] == "installed"

        # 7./8. Rebooted into NEW: new boot id, 3/2 with the old version -> complete.
        host.version = NEW
        host.boot_id = "{7b2e7e0e-5f0a-4c59-9d7e-1f2a3b4c5d6e}"
        doc = await _omaha(http, server, host.check(previous_version=OLD))
        assert doc.find("app/updatecheck").get("status") == "noupdate"
        state = await _instance(http, server, admin_token, host.machine_id)
        assert state["status"] == "complete"
        assert state["version"] == NEW
        assert state["granted_version"] == NEW
        assert state["boot_id"] == "7b2e7e0e-5f0a-4c59-9d7e-1f2a3b4c5d6e"
        assert state["alias"] == "web-1"
    counted = await assert_status_counts_match(db_url, by_version=True)
    assert counted == {("9a2deb70-37be-4026-853f-bfdd6b347bbe", "complete"): 1}
