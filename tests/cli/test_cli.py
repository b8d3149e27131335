"""The `nebula` CLI against a real server on a real socket.

The server runs in the test's event loop; each CLI command runs in a worker thread through
click's CliRunner, because the CLI starts its own event loop with asyncio.run.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from tests.cli.runner import nebula, ok
from tests.conftest import free_port
from tests.factories import Host, payload_file

NEW = "4152.2.3"
MAIN, AZURE = "flatcar_production_update.gz", "oem-azure.gz"


async def api(base: str, token: str, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, base + path, headers={"Authorization": f"Bearer {token}"}, **kwargs
        ) as resp,
    ):
        return resp.status, (await resp.json() if resp.content_type.endswith("json") else None)


def table_rows(output: str) -> list[list[str]]:
    """The rows of a printed table, split on runs of two or more spaces; header row first."""
    return [re.split(r"\s{2,}", line.strip()) for line in output.splitlines() if line.strip()]


# -- tokens --------------------------------------------------------------------------------------


async def test_token_create_list_revoke(server: str, db_url: str) -> None:
    out = ok(await nebula(["token", "create", "--db", db_url, "--name", "cli-admin"]))
    lines = out.splitlines()
    assert len(lines) == 1  # the token and nothing else: scripts capture it
    token = lines[0]
    assert token.startswith("nbl_") and len(token) > 40

    status, body = await api(server, token, "GET", "/api/v1/whoami")
    assert (status, body) == (200, {"name": "cli-admin", "role": "admin"})

    viewer = ok(
        await nebula(["token", "create", "--name", "grafana", "--role", "viewer"], NEBULA_DB=db_url)
    ).strip()
    status, body = await api(server, viewer, "GET", "/api/v1/whoami")
    assert (status, body) == (200, {"name": "grafana", "role": "viewer"})

    # Listed by name and role; the tokens themselves are never shown again.
    out = ok(await nebula(["token", "list", "--db", db_url]))
    rows = {r[0]: r for r in table_rows(out)[1:]}
    assert rows["cli-admin"][1] == "admin" and rows["cli-admin"][-1] == "active"
    assert rows["grafana"][1] == "viewer"
    assert token not in out and viewer not in out

    # A second token of the same name is refused.
    result = await nebula(["token", "create", "--db", db_url, "--name", "cli-admin"])
    assert result.exit_code == 1
    assert "exists already" in result.output

    ok(await nebula(["token", "revoke", "--db", db_url, "--name", "grafana"]))
    status, _ = await api(server, viewer, "GET", "/api/v1/whoami")
    assert status == 401
    status, _ = await api(server, token, "GET", "/api/v1/whoami")
    assert status == 200
    result = await nebula(["token", "revoke", "--db", db_url, "--name", "grafana"])
    assert result.exit_code == 1 and "grafana" in result.output


# -- packages ------------------------------------------------------------------------------------


async def test_package_upload_and_list(
    server: str, admin_token: str, tmp_path: Path, signing_key: RSAPrivateKey
) -> None:
    main_file = payload_file(tmp_path / "up", MAIN, signing_key, size=32 * 1024)
    ext_file = payload_file(tmp_path / "up", AZURE, signing_key, size=4096)
    env = {"NEBULA_URL": server, "NEBULA_TOKEN": admin_token}

    out = ok(
        await nebula(
            [
                "package",
                "upload",
                str(main_file),
                "--version",
                NEW,
                "--arch",
                "amd64",
                "--extension",
                str(ext_file),
            ],
            **env,
        )
    )
    assert NEW in out and "amd64" in out
    main_sha = hashlib.sha256(main_file.read_bytes()).hexdigest()
    ext_sha = hashlib.sha256(ext_file.read_bytes()).hexdigest()
    assert f"{MAIN}" in out and main_sha in out and ext_sha in out

    status, body = await api(server, admin_token, "GET", "/api/v1/packages")
    assert status == 200
    [package] = body["packages"]
    assert [(f["name"], f["size"], f["sha256"]) for f in package["files"]] == [
        (MAIN, main_file.stat().st_size, main_sha),
        (AZURE, ext_file.stat().st_size, ext_sha),
    ]
    assert package["id"] in out

    out = ok(await nebula(["package", "list"], **env))
    header, *rows = table_rows(out)
    assert header[:3] == ["VERSION", "ARCH", "KIND"]
    assert len(rows) == 1
    assert rows[0][:4] == [NEW, "amd64", "full", "2"]
    assert "stored" in rows[0] and package["id"] in rows[0]

    listed = json.loads(ok(await nebula(["package", "list", "--json", "--arch", "amd64"], **env)))
    assert listed["packages"] == [package]
    listed = json.loads(ok(await nebula(["package", "list", "--json", "--arch", "arm64"], **env)))
    assert listed["packages"] == []


async def test_package_add_computes_hashes_locally(
    server: str, admin_token: str, tmp_path: Path, signing_key: RSAPrivateKey
) -> None:
    main_file = payload_file(tmp_path / "cdn", MAIN, signing_key, size=8192)
    ext_file = payload_file(tmp_path / "cdn", AZURE, signing_key, size=4096)
    env = {"NEBULA_URL": server, "NEBULA_TOKEN": admin_token}
    result = await nebula(
        [
            "package",
            "add",
            "--url",
            "https://cdn.example/x",
            str(main_file),
            "--version",
            NEW,
            "--arch",
            "amd64",
            "--extension",
            str(ext_file),
            "--json",
        ],
        **env,
    )
    package = json.loads(ok(result))
    assert package["external"] is True
    assert package["codebase"] == "https://cdn.example/x/"
    expected = [
        (
            p.name,
            len(p.read_bytes()),
            hashlib.sha1(p.read_bytes()).hexdigest(),
            hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in (main_file, ext_file)
    ]
    assert [(f["name"], f["size"], f["sha1"], f["sha256"]) for f in package["files"]] == expected

    status, stored = await api(server, admin_token, "GET", f"/api/v1/packages/{package['id']}")
    assert status == 200 and stored == package

    # Without a local copy: NAME:SIZE:SHA1:SHA256.
    name, size, sha1, sha256 = expected[0]
    package = json.loads(
        ok(
            await nebula(
                [
                    "package",
                    "add",
                    "--url",
                    "https://cdn.example/y/",
                    "--file",
                    f"{name}:{size}:{sha1}:{sha256}",
                    "--version",
                    "4152.2.4",
                    "--arch",
                    "arm64",
                    "--json",
                ],
                **env,
            )
        )
    )
    assert [(f["name"], f["size"], f["sha1"], f["sha256"]) for f in package["files"]] == [
        expected[0]
    ]

    out = ok(await nebula(["package", "delete", package["id"]], **env))
    assert package["id"] in out
    status, _ = await api(server, admin_token, "GET", f"/api/v1/packages/{package['id']}")
    assert status == 404


# -- channels, groups, instances -----------------------------------------------------------------


async def test_channel_set_and_list(
    server: str, admin_token: str, tmp_path: Path, signing_key: RSAPrivateKey
) -> None:
    env = {"NEBULA_URL": server, "NEBULA_TOKEN": admin_token}
    main_file = payload_file(tmp_path / "up", MAIN, signing_key, size=4096)
    ok(
        await nebula(
            ["package", "upload", str(main_file), "--version", NEW, "--arch", "amd64"], **env
        )
    )

    out = ok(await nebula(["channel", "set", "stable", "--arch", "amd64", "--version", NEW], **env))
    assert out.strip() == f"stable (amd64) now offers {NEW}"

    header, *rows = table_rows(ok(await nebula(["channel", "list"], **env)))
    assert header[:3] == ["CHANNEL", "ARCH", "VERSION"]
    by_key = {(r[0], r[1]): r for r in rows}
    assert len(by_key) == 8
    assert by_key[("stable", "amd64")][2] == NEW
    assert by_key[("stable", "amd64")][-1] == "ops"  # who set it
    assert by_key[("stable", "arm64")][2] == "-"
    assert by_key[("beta", "amd64")][2] == "-"

    listed = json.loads(ok(await nebula(["channel", "list", "--json"], **env)))
    assert {(c["name"], c["arch"]): c["version"] for c in listed["channels"]}[
        ("stable", "amd64")
    ] == NEW


async def test_group_create_list_show(server: str, admin_token: str) -> None:
    env = {"NEBULA_URL": server, "NEBULA_TOKEN": admin_token}
    out = ok(
        await nebula(
            [
                "group",
                "create",
                "canary",
                "--arch",
                "amd64",
                "--channel",
                "beta",
                "--track",
                "canary-hosts",
                "--description",
                "first wave",
            ],
            **env,
        )
    )
    assert "canary" in out and "canary-hosts" in out and "beta" in out
    status, created = await api(server, admin_token, "GET", "/api/v1/groups/canary")
    assert status == 200
    assert (created["track"], created["channel"], created["description"]) == (
        "canary-hosts",
        "beta",
        "first wave",
    )
    assert created["id"] in out

    header, *rows = table_rows(ok(await nebula(["group", "list"], **env)))
    assert header[:4] == ["NAME", "TRACK", "ARCH", "CHANNEL"]
    by_key = {(r[0], r[2]): r for r in rows}
    assert len(by_key) == 9
    assert by_key[("canary", "amd64")][:5] == ["canary", "canary-hosts", "amd64", "beta", "on"]

    out = ok(await nebula(["group", "show", "canary-hosts"], **env))
    assert out.splitlines()[0] == "group canary (amd64), track canary-hosts, channel beta"
    assert created["id"] in out
    assert "hosts: none" in out

    shown = json.loads(
        ok(await nebula(["group", "show", "stable", "--arch", "arm64", "--json"], **env))
    )
    assert shown["id"] == "11a585f6-9418-4df0-8863-78b2fd3240f8"

    result = await nebula(["group", "show", "stable"], **env)
    assert result.exit_code == 1
    assert "--arch" in result.output


async def test_instance_list(server: str, admin_token: str) -> None:
    env = {"NEBULA_URL": server, "NEBULA_TOKEN": admin_token}
    out = ok(await nebula(["instance", "list"], **env))
    assert table_rows(out)[1:] == []

    hosts = [
        Host(machine_id="a" * 32, alias="web-1"),
        Host(machine_id="b" * 32, track="beta", version="3760.1.0"),
    ]
    async with aiohttp.ClientSession() as http:
        for host in hosts:
            async with http.post(
                f"{server}/v1/update/", data=host.check(), headers={"Content-Type": "text/xml"}
            ) as resp:
                assert resp.status == 200

    header, *rows = table_rows(ok(await nebula(["instance", "list"], **env)))
    assert header[0] == "MACHINE ID"
    assert {r[0] for r in rows} == {"a" * 32, "b" * 32}
    web1 = next(r for r in rows if r[0] == "a" * 32)
    assert "web-1" in web1 and "stable" in web1 and "3815.2.0" in web1

    listed = json.loads(
        ok(
            await nebula(
                ["instance", "list", "--group", "beta", "--arch", "amd64", "--json"], **env
            )
        )
    )
    assert [(i["machine_id"], i["group"], i["version"]) for i in listed["instances"]] == [
        ("b" * 32, "beta", "3760.1.0")
    ]


# -- errors --------------------------------------------------------------------------------------


async def test_missing_token_is_a_usage_error(server: str, admin_token: str) -> None:
    for args in (["channel", "list"], ["package", "list"], ["group", "show", "stable"]):
        result = await nebula(args, NEBULA_URL=server)
        assert result.exit_code == 2, result.output  # click's usage error
        assert "NEBULA_TOKEN" in result.output and "token" in result.output
        assert "Traceback" not in result.output

    # --server and --token work without the environment.
    out = ok(await nebula(["channel", "list", "--server", server, "--token", admin_token]))
    assert "stable" in out


async def test_server_errors_show_the_message(
    server: str, admin_token: str, viewer_token: str, tmp_path: Path
) -> None:
    env = {"NEBULA_URL": server, "NEBULA_TOKEN": admin_token}
    unsigned = payload_file(tmp_path / "bad", MAIN, None, size=4096)
    cases: list[tuple[list[str], dict[str, str], list[str]]] = [
        (
            ["package", "upload", str(unsigned), "--version", NEW, "--arch", "amd64"],
            env,
            ["422", MAIN, "unsigned"],
        ),
        (
            ["channel", "set", "stable", "--arch", "amd64", "--version", "9999.0.0"],
            env,
            ["404", "no amd64 package of version 9999.0.0"],
        ),
        (
            ["group", "create", "stable", "--arch", "amd64", "--channel", "stable"],
            env,
            ["409", "exists already"],
        ),
        (
            ["group", "create", "x", "--arch", "amd64", "--channel", "nightly"],
            env,
            ["404", "nightly"],
        ),
        (
            ["channel", "list"],
            {**env, "NEBULA_TOKEN": "nbl_wrong"},
            ["401", "unknown or revoked token"],
        ),
        (
            ["channel", "set", "stable", "--arch", "amd64", "--version", NEW],
            {**env, "NEBULA_TOKEN": viewer_token},
            ["403", "read only"],
        ),
        (["package", "delete", "00000000-0000-0000-0000-000000000000"], env, ["404"]),
    ]
    for args, case_env, words in cases:
        result = await nebula(args, **case_env)
        assert result.exit_code == 1, (args, result.output)
        for word in words:
            assert word in result.output, (args, word, result.output)
        assert "Traceback" not in result.output
    # Nothing changed.
    status, body = await api(server, admin_token, "GET", "/api/v1/groups")
    assert status == 200 and len(body["groups"]) == 8
    status, body = await api(server, admin_token, "GET", "/api/v1/packages")
    assert status == 200 and body["packages"] == []


async def test_unreachable_server() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = await nebula(["channel", "list"], NEBULA_URL=url, NEBULA_TOKEN="nbl_any")
    assert result.exit_code == 1
    assert "cannot reach" in result.output and url in result.output
