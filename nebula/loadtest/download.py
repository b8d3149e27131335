"""How a simulated host fetches the payload it was offered (contract §5), for `nebula simulate`.

`full`: the whole file from `codebase + name`, hashed while it streams (never held in memory),
resumed with `Range: bytes=N-` after a cut as update_engine does, then checked against the
offer's size (error 11) and SHA-256 (error 10); a failure after a resume carries the
"resumed" flag (1<<30) as update_engine's does. `range`: only a first and a last chunk, each
with a Range header the server must honour exactly; it exercises Range without the bandwidth of
a real payload (and cannot check the hash). Every URL of the offer is tried in order.

Imports aiohttp and nebula.loadtest's pure modules only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from urllib.parse import urlsplit

import aiohttp

from nebula.loadtest.fleetstate import Fleet
from nebula.loadtest.update_engine import (
    ERROR_DOWNLOAD,
    ERROR_HASH_MISMATCH,
    ERROR_SIZE_MISMATCH,
    FLAG_RESUMED,
    Offer,
)

__all__ = ["MODES", "RANGE_CHUNK", "Downloader", "is_http", "read_at_most"]

MODES = ("full", "range")

RANGE_CHUNK = 64 * 1024
"""Bytes fetched at each end of the payload in `range` mode."""

# update_engine resumes a cut download up to 20 times; a few are enough to exercise Range.
RESUMES = 3
_CHUNK = 1 << 16


def is_http(url: str) -> bool:
    """Whether `url` is http(s) with a host (and, if any, a numeric port)."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


async def read_at_most(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, or its first `limit` bytes: an answer is never trusted to be small."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(_CHUNK):
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


class Downloader:
    """Payload downloads sharing the simulator's session, request gate and fleet counters."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        gate: asyncio.Semaphore,
        fleet: Fleet,
        timeout: aiohttp.ClientTimeout,
        *,
        mode: str,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"download mode {mode!r} is not one of {MODES}")
        self.http = http
        self.gate = gate
        self.fleet = fleet
        self.timeout = timeout
        self.mode = mode

    async def fetch(self, offer: Offer) -> int | None:
        """The error code (base code and the resumed flag) of a failed download, or None."""
        code = ERROR_DOWNLOAD
        for url in offer.urls:
            if not is_http(url):
                self.fleet.problem(f"payload URL {url[:100]!r} is not http(s)")
                continue
            self.fleet.downloads += 1
            got = await (self._full(url, offer) if self.mode == "full" else self._ends(url, offer))
            if got is None:
                return None
            code = got
        return code

    async def _full(self, url: str, offer: Offer) -> int | None:
        digest = hashlib.sha256()
        size = 0
        resumed = 0
        cut = "no answer"
        for attempt in range(RESUMES + 1):
            if attempt:
                resumed = FLAG_RESUMED
                self.fleet.resumes += 1
            # After a cut, on from the bytes already here, as update_engine resumes.
            headers = {"Range": f"bytes={size}-"} if size else {}
            try:
                async with (
                    self.gate,
                    self.http.get(url, headers=headers, timeout=self.timeout) as resp,
                ):
                    if resp.status not in (200, 206):
                        self.fleet.problem(f"payload GET answered HTTP {resp.status}")
                        return ERROR_DOWNLOAD | resumed
                    async for chunk in resp.content.iter_chunked(_CHUNK):
                        size += len(chunk)
                        self.fleet.bytes_downloaded += len(chunk)
                        if size > offer.size:
                            # Also what a server that ignores Range on a resume leads to.
                            self.fleet.problem("payload longer than the offered size")
                            return ERROR_SIZE_MISMATCH | resumed
                        digest.update(chunk)
            except (aiohttp.ClientError, TimeoutError) as exc:
                # A cut (the connection closed before Content-Length, a stalled read): resume.
                cut = f"{type(exc).__name__}: {exc}"[:200]
                continue
            if size == offer.size:
                break
        else:
            self.fleet.problem(f"payload download failed after {RESUMES} resumes ({cut})")
            return ERROR_DOWNLOAD | resumed
        if base64.b64encode(digest.digest()).decode() != offer.sha256:
            self.fleet.problem("payload SHA-256 differs from the offer's")
            return ERROR_HASH_MISMATCH | resumed
        return None

    async def _ends(self, url: str, offer: Offer) -> int | None:
        """Only the first and the last chunk, each answered exactly as asked (206, the
        Content-Range asked for, that many bytes)."""
        chunk = min(RANGE_CHUNK, offer.size)
        for start in dict.fromkeys((0, offer.size - chunk)):  # one request for a small payload
            end = start + chunk - 1
            headers = {"Range": f"bytes={start}-{end}"}
            try:
                async with (
                    self.gate,
                    self.http.get(url, headers=headers, timeout=self.timeout) as resp,
                ):
                    status, content_range = resp.status, resp.headers.get("Content-Range")
                    if status not in (200, 206):
                        self.fleet.problem(f"payload GET answered HTTP {status}")
                        return ERROR_DOWNLOAD
                    body = await read_at_most(resp, chunk + 1)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.fleet.problem(f"payload GET failed ({type(exc).__name__}: {exc})"[:200])
                return ERROR_DOWNLOAD
            self.fleet.bytes_downloaded += len(body)
            wanted = f"bytes {start}-{end}/{offer.size}"
            if status != 206 or content_range != wanted or len(body) != chunk:
                # A client resuming against such an answer ends up with a file of another size.
                self.fleet.problem(
                    f"Range {start}-{end} answered {status} {content_range!r}, {len(body)} bytes"
                )
                return ERROR_SIZE_MISMATCH
        return None
