"""Factories for tests: signed payload files on disk, settings, apps, tokens, Omaha requests.

Omaha requests come from `Host` (nebula.loadtest.update_engine), the one builder of
update_engine's request bytes, shared with `nebula simulate`.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from nebula.config import Settings, load_settings
from nebula.loadtest.update_engine import FLATCAR_APP_ID, Host
from nebula.store import db
from nebula.store.tokens import create_token
from tests import crau

__all__ = [
    "FLATCAR_APP_ID",
    "Host",
    "assert_status_counts_match",
    "make_settings",
    "make_token",
    "payload_file",
]


def payload_file(
    directory: Path,
    name: str,
    key: RSAPrivateKey | None,
    *,
    size: int = 4096,
    delta: bool = False,
    seed: bytes = b"",
    **kwargs: object,
) -> Path:
    """A signed CrAU payload with `size` bytes of distinct data, written to directory/name."""
    block = (seed + name.encode() + b"-" + os.urandom(16)) * (size // 16 + 1)
    data = block[:size]
    path = directory / name
    directory.mkdir(parents=True, exist_ok=True)
    path.write_bytes(crau.build_payload(key, data=data, delta=delta, **kwargs))  # type: ignore[arg-type]
    return path


def make_settings(db_url: str, tmp_path: Path, key_file: Path, **overrides: object) -> Settings:
    flags: dict[str, object] = {
        "db": db_url,
        "payload_dir": str(tmp_path / "payloads"),
        "trusted_key": (str(key_file),),
        "public_url": "http://nebula.test",
        "cache_ttl": 0.0,
    }
    flags.update(overrides)
    return load_settings(flags, environ={})


async def make_token(db_url: str, name: str = "ops", role: str = "admin") -> str:
    engine = db.create_engine(db_url)
    try:
        async with db.transaction(db.session_factory(engine)) as session:
            return await create_token(session, name, role, datetime.now(UTC))
    finally:
        await engine.dispose()


async def assert_status_counts_match(
    db_url: str, *, by_version: bool = False
) -> dict[tuple[str, str], int]:
    """The maintained per-group status counts equal a count of the live hosts themselves (and,
    with `by_version`, per version too). Retired hosts are in no count."""
    from sqlalchemy import func, select

    from nebula.store.models import InstanceApp, StatusCount

    engine = db.create_engine(db_url)
    try:
        async with engine.connect() as conn:
            if by_version:
                version = func.coalesce(InstanceApp.version, "")
                kept_v = {
                    (g, s, v): int(n)
                    for g, s, v, n in await conn.execute(
                        select(
                            StatusCount.group_id,
                            StatusCount.status,
                            StatusCount.version,
                            func.sum(StatusCount.count),
                        ).group_by(StatusCount.group_id, StatusCount.status, StatusCount.version)
                    )
                    if n
                }
                counted_v = {
                    (g, s, v): int(n)
                    for g, s, v, n in await conn.execute(
                        select(InstanceApp.group_id, InstanceApp.status, version, func.count())
                        .where(InstanceApp.group_id.is_not(None), InstanceApp.retired_at.is_(None))
                        .group_by(InstanceApp.group_id, InstanceApp.status, version)
                    )
                }
                assert kept_v == counted_v, f"status_counts {kept_v} != hosts {counted_v}"
            kept = {
                (g, s): int(n)
                for g, s, n in (
                    await conn.execute(
                        select(
                            StatusCount.group_id, StatusCount.status, func.sum(StatusCount.count)
                        ).group_by(StatusCount.group_id, StatusCount.status)
                    )
                ).all()
                if n
            }
            counted = {
                (g, s): int(n)
                for g, s, n in (
                    await conn.execute(
                        select(InstanceApp.group_id, InstanceApp.status, func.count())
                        .where(InstanceApp.group_id.is_not(None), InstanceApp.retired_at.is_(None))
                        .group_by(InstanceApp.group_id, InstanceApp.status)
                    )
                ).all()
            }
    finally:
        await engine.dispose()
    assert kept == counted, f"status_counts {kept} != hosts {counted}"
    return counted
