"""`nebula sysext ...` against a real server on a real socket (both databases), and an image
uploaded by the CLI in bounded memory (64 MiB here, 1 GiB in the slow suite)."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from pathlib import Path

import aiohttp
import pytest

from tests.cli.runner import fails, nebula, ok


async def fetch(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.read()


def image(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


async def test_upload_promote_demote_delete(server: str, admin_token: str, tmp_path: Path) -> None:
    env = {"NEBULA_URL": server, "NEBULA_TOKEN": admin_token}
    x86 = image(tmp_path, "docker-compose-2.34.0-x86-64.raw", b"x86 image " * 500)
    arm = image(tmp_path, "docker-compose-2.34.0-arm64.raw", b"arm image " * 500)
    for path in (x86, arm):
        out = ok(await nebula(["sysext", "upload", str(path)], **env))
        assert hashlib.sha256(path.read_bytes()).hexdigest() in out
        assert "nebula sysext promote docker-compose 2.34.0 --group GROUP" in out
    out = ok(
        await nebula(
            [
                "sysext",
                "promote",
                "docker-compose",
                "2.34.0",
                "--group",
                "stable",
                "--arch",
                "x86-64",
            ],
            **env,
        )
    )
    assert "promoted to stable: docker-compose-2.34.0-x86-64.raw" in out
    index = f"{server}/v1/extensions/stable/docker-compose/SHA256SUMS"
    assert f"{index}" in out
    sums = hashlib.sha256(x86.read_bytes()).hexdigest()
    assert await fetch(index) == (200, f"{sums}  {x86.name}\n".encode())
    listed = ok(await nebula(["sysext", "list"], **env))
    rows = [line.split() for line in listed.splitlines()]
    assert rows[0] == ["NAME", "VERSION", "ARCH", "SIZE", "SHA256", "GROUPS"]
    assert [(r[2], r[-1]) for r in rows[1:]] == [("arm64", "-"), ("x86-64", "stable")]
    # Delete is refused while promoted, with the server's reason on one line.
    result = await nebula(["sysext", "delete", "docker-compose", "2.34.0"], **env)
    fails(result, 1, "409", "promoted to stable", "demote it first")
    ok(await nebula(["sysext", "demote", "docker-compose", "2.34.0", "--group", "stable"], **env))
    assert (await fetch(index))[0] == 404
    out = ok(
        await nebula(["sysext", "delete", "docker-compose", "2.34.0", "--arch", "arm64"], **env)
    )
    assert out.strip() == f"deleted {arm.name}"
    ok(await nebula(["sysext", "delete", "docker-compose", "2.34.0"], **env))
    assert "docker-compose" not in ok(await nebula(["sysext", "list"], **env))


@pytest.mark.parametrize(
    "name", ["kubernetes.raw", "kubernetes-v1.31.1-amd64.raw", "kubernetes-v1.31.1-x86-64.tar"]
)
async def test_bad_name_refused_before_sending(tmp_path: Path, name: str) -> None:
    # No server and no token: the name is checked first, so nothing is sent.
    result = await nebula(["sysext", "upload", str(image(tmp_path, name, b"x"))])
    fails(result, 1, name, "<ext>-<version>-<arch>.raw", "x86-64 or arm64")
    assert len(result.output.strip().splitlines()) == 1


def test_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, nebula.cli.sysext; "
        "print(' '.join(m for m in ('aiohttp', 'sqlalchemy', 'lxml', 'nebula.web', "
        "'nebula.store') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == ""


def _write_image(path: Path, size: int) -> str:
    piece = os.urandom(1 << 20)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(size >> 20):
            f.write(piece)
            digest.update(piece)
    return digest.hexdigest()


async def _upload_in_bounded_memory(
    server: str, token: str, tmp_path: Path, size: int, bound: int
) -> None:
    path = tmp_path / "big-1.0-x86-64.raw"
    sha256 = _write_image(path, size)
    # The CLI (client) and the server share this process: tracemalloc sees both sides.
    tracemalloc.start()
    try:
        out = ok(
            await nebula(["sysext", "upload", str(path)], NEBULA_URL=server, NEBULA_TOKEN=token)
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sha256 in out
    assert peak < bound, f"peak traced memory {peak / 2**20:.1f} MiB for {size >> 20} MiB"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_64_mib_image_uploads_in_bounded_memory(
    server: str, admin_token: str, tmp_path: Path
) -> None:
    await _upload_in_bounded_memory(server, admin_token, tmp_path, 64 << 20, 16 << 20)


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_1_gib_image_uploads_in_bounded_memory(
    server: str, admin_token: str, tmp_path: Path
) -> None:
    await _upload_in_bounded_memory(server, admin_token, tmp_path, 1 << 30, 32 << 20)
