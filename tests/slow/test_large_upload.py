"""A large payload streams through upload, verification, hashing and storage without being held
in memory (slow suite). The client and the server share this process, so tracemalloc sees both.
"""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from tests import crau

pytestmark = pytest.mark.slow

SIZE = 256 << 20


def _write_large_payload(path: Path, key: RSAPrivateKey) -> str:
    """A signed payload of SIZE data bytes, written in 1 MiB pieces; returns its SHA-256."""
    piece = os.urandom(1 << 20)
    data_hash = hashlib.sha256()
    for _ in range(SIZE >> 20):
        data_hash.update(piece)
    with path.open("wb") as f:
        crau.write_payload(
            f,
            [(2, key)],
            data=(piece for _ in range(SIZE >> 20)),
            data_size=SIZE,
            data_hash=data_hash.digest(),
        )
    whole = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            whole.update(chunk)
    return whole.hexdigest()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_256_mib_upload_stays_small_in_memory(
    client: Any, admin_token: str, tmp_path: Path, signing_key: RSAPrivateKey, settings: Any
) -> None:
    path = tmp_path / "flatcar_production_update.gz"
    sha256 = _write_large_payload(path, signing_key)
    tracemalloc.start()
    try:
        with path.open("rb") as f:
            form = aiohttp.FormData()
            form.add_field("payload", f, filename=path.name)
            resp = await client.post(
                "/api/v1/packages/upload",
                params={"version": "4152.2.3", "arch": "amd64"},
                data=form,
                headers={"Authorization": f"Bearer {admin_token}"},
            )
            body = await resp.json()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert resp.status == 201, body
    assert body["files"][0]["sha256"] == sha256
    assert body["files"][0]["size"] == path.stat().st_size
    stored = Path(settings.payload_dir) / "objects" / sha256[:2] / sha256
    assert stored.stat().st_size == path.stat().st_size
    # The file is 256 MiB; what streams through may hold a few MiB of buffers at once.
    assert peak < 32 << 20, f"peak traced memory {peak / 2**20:.1f} MiB"
