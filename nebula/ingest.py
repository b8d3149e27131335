"""Take in one payload file from a stream: verify, hash and store it without holding it in memory.

Bytes go to a temporary file in the payload store and through the CrAU verifier (which hashes
them) in 1 MiB steps on a worker thread, so a 1 GiB upload neither fills memory nor stalls the
event loop that answers hosts. Only a verified file is moved into place. Imports nebula.payload,
nebula.store.blobs and nebula.errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from nebula.payload import PayloadInfo, PayloadVerifier, TrustedKey
from nebula.store.blobs import BlobStore, close_synced

STEP = 1 << 20


@dataclass(frozen=True, slots=True)
class Ingested:
    name: str
    info: PayloadInfo
    temp: Path  # still in incoming/: call BlobStore.commit or discard


def _write_and_feed(out: BinaryIO, verifier: PayloadVerifier, data: bytes) -> None:
    out.write(data)
    verifier.feed(data)


async def ingest(
    name: str, chunks: AsyncIterator[bytes], blobs: BlobStore, keys: Sequence[TrustedKey]
) -> Ingested:
    """Read `chunks` to the end; raise a PayloadError (temp file removed) if it is refused."""
    verifier = PayloadVerifier(keys)
    out, temp = blobs.new_temp()
    try:
        pending = bytearray()
        async for chunk in chunks:
            pending += chunk
            if len(pending) >= STEP:
                data = bytes(pending)
                pending.clear()
                await asyncio.to_thread(_write_and_feed, out, verifier, data)
        if pending:
            await asyncio.to_thread(_write_and_feed, out, verifier, bytes(pending))
        await asyncio.to_thread(close_synced, out)
        info = verifier.finish()
    except BaseException:
        out.close()
        blobs.discard(temp)
        raise
    return Ingested(name=name, info=info, temp=temp)
