"""The database side of a bench run: a database of its own, a token, a package, hosts.

On PostgreSQL the bench creates a database named `nebula_bench_<run id>` on the server it is
given and drops it at the end; it never opens another database than that one and the one named
in the URL (only to say CREATE and DROP), and it drops only a database it created itself. The
payload goes through the admin API, as an operator's would; the hosts are written straight
into the tables by the database itself (a real fleet would take an hour of check-ins to get
there), with the per-group status counts Nebula keeps moved accordingly.

Imports nebula.store (the models and the counts) and nebula.errors.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import TextClause, bindparam, distinct, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from nebula.loadtest.workload import (
    LIMITED_POLICY,
    LIMITED_TRACK,
    OLD,
    TARGET,
    Pools,
    machine_id,
)
from nebula.store import counts, db
from nebula.store.groups import FLATCAR_APP_ID
from nebula.store.models import Grant, Group, Instance, Package, UTCDateTime
from nebula.store.tokens import create_token


def bench_database_name(run_id: str) -> str:
    return f"nebula_bench_{run_id}"


async def _admin_execute(server_url: str, sql: str) -> None:
    # CREATE/DROP DATABASE cannot run inside a transaction.
    engine = create_async_engine(db.normalize_url(server_url), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql(sql)
    finally:
        await engine.dispose()


async def create_database(server_url: str, name: str) -> str:
    """Create `name` on the server of `server_url`; the URL of the new database."""
    await _admin_execute(server_url, f'CREATE DATABASE "{name}"')
    return db.normalize_url(server_url).set(database=name).render_as_string(hide_password=False)


async def drop_database(server_url: str, name: str) -> None:
    # FORCE ends sessions still open on it (a server killed a moment ago): it is ours alone.
    await _admin_execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def prepare(engine: AsyncEngine, run_id: str) -> str:
    """Migrate the (new, empty) database and make an admin token for this run."""
    await db.upgrade(engine)
    async with db.transaction(db.session_factory(engine)) as session:
        return await create_token(session, f"bench-{run_id}", "admin", datetime.now(UTC))


async def publish(base: str, token: str, payload: Path) -> None:
    """Upload the payload as TARGET for amd64 and point stable and beta at it, through the admin
    API; beta's group gets limits (LIMITED_POLICY) that count every grant."""
    auth = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        form = aiohttp.FormData()
        form.add_field("payload", payload.read_bytes(), filename=payload.name)
        async with http.post(
            f"{base}/api/v1/packages/upload",
            params={"version": TARGET, "arch": "amd64"},
            data=form,
            headers=auth,
        ) as resp:
            if resp.status != 201:
                raise RuntimeError(f"upload failed: {resp.status} {await resp.text()}")
        # stable for the unlimited phases, beta (LIMITED_TRACK) with limits for grant-limited.
        for channel in ("stable", LIMITED_TRACK):
            async with http.put(
                f"{base}/api/v1/channels/{channel}",
                json={"arch": "amd64", "version": TARGET},
                headers=auth,
            ) as resp:
                if resp.status != 200:
                    text_ = await resp.text()
                    raise RuntimeError(f"channel update failed: {resp.status} {text_}")
        async with http.patch(
            f"{base}/api/v1/groups/{LIMITED_TRACK}/policy",
            params={"arch": "amd64"},
            json=LIMITED_POLICY,
            headers=auth,
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"policy update failed: {resp.status} {await resp.text()}")


# The hosts are made by the database itself from a series of numbers, in one statement per
# table: a row per host sent from Python took 20 s for 200,000 hosts on PostgreSQL, this takes
# about one. The machine and boot ids are those of workload.machine_id and workload.boot_id
# (tests/test_bench.py compares them).
_SERIES = {
    "postgresql": "SELECT generate_series(0, :last)",
    "sqlite": "SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n < :last",
}
_HEX24 = {
    "postgresql": "lpad(to_hex(n), 24, '0')",
    "sqlite": "printf('%024x', n)",
}

_INSTANCES = """
INSERT INTO instances
    (id, alias, ip, oem, oem_version, aleph_version, board, created_at, last_seen_at)
SELECT id, '', '127.0.0.1', 'qemu', '', '3510.2.1', 'amd64-usr', :now, :now FROM ids
"""
_STATES = """
INSERT INTO instance_apps
    (instance_id, app_id, group_id, track, version, status, boot_id, granted_version,
     granted_package_id, granted_at, status_changed_at, last_check_at, held, created_at)
SELECT id, :app_id, :group_id, :track, :version, :status,
       '{' || substr(id, 1, 8) || '-0000-4000-8000-' || substr(id, 21, 12) || '}',
       :granted_version, :package_id, :granted_at, :now, :now, false, :now
FROM ids
"""
_GRANTS = """
INSERT INTO grants (group_id, instance_id, version, granted_at)
SELECT :group_id, id, :granted_version, :now FROM ids
"""


