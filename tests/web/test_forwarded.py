"""Hosts' addresses through reverse proxies: X-Forwarded-For is believed only from trusted
proxies, read from the right, so a host cannot plant an address of its choosing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from nebula.errors import ConfigError
from nebula.store import db
from nebula.store.models import Instance
from nebula.web.app import create_app
from nebula.web.forwarded import client_address, parse_networks
from tests.factories import Host, make_settings

PROXIES = parse_networks(["10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(
    ("remote", "header", "networks", "expected"),
    [
        ("198.51.100.7", None, PROXIES, "198.51.100.7"),  # direct, no header
        ("198.51.100.7", "203.0.113.9", PROXIES, "198.51.100.7"),  # header from a non-proxy
        ("10.1.2.3", "203.0.113.9", PROXIES, "203.0.113.9"),  # one trusted proxy
        ("10.1.2.3", "203.0.113.9, 10.4.4.4", PROXIES, "203.0.113.9"),  # two proxies
        ("10.1.2.3", "6.6.6.6, 203.0.113.9", PROXIES, "203.0.113.9"),  # host forged the left
        ("10.1.2.3", "10.5.5.5, 10.4.4.4", PROXIES, "10.1.2.3"),  # only proxies: keep remote
        ("10.1.2.3", "not-an-ip", PROXIES, "10.1.2.3"),  # garbage header
        ("fd00::1", "2001:db8::5", PROXIES, "2001:db8::5"),  # IPv6
        ("10.1.2.3", "203.0.113.9", (), "10.1.2.3"),  # no proxies configured
        (None, "203.0.113.9", PROXIES, None),
    ],
)
def test_client_address(
    remote: str | None, header: str | None, networks: Any, expected: str | None
) -> None:
    assert client_address(remote, header, networks) == expected


def test_bad_proxy_setting_is_a_config_error(tmp_path: Path) -> None:
    from nebula.config import load_settings

    with pytest.raises(ConfigError, match="trusted_proxy"):
        load_settings({"trusted_proxy": ("10.0.0.0/33",)}, environ={})
    settings = load_settings({}, environ={"NEBULA_TRUSTED_PROXY": "10.0.0.0/8, fd00::/8"})
    assert settings.trusted_proxy == ("10.0.0.0/8", "fd00::/8")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_recorded_ip_is_the_hosts_behind_a_trusted_proxy(
    aiohttp_client: Any, db_url: str, tmp_path: Path, key_file: Path
) -> None:
    # The test client connects from 127.0.0.1: make loopback the trusted proxy.
    settings = make_settings(db_url, tmp_path, key_file, trusted_proxy=("127.0.0.1/32",))
    client = await aiohttp_client(create_app(settings))
    host = Host(machine_id="c" * 32)
    resp = await client.post(
        "/v1/update/", data=host.check(), headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.9"}
    )
    assert resp.status == 200
    engine = db.create_engine(db_url)
    try:
        async with engine.connect() as conn:
            ip = (await conn.execute(select(Instance.ip))).scalar_one()
    finally:
        await engine.dispose()
    assert ip == "203.0.113.9"
