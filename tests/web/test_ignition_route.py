"""GET /v1/ignition/{group}: the host config served to hosts, on SQLite and PostgreSQL.

Off by default (404), on with `ignition_public`; a group Nebula does not have is a 404; the
answer is the very JSON `nebula host-config -o ignition` prints for the same options, with
Nebula's public URL as SERVER, and validates against Ignition's v3.4 schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from nebula.provisioning import build_spec, render_ignition
from nebula.web.app import create_app
from tests.conftest import FakeClock
from tests.factories import make_settings
from tests.provisioning.test_host_config import SCHEMA, text_of

PUBLIC = "http://nebula.test"  # make_settings' public_url


@pytest.fixture
async def public(
    db_url: str, tmp_path: Path, key_file: Path, clock: FakeClock, aiohttp_client: Any
) -> Any:
    """A client of an app that serves host configs."""
    settings = make_settings(db_url, tmp_path, key_file, ignition_public=True)
    return await aiohttp_client(create_app(settings, clock=clock))


async def test_off_by_default(client: Any) -> None:
    """Catches a route that serves configs (the group and server of a fleet) unasked."""
    resp = await client.get("/v1/ignition/stable")
    assert resp.status == 404
    assert "ignition_public" in await resp.text()


async def test_on_serves_the_groups_config(public: Any) -> None:
    resp = await public.get("/v1/ignition/stable")
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.text()
    assert body == render_ignition(build_spec(group="stable", server=PUBLIC))
    config = json.loads(body)
    jsonschema.Draft4Validator(SCHEMA).validate(config)
    assert text_of(config, "/etc/flatcar/update.conf") == (
        f"SERVER={PUBLIC}/v1/update/\nGROUP=stable\n"
    )


async def test_unknown_group_is_404(public: Any) -> None:
    for ref in ("nope", "STABLE", "stable%00", "..", "a" * 300):
        resp = await public.get(f"/v1/ignition/{ref}")
        assert resp.status == 404, (ref, resp.status)


async def test_options_as_the_cli_takes_them(public: Any) -> None:
    query = [
        ("alias-from-hostname", "true"),
        ("reboot-strategy", "reboot"),
        ("reboot-window", "Sun 03:00"),
        ("reboot-window-length", "2h"),
        ("extension", "podman"),
        ("extension", "zfs"),
        ("sysext", "kubernetes=v1.31.1:" + "0f" * 32),
        ("release-server", "1"),
        ("arch", "arm64"),
    ]
    resp = await public.get("/v1/ignition/stable", params=query)
    assert resp.status == 200, await resp.text()
    config = json.loads(await resp.text())
    jsonschema.Draft4Validator(SCHEMA).validate(config)
    assert config == json.loads(
        render_ignition(
            build_spec(
                group="stable",
                server=PUBLIC,
                arch="arm64",
                alias_from_hostname=True,
                reboot_strategy="reboot",
                reboot_window="Sun 03:00",
                reboot_window_length="2h",
                extensions=["podman", "zfs"],
                sysexts=["kubernetes=v1.31.1:" + "0f" * 32],
                release_server=True,
            )
        )
    )


@pytest.mark.parametrize(
    ("query", "word"),
    [
        ({"reboot-strategy": "sometimes"}, "reboot strategy"),
        ({"reboot-window": "Thu 04:00"}, "both"),
        ({"sysext": "kubernetes"}, "NAME=VERSION"),
        ({"release-server": "maybe"}, "true or false"),
        ({"arch": "x86"}, "arch"),
        ({"colour": "blue"}, "unknown option"),
    ],
)
async def test_bad_options_are_400_not_500(public: Any, query: dict[str, str], word: str) -> None:
    resp = await public.get("/v1/ignition/stable", params=query)
    assert resp.status == 400
    assert word in await resp.text()


async def test_group_by_name_or_id_gives_its_track(public: Any, admin_token: str) -> None:
    resp = await public.post(
        "/api/v1/groups",
        json={"name": "canary", "track": "canary-track", "arch": "amd64", "channel": "stable"},
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert resp.status == 201, await resp.text()
    by_name = json.loads(await (await public.get("/v1/ignition/canary")).text())
    assert "GROUP=canary-track\n" in text_of(by_name, "/etc/flatcar/update.conf")
    # A legacy CoreOS group UUID is a track hosts may send as it is.
    uuid = "9a2deb70-37be-4026-853f-bfdd6b347bbe"
    by_id = json.loads(await (await public.get(f"/v1/ignition/{uuid}")).text())
    assert f"GROUP={uuid}\n" in text_of(by_id, "/etc/flatcar/update.conf")


async def test_an_arm64_only_group_gets_arm64_images(public: Any, admin_token: str) -> None:
    resp = await public.post(
        "/api/v1/groups",
        json={"name": "edge-arm", "arch": "arm64", "channel": "stable"},
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert resp.status == 201, await resp.text()
    resp = await public.get("/v1/ignition/edge-arm", params={"sysext": "tailscale=1.70.0"})
    files = {f["path"] for f in json.loads(await resp.text())["storage"]["files"]}
    assert "/opt/extensions/tailscale/tailscale-1.70.0-arm64.raw" in files
    # Asked for amd64 where the group exists only for arm64: not this group.
    resp = await public.get("/v1/ignition/edge-arm", params={"arch": "amd64"})
    assert resp.status == 404
