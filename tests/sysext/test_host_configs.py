"""Host configs that point at images Nebula hosts: the first download's URL is Nebula's and its
SHA-256 comes from the store (GET /v1/ignition/{group}, and `nebula host-config` with a token),
and that URL really serves those bytes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nebula.web.app import create_app
from tests.cli.runner import nebula, ok
from tests.conftest import FakeClock
from tests.factories import make_settings

PUBLIC = "http://nebula.test"  # make_settings' public_url
X86, ARM = b"k8s x86-64 image " * 64, b"k8s arm64 image " * 64
FX86, FARM = "kubernetes-v1.31.1-x86-64.raw", "kubernetes-v1.31.1-arm64.raw"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def first_image(config: dict[str, Any], file_name: str) -> dict[str, Any]:
    path = f"/opt/extensions/kubernetes/{file_name}"
    return next(f for f in config["storage"]["files"] if f["path"] == path)["contents"]  # type: ignore[no-any-return]


async def stock(http: Any, base: str, token: str) -> None:
    """Both arches of kubernetes v1.31.1 uploaded; promoted to stable only."""
    for name, data in ((FX86, X86), (FARM, ARM)):
        resp = await http.post(
            f"{base}/api/v1/sysext/images", params={"file": name}, data=data, headers=auth(token)
        )
        assert resp.status == 201, await resp.text()
    body = {"name": "kubernetes", "version": "v1.31.1", "group": "stable"}
    resp = await http.post(f"{base}/api/v1/sysext/promotions", json=body, headers=auth(token))
    assert resp.status == 200, await resp.text()


@pytest.fixture
async def public(
    db_url: str, tmp_path: Path, key_file: Path, clock: FakeClock, aiohttp_client: Any
) -> Any:
    settings = make_settings(db_url, tmp_path, key_file, ignition_public=True)
    return await aiohttp_client(create_app(settings, clock=clock))


async def test_ignition_route_takes_hashes_from_the_store(public: Any, admin_token: str) -> None:
    await stock(public, "", admin_token)

    async def config(group: str, **query: str) -> dict[str, Any]:
        resp = await public.get(
            f"/v1/ignition/{group}", params={"sysext": "kubernetes=v1.31.1", **query}
        )
        assert resp.status == 200, await resp.text()
        return json.loads(await resp.text())  # type: ignore[no-any-return]

    contents = first_image(await config("stable"), FX86)
    assert contents["source"] == f"{PUBLIC}/v1/extensions/stable/kubernetes/{FX86}"
    assert contents["verification"] == {"hash": f"sha256-{hashlib.sha256(X86).hexdigest()}"}
    contents = first_image(await config("stable", arch="arm64"), FARM)
    assert contents["verification"] == {"hash": f"sha256-{hashlib.sha256(ARM).hexdigest()}"}
    # Not promoted to beta: beta's hosts cannot fetch it, and no hash is made up.
    assert "verification" not in first_image(await config("beta"), FX86)
    # An image host of the operator's own: Nebula's hashes are not its hashes.
    other = await config("stable", **{"sysext-url": "https://images.example.com/x"})
    assert "verification" not in first_image(other, FX86)


async def test_host_config_asks_the_api_and_the_url_serves_the_image(
    server: str, admin_token: str
) -> None:
    async with aiohttp.ClientSession() as http:
        await stock(http, server, admin_token)
    args = ["host-config", "--group", "stable", "--sysext", "kubernetes=v1.31.1", "-o", "ignition"]
    result = await nebula(args, NEBULA_URL=server, NEBULA_TOKEN=admin_token)
    contents = first_image(json.loads(ok(result)), FX86)
    assert contents["verification"] == {"hash": f"sha256-{hashlib.sha256(X86).hexdigest()}"}
    assert result.stderr == ""
    # What the host's first boot fetches is there, and is what the hash says.
    async with aiohttp.ClientSession() as http, http.get(contents["source"]) as resp:
        assert resp.status == 200 and await resp.read() == X86
    # Offline (no token, or --offline): no hash, and a warning that says so.
    for extra, env in (([], {}), (["--offline"], {"NEBULA_TOKEN": admin_token})):
        result = await nebula([*args, *extra], NEBULA_URL=server, **env)
        assert "verification" not in first_image(json.loads(ok(result)), FX86)
        assert f"{FX86} is downloaded without verification" in result.stderr
    # A group it is not promoted to: said on stderr, not hidden.
    beta = ["host-config", "--group", "beta", "--sysext", "kubernetes=v1.31.1"]
    result = await nebula(beta, NEBULA_URL=server, NEBULA_TOKEN=admin_token)
    assert result.exit_code == 0
    assert f"{FX86} is not promoted to beta" in result.stderr


async def test_host_config_survives_an_unreachable_api(admin_token: str) -> None:
    args = ["host-config", "--group", "stable", "--sysext", "kubernetes=v1.31.1"]
    result = await nebula([*args, "--server", "http://127.0.0.1:9"], NEBULA_TOKEN=admin_token)
    assert result.exit_code == 0, result.output
    assert "sysext hashes not looked up" in result.stderr and "cannot reach" in result.stderr
