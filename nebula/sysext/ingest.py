"""One sysext image taken in from a stream: written to the payload store's incoming/ and hashed
on the way, in 1 MiB steps on a worker thread, so a 1 GiB image neither fills memory nor stalls
the event loop that answers hosts. The caller commits the temporary file (BlobStore.commit,
which fsyncs and renames it into place) once the image is recorded, or discards it.

A sysext image is not signed as a payload is (sysupdate verifies it against SHA256SUMS), so
there is nothing to check but the hash and size. Imports nebula.store.blobs only.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from nebula.store.blobs import BlobStore, close_synced

STEP = 1 << 20


@dataclass(frozen=True, slots=True)
class Received:
    sha256: str
    size: int
    temp: Path  # still in incoming/: BlobStore.commit or discard


def _write(out: BinaryIO, digest: Any, data: bytes) -> None:
    out.write(data)
    digest.update(data)


async def receive(chunks: AsyncIterator[bytes], blobs: BlobStore) -> Received:
    """Read `chunks` to the end into a temporary file of `blobs`; removed again on any error."""
    digest = hashlib.sha256()
    size = 0
    out, temp = blobs.new_temp()
    try:
        pending = bytearray()
        async for chunk in chunks:
            pending += chunk
            size += len(chunk)
            if len(pending) >= STEP:
                data = bytes(pending)
                pending.clear()
                await asyncio.to_thread(_write, out, digest, data)
        if pending:
            await asyncio.to_thread(_write, out, digest, bytes(pending))
        await asyncio.to_thread(close_synced, out)
    except BaseException:
        out.close()
        blobs.discard(temp)
        raise
    return Received(digest.hexdigest(), size, temp)
