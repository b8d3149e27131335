"""The payload store and the database file, checked and copied while Nebula serves (slow suite).

- `nebula package verify` (and `POST /api/v1/packages/verify`) re-hashes every stored payload
  file: one byte changed on the disk, or a file gone, is named, and the command exits 1.
- `nebula db backup FILE` copies a SQLite database with sqlite3's online backup API while a
  real `nebula serve` answers a stream of hosts; a server started on the copy answers as the
  original did. The same for PostgreSQL with pg_dump and pg_restore.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from sqlalchemy.engine import make_url

from tests.conftest import PG_ADMIN_URL, PgServer, _asyncpg_dsn, require_tools
from tests.factories import Host, assert_status_counts_match, make_token, payload_file
from tests.slow.fleet import Fleet, child_env, nebula_command
from tests.test_service import MAIN, NEW, OLD, point, upload

pytestmark = pytest.mark.slow


async def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`nebula ARGS...` in a thread, so that the server in this event loop keeps answering."""
    return await asyncio.to_thread(
        subprocess.run,
        nebula_command(*args),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _blob(payload_dir: Path, sha256: str) -> Path:
    return payload_dir / "objects" / sha256[:2] / sha256


def _flip_one_byte(path: Path, offset: int) -> None:
    os.chmod(path, 0o644)  # stored files are read-only
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


async def test_verify_names_a_file_whose_bytes_changed(
    server: str, db_url: str, tmp_path: Path, signing_key: RSAPrivateKey
) -> None:
    """A verify that trusted the recorded hash, checked only sizes, stopped at the first file or
    read only one of two packages sharing a file, fails here."""
    token = await make_token(db_url)
    main = payload_file(tmp_path / "up", MAIN, signing_key, size=50_000)
    ext = payload_file(tmp_path / "up", "oem-azure.gz", signing_key, size=9_000)
    async with aiohttp.ClientSession(base_url=server) as http:
        package = await upload(http, token, NEW, [main, ext])
        verify: dict[str, Any]
        auth = {"Authorization": f"Bearer {token}"}
        async with http.post("/api/v1/packages/verify", headers=auth) as resp:
            assert resp.status == 200
            verify = await resp.json()
        assert (verify["checked"], verify["bad"]) == (2, [])
        done = await _cli("package", "verify", "--server", server, "--token", token)
        assert done.returncode == 0, done.stderr
        assert "2 stored files (2 blobs) checked, 0 bad" in done.stdout

        payload_dir = tmp_path / "payloads"
        sha_ext = next(f["sha256"] for f in package["files"] if f["name"] == "oem-azure.gz")
        broken = _blob(payload_dir, sha_ext)
        _flip_one_byte(broken, 4_500)
        async with http.post("/api/v1/packages/verify", headers=auth) as resp:
            verify = await resp.json()
        assert [(b["name"], b["path"]) for b in verify["bad"]] == [("oem-azure.gz", str(broken))]
        assert verify["bad"][0]["problem"].startswith("sha256 is now ")
        assert verify["bad"][0]["package"] == package["id"]
        done = await _cli("package", "verify", "--server", server, "--token", token)
        assert done.returncode == 1
        assert str(broken) in done.stderr and "oem-azure.gz" in done.stderr
        assert "1 bad" in done.stdout

        sha_main = next(f["sha256"] for f in package["files"] if f["name"] == MAIN)
        _blob(payload_dir, sha_main).unlink()
        async with http.post("/api/v1/packages/verify", headers=auth) as resp:
            verify = await resp.json()
        assert sorted((b["name"], b["problem"][:7]) for b in verify["bad"]) == [
            (MAIN, "missing"),
            ("oem-azure.gz", "sha256 "),
        ]


# -- backup while serving --------------------------------------------------------------------------


async def _check(http: aiohttp.ClientSession, base: str, host: Host) -> tuple[int, str]:
    async with http.post(
        f"{base}/v1/update/", data=host.check(), headers={"Content-Type": "text/xml"}
    ) as resp:
        # The answer names the server's own address in its codebase: compare it without.
        return resp.status, (await resp.text()).replace(base, "BASE")


async def _json(http: aiohttp.ClientSession, base: str, path: str, token: str) -> Any:
    async with http.get(f"{base}{path}", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
        return await resp.json()


async def test_sqlite_backup_while_serving_restores_into_a_server_that_answers_the_same(
    tmp_path: Path, key_file: Path, signing_key: RSAPrivateKey
) -> None:
    """A backup that copied the file under a writer (torn pages), missed the WAL, or stopped
    the server, fails here: the copy must pass its integrity check, hold every host answered
    before it began, and serve the same answers."""
    db_file = tmp_path / "nebula.db"
    db_url = f"sqlite:///{db_file}"
    payloads = tmp_path / "payloads"
    copy = tmp_path / "backup" / "copy.db"
    copy.parent.mkdir()
    async with Fleet(
        1, db_url=db_url, payload_dir=payloads, key_file=key_file, workdir=tmp_path / "a"
    ) as original:
        (base,) = original.bases
        token = await make_token(db_url)
        main = payload_file(tmp_path / "up", MAIN, signing_key, size=20_000)
        async with aiohttp.ClientSession(base_url=base) as http:
            await upload(http, token, NEW, [main])
            await point(http, token, NEW)
        before = [Host(machine_id=f"b{i:031x}", version=OLD) for i in range(20)]
        async with aiohttp.ClientSession() as http:
            for host in before:
                assert (await _check(http, base, host))[0] == 200

            statuses: list[int] = []
            stop = asyncio.Event()

            async def load() -> None:
                n = 0
                while not stop.is_set():
                    statuses.append((await _check(http, base, Host(f"c{n:031x}")))[0])
                    n += 1

            task = asyncio.create_task(load())
            await asyncio.sleep(0.3)
            during = len(statuses)
            done = await _cli("db", "backup", "--db", db_url, str(copy))
            served_while = len(statuses) - during
            stop.set()
            await task
            assert done.returncode == 0, done.stderr
            assert set(statuses) == {200}
            assert served_while > 0  # the server answered hosts while the copy was taken
            # Into an existing file: refused, the file untouched.
            again = await _cli("db", "backup", "--db", db_url, str(copy))
            assert again.returncode == 1 and "exists" in again.stderr
            answers = [await _check(http, base, h) for h in before]
            groups = await _json(http, base, "/api/v1/groups", token)
            packages = await _json(http, base, "/api/v1/packages", token)
    assert not list(copy.parent.glob(".*partial"))

    restored_url = f"sqlite:///{copy}"
    async with Fleet(
        1, db_url=restored_url, payload_dir=payloads, key_file=key_file, workdir=tmp_path / "b"
    ) as restored:
        (rbase,) = restored.bases
        async with aiohttp.ClientSession() as http:
            assert [await _check(http, rbase, h) for h in before] == answers
            assert all('<updatecheck status="ok"' in text for _, text in answers)
            rgroups = await _json(http, rbase, "/api/v1/groups", token)
            rpackages = await _json(http, rbase, "/api/v1/packages", token)
    assert [g["name"] for g in rgroups["groups"]] == [g["name"] for g in groups["groups"]]
    assert str(rpackages).replace(rbase, "BASE") == str(packages).replace(base, "BASE")


async def test_pg_dump_while_serving_restores_into_a_server_that_answers_the_same(
    pg_server: PgServer | None, tmp_path: Path, key_file: Path, signing_key: RSAPrivateKey
) -> None:
    """PostgreSQL's backup is pg_dump (README): taken while a real server answers a stream of
    hosts, restored with pg_restore into a new database, a server on it answers the hosts known
    before the dump as the original did. A schema that needed something pg_dump leaves out
    (or a dump that waited for the load to stop) fails here."""
    if pg_server is None:
        pytest.skip("PostgreSQL unavailable (set NEBULA_TEST_PG)")
    require_tools("pg_dump", "pg_restore")
    db_url = await pg_server.new_database()
    restored_name = f"nebula_restored_{uuid.uuid4().hex[:10]}"
    dump = tmp_path / "nebula.dump"
    payloads = tmp_path / "payloads"
    try:
        async with Fleet(
            1, db_url=db_url, payload_dir=payloads, key_file=key_file, workdir=tmp_path / "a"
        ) as original:
            (base,) = original.bases
            token = await make_token(db_url)
            main = payload_file(tmp_path / "up", MAIN, signing_key, size=20_000)
            async with aiohttp.ClientSession(base_url=base) as http:
                await upload(http, token, NEW, [main])
                await point(http, token, NEW)
            before = [Host(machine_id=f"d{i:031x}", version=OLD) for i in range(20)]
            async with aiohttp.ClientSession() as http:
                for host in before:
                    assert (await _check(http, base, host))[0] == 200
                statuses: list[int] = []
                stop = asyncio.Event()

                async def load() -> None:
                    n = 0
                    while not stop.is_set():
                        statuses.append((await _check(http, base, Host(f"e{n:031x}")))[0])
                        n += 1

                task = asyncio.create_task(load())
                await asyncio.sleep(0.3)
                during = len(statuses)
                dumped = await asyncio.to_thread(
                    subprocess.run,
                    ["pg_dump", "-Fc", "-f", str(dump), _libpq(db_url)],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                served_while = len(statuses) - during
                stop.set()
                await task
                assert dumped.returncode == 0, dumped.stderr
                assert set(statuses) == {200} and served_while > 0
                answers = [await _check(http, base, h) for h in before]
                packages = await _json(http, base, "/api/v1/packages", token)

        await _admin_sql(f'CREATE DATABASE "{restored_name}" TEMPLATE template0')
        restored_url = make_url(db_url).set(database=restored_name).render_as_string(False)
        restore = subprocess.run(
            ["pg_restore", "--no-owner", "-d", _libpq(restored_url), str(dump)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert restore.returncode == 0, restore.stderr
        async with Fleet(
            1, db_url=restored_url, payload_dir=payloads, key_file=key_file, workdir=tmp_path / "b"
        ) as restored:
            (rbase,) = restored.bases
            async with aiohttp.ClientSession() as http:
                assert [await _check(http, rbase, h) for h in before] == answers
                rpackages = await _json(http, rbase, "/api/v1/packages", token)
        assert str(rpackages).replace(rbase, "BASE") == str(packages).replace(base, "BASE")
        await assert_status_counts_match(restored_url, by_version=True)
    finally:
        await _admin_sql(f'DROP DATABASE IF EXISTS "{restored_name}" WITH (FORCE)')
        await pg_server.drop(db_url)


def _libpq(url: str) -> str:
    """The URL as libpq's tools take it (no SQLAlchemy driver name)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin_sql(sql: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(PG_ADMIN_URL), timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
