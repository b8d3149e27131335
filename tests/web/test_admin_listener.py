"""With admin_listen set, the admin API and /metrics answer only on that listener: hosts, which
reach the main one, cannot touch them even without a proxy in front."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from nebula.errors import ConfigError
from nebula.web.app import create_app
from tests.conftest import free_port
from tests.factories import Host, make_settings


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("on_admin_port", [False, True])
async def test_admin_routes_only_on_the_admin_listener(
    db_url: str, tmp_path: Path, key_file: Path, admin_token: str, on_admin_port: bool
) -> None:
    port, other = free_port(), free_port()
    # The test server listens on `port`; naming it the admin port makes it the admin listener.
    admin = f"127.0.0.1:{port if on_admin_port else other}"
    listen = f"127.0.0.1:{other if on_admin_port else port}"
    settings = make_settings(db_url, tmp_path, key_file, admin_listen=admin, listen=listen)
    server = TestServer(create_app(settings), host="127.0.0.1", port=port)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{port}"
            auth = {"Authorization": f"Bearer {admin_token}"}
            async with http.get(f"{base}/api/v1/channels", headers=auth) as resp:
                assert resp.status == (200 if on_admin_port else 404)
                if not on_admin_port:
                    # Not a bare "Not Found": the operator learns the API is elsewhere.
                    body = await resp.json()
                    assert body["kind"] == "AdminListenerError"
                    assert "admin listener" in body["error"] and "--admin-listen" in body["error"]
                    assert admin not in body["error"]  # hosts reach this port too
            async with http.get(f"{base}/metrics") as resp:
                assert resp.status == (200 if on_admin_port else 404)
            # Hosts' routes work on either.
            host = Host(machine_id="d" * 32)
            async with http.post(f"{base}/v1/update/", data=host.check()) as resp:
                assert resp.status == 200
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200
    finally:
        await server.close()


def test_admin_listen_needs_its_own_port() -> None:
    from nebula.config import load_settings

    with pytest.raises(ConfigError, match="admin_listen"):
        load_settings({"listen": "0.0.0.0:8000", "admin_listen": "127.0.0.1:8000"}, environ={})
