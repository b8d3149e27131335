"""`nebula db backup FILE` for SQLite: a consistent copy of a database that is being served.

sqlite3's online backup API copies the database page by page, a batch at a time, and starts
over when another connection writes between batches; in WAL mode (how Nebula opens SQLite)
readers never block the server's writer, so hosts keep being answered while it runs. The copy
goes to a temporary file beside FILE, is checked (`PRAGMA integrity_check`) and then renamed,
so FILE is either absent or a whole database. PostgreSQL has pg_dump for this. Imports only
nebula.errors.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from nebula.errors import ConfigError

PAGES_PER_STEP = 256  # pages copied per batch: the server's writer waits at most this long


def backup_sqlite(source: Path, target: Path, *, busy_timeout_ms: int = 30_000) -> int:
    """Copy the SQLite database `source` to the new file `target`; its size in bytes."""
    if not source.is_file():
        raise ConfigError(f"no SQLite database at {source}")
    if target.exists():
        raise ConfigError(f"{target} exists: back up into a new file")
    if not target.parent.is_dir():
        raise ConfigError(f"{target.parent} is not a directory")
    temp = target.with_name(f".{target.name}.partial")
    temp.unlink(missing_ok=True)
    # Read-only: a backup must never change (or create) the database it copies.
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    try:
        src.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        dst = sqlite3.connect(temp)
        try:
            src.backup(dst, pages=PAGES_PER_STEP)
            # The copy is a plain file on its own: no -wal beside it when it is moved.
            dst.execute("PRAGMA journal_mode = DELETE")
            (verdict,) = dst.execute("PRAGMA integrity_check").fetchone()
            if verdict != "ok":
                raise ConfigError(f"the copy of {source} failed its integrity check: {verdict}")
        finally:
            dst.close()
        with open(temp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temp, target)
    except sqlite3.Error as exc:
        raise ConfigError(f"backup of {source} failed: {exc}") from None
    finally:
        src.close()
        with contextlib.suppress(OSError):
            temp.unlink()
    return target.stat().st_size
