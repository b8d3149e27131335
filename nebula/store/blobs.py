"""The local payload store: files kept by their SHA-256, written once, never changed.

Layout: `<payload_dir>/objects/<first two hex digits>/<sha256 hex>`; uploads are written under
`<payload_dir>/incoming/` and moved into place with an atomic rename after they are complete,
verified and fsynced, so a file a host can fetch is always whole. Content addressing makes a
re-upload free and lets packages share files. Imports nothing of Nebula.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# An upload writes its temporary file continuously; one untouched this long is abandoned.
STALE_UPLOAD_SECONDS = 24 * 3600


class BlobStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.incoming = self.root / "incoming"

    def prepare(self) -> None:
        self.objects.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)
        # Leftovers of uploads cut short by a crash are never referenced: remove them. Only old
        # ones: replicas may share this directory, and another may be receiving an upload now.
        cutoff = time.time() - STALE_UPLOAD_SECONDS
        for stale in self.incoming.iterdir():
            with contextlib.suppress(OSError):
                if stale.stat().st_mtime < cutoff:
                    stale.unlink()

    def path(self, sha256_hex: str) -> Path:
        if not _HEX64.match(sha256_hex):
            raise ValueError(f"not a SHA-256: {sha256_hex!r}")
        return self.objects / sha256_hex[:2] / sha256_hex

    def exists(self, sha256_hex: str) -> bool:
        return self.path(sha256_hex).is_file()

    def new_temp(self) -> tuple[BinaryIO, Path]:
        """An open file for an incoming upload, and its path."""
        fd, name = tempfile.mkstemp(dir=self.incoming, prefix="upload-")
        return os.fdopen(fd, "wb"), Path(name)

    def commit(self, temp: Path, sha256_hex: str) -> Path:
        """Move a complete, verified upload into place (atomically); drop it if already there."""
        final = self.path(sha256_hex)
        if final.is_file():
            temp.unlink(missing_ok=True)
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(temp, 0o444)
        os.replace(temp, final)
        _fsync_dir(final.parent)
        return final

    def discard(self, temp: Path) -> None:
        temp.unlink(missing_ok=True)

    def rehash(self, sha256_hex: str, chunk: int = 1 << 20) -> str | None:
        """The SHA-256 (hex) of what is stored under `sha256_hex` now, or None when no file is
        there. Blocking: run it in a thread. A stored file never changes, so anything but its
        own name means the disk (or someone) altered it."""
        digest = hashlib.sha256()
        try:
            with self.path(sha256_hex).open("rb") as f:
                while block := f.read(chunk):
                    digest.update(block)
        except FileNotFoundError:
            return None
        return digest.hexdigest()


def close_synced(out: BinaryIO) -> None:
    """Flush and fsync a temporary file of `new_temp`, then close it: its bytes are on disk
    before `commit` renames it into place (blocking: call it on a worker thread)."""
    out.flush()
    os.fsync(out.fileno())
    out.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