def _with_ids(dialect: str, statement: str) -> TextClause:
    recursive = "RECURSIVE " if dialect == "sqlite" else ""
    sql = (
        f"WITH {recursive}s(n) AS ({_SERIES[dialect]}), "
        f"ids(id) AS (SELECT :prefix || {_HEX24[dialect]} FROM s) {statement}"
    )
    times = [bindparam(n, type_=UTCDateTime()) for n in ("now", "granted_at") if f":{n}" in sql]
    return text(sql).bindparams(*times)


async def insert_pools(engine: AsyncEngine, pools: Pools) -> None:
    """Write the hosts of `pools` in one transaction: the known (current, idle), the granted,
    and the idle ones on OLD of the grant-known phases (in stable and in LIMITED_TRACK)."""
    now = datetime.now(UTC)
    dialect = engine.dialect.name
    # prefix, size, track, granted (TARGET while on OLD), version
    written = (
        (pools.known, pools.known_size, "stable", False, TARGET),
        (pools.granted, pools.granted_size, "stable", True, OLD),
        (pools.old, pools.old_size, "stable", False, OLD),
        (pools.old_limited, pools.old_size, LIMITED_TRACK, False, OLD),
    )
    async with db.transaction(db.session_factory(engine)) as session:
        rows = await session.execute(
            select(Group.track, Group.id).where(
                Group.app_id == FLATCAR_APP_ID,
                Group.track.in_({track for _, _, track, _, _ in written}),
                Group.arch == "amd64",
            )
        )
        groups = {track: group_id for track, group_id in rows}
        package_id = (
            await session.execute(
                select(Package.id).where(
                    Package.app_id == FLATCAR_APP_ID,
                    Package.arch == "amd64",
                    Package.version == TARGET,
                    Package.kind == "full",
                )
            )
        ).scalar_one()
        deltas: Counter[counts.ShardKey] = Counter()
        for prefix, size, track, granted, version in written:
            if size == 0:
                continue
            status = "granted" if granted else "idle"
            group_id = groups[track]
            for n in range(size):
                counts.move(deltas, machine_id(prefix, n), None, (group_id, status, version))
            params: dict[str, Any] = {
                "prefix": prefix,
                "last": size - 1,
                "now": now,
                "app_id": FLATCAR_APP_ID,
                "group_id": group_id,
                "track": track,
                "version": version,
                "status": status,
                "granted_version": TARGET if granted else None,
                "package_id": package_id if granted else None,
                "granted_at": now if granted else None,
            }
            statements = [_INSTANCES, _STATES] + ([_GRANTS] if granted else [])
            for statement in statements:
                await session.execute(_with_ids(dialect, statement), params)
        await counts.apply(session, deltas)


@dataclass(frozen=True, slots=True)
class Tally:
    """What a grant-known phase left in the database for one pool on OLD."""

    grants: int  # grant rows of the pool's hosts
    hosts: int  # distinct hosts they went to
    strangers: int  # hosts of the prefix past the pool's end: new hosts, not known ones

    def describe(self, size: int) -> str:
        return (
            f"{self.grants} grants written to {self.hosts} of {size} known hosts on {OLD}; "
            f"{self.strangers} checks from hosts past the pool"
        )


async def tally(engine: AsyncEngine, prefix: str, size: int) -> Tally:
    """Grants and hosts of one pool of `insert_pools` on OLD, counted after its phase ran."""
    # Machine ids of one prefix are of one length: the pool is a range of them.
    first, last = machine_id(prefix, 0), machine_id(prefix, size - 1)
    async with engine.connect() as conn:
        grants, hosts = (
            await conn.execute(
                select(func.count(), func.count(distinct(Grant.instance_id))).where(
                    Grant.instance_id.between(first, last)
                )
            )
        ).one()
        strangers = (
            await conn.execute(
                select(func.count())
                .select_from(Instance)
                .where(Instance.id.like(prefix + "%"), Instance.id > last)  # hex: no wildcard
            )
        ).scalar_one()
    return Tally(grants, hosts, strangers)
