"""Factories for tests: signed payload files on disk, settings, apps, tokens, Omaha requests."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from nebula.config import Settings, load_settings
from nebula.store import db
from nebula.store.tokens import create_token
from tests import crau

FLATCAR_APP_ID = "e96281a6-d1af-4bde-9a0a-97b76e56dc57"


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


@dataclass
class Host:
    """A simulated Flatcar host that builds the requests update_engine sends (contract §2)."""

    machine_id: str
    version: str = "3815.2.0"
    track: str = "stable"
    board: str = "amd64-usr"
    boot_id: str = "{0c288430-2504-4db4-913a-8c3de52afd07}"
    oem: str = "qemu"
    alias: str = ""
    delta_okay: bool = False
    app_id: str = "{" + FLATCAR_APP_ID + "}"

    def _app(self, inner: str) -> bytes:
        machine = "x86_64" if self.board.startswith("amd64") else "aarch64"
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<request protocol="3.0" version="update_engine-0.4.10" '
            'updaterversion="update_engine-0.4.10" installsource="scheduler" ismachine="1">\n'
            f'    <os version="Chateau" platform="CoreOS" sp="{self.version}_{machine}"></os>\n'
            f'    <app appid="{self.app_id}" version="{self.version}" track="{self.track}" '
            f'bootid="{self.boot_id}" oem="{self.oem}" oemversion="" alephversion="3510.2.1" '
            f'machineid="{self.machine_id}" machinealias="{self.alias}" lang="en-US" '
            f'board="{self.board}" hardware_class="" '
            f'delta_okay="{"true" if self.delta_okay else "false"}" >\n'
            f"{inner}"
            "    </app>\n</request>\n"
        ).encode()

    def check(self, previous_version: str = "", event: str | None = None) -> bytes:
        ev = (
            event
            or f'<event eventtype="3" eventresult="2" previousversion="{previous_version}"></event>'
        )
        return self._app(
            f'        <ping active="1"></ping>\n        <updatecheck></updatecheck>\n        {ev}\n'
        )

    def event(self, event_type: int, result: int, error_code: int | None = None) -> bytes:
        code = f' errorcode="{error_code}"' if error_code is not None else ""
        return self._app(
            f'        <event eventtype="{event_type}" eventresult="{result}"{code}></event>\n'
        )

    def ping(self) -> bytes:
        return self._app('        <ping active="1"></ping>\n')


async def assert_status_counts_match(db_url: str) -> dict[tuple[str, str], int]:
    """The maintained per-group status counts equal a count of the hosts themselves."""
    from sqlalchemy import func, select

    from nebula.store.models import InstanceApp, StatusCount

    engine = db.create_engine(db_url)
    try:
        async with engine.connect() as conn:
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
                        .where(InstanceApp.group_id.is_not(None))
                        .group_by(InstanceApp.group_id, InstanceApp.status)
                    )
                ).all()
            }
    finally:
        await engine.dispose()
    assert kept == counted, f"status_counts {kept} != hosts {counted}"
    return counted
