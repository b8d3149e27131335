"""A realistic fleet written straight into a PostgreSQL database: a million hosts in about a
minute, for the million-host measurement (nebula.loadtest.million).

The database makes the rows itself from `generate_series`, one INSERT ... SELECT per table (a
row per host sent from Python would take minutes). The mix: six groups on two architectures,
each channel pointing at its own target; per 1,000 hosts 600 complete on the target, 250 idle on
it, 100 one release behind, 25 two behind, 12 between grant and completion, 9 failed (error,
rollback, timeout), 2 new and 2 held by an operator. What Nebula derives from hosts is derived
here from the rows just written, in SQL: the per-group status counts, completions, failures and
the grants of the hosts granted a version (`consistency` recounts them for the tests).

Imports nebula.store (the models, the database helpers) only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from nebula.store import db
from nebula.store.groups import FLATCAR_APP_ID
from nebula.store.models import Channel, Group, Package, PackageFile


@dataclass(frozen=True, slots=True)
class Track:
    channel: str
    arch: str
    share: int  # hosts per 100
    target: str
    previous: str
    older: str


TRACKS = (
    Track("stable", "amd64", 60, "4152.2.3", "4081.2.0", "3815.2.0"),
    Track("stable", "arm64", 10, "4152.2.3", "4081.2.0", "3815.2.0"),
    Track("beta", "amd64", 15, "4230.1.0", "4186.1.1", "4152.1.0"),
    Track("beta", "arm64", 5, "4230.1.0", "4186.1.1", "4152.1.0"),
    Track("alpha", "amd64", 7, "4284.0.0", "4230.0.1", "4186.0.0"),
    Track("lts", "amd64", 3, "4081.3.5", "3815.2.5", "3510.3.6"),
)

# Per 1,000 hosts (by a hash of n, independent of the group): the upper bound of each
# slice, its status, which version it runs and whether it was granted the target.
MIX = (
    (600, "complete", "target", True),
    (850, "idle", "target", False),
    (950, "idle", "previous", False),
    (975, "idle", "older", False),
    (980, "granted", "previous", True),
    (983, "downloading", "previous", True),
    (985, "downloaded", "previous", True),
    (987, "installed", "previous", True),
    (992, "error", "previous", True),
    (994, "rolled_back", "previous", True),
    (996, "timed_out", "previous", True),
    (998, "new", "target", False),
    (1000, "held", "previous", False),  # idle, held by an operator
)


def machine_id(n: int) -> str:
    """The machine id of host `n`, as the SQL below makes it."""
    return f"{n:032x}"


def _case(column: str) -> str:
    """A SQL CASE over the slice of host n (in `r`) picking `column` of MIX."""
    index = {"status": 1, "version": 2, "granted": 3}[column]
    arms = []
    for bound, *rest in MIX:
        value = rest[index - 1]
        if column == "status":
            sql = "'idle'" if value == "held" else f"'{value}'"
        elif column == "version":
            sql = f"t.{value}"
        else:
            sql = "true" if value else "false"
        arms.append(f"WHEN r < {bound} THEN {sql}")
    return "CASE " + " ".join(arms) + " END"


_TRACKS_SQL = """
CREATE TEMP TABLE fleet_tracks (
    lo int, hi int, group_id text, track text, board text, target text, previous text, older text,
    package_id text
) ON COMMIT DROP
"""

_HOSTS_SQL = f"""
CREATE TEMP TABLE fleet_hosts ON COMMIT DROP AS
SELECT lpad(to_hex(n), 32, '0') AS id, n, r, t.group_id, t.track, t.board, t.target, t.package_id,
       {_case("status")} AS status, {_case("version")} AS version,
       {_case("granted")} AS granted, r >= 998 AS held, now,
       now - (n % 3000) * interval '1 second' AS at,
       now - (n % 2700) * interval '1 second' AS seen,
       now - interval '30 days' AS born
FROM (SELECT n, (hashint8(n) % 1000 + 1000) % 1000 AS r, CAST(:now AS timestamptz) AS now
      FROM generate_series(0, :last) AS n) AS s
JOIN fleet_tracks AS t ON s.n % 100 >= t.lo AND s.n % 100 < t.hi
"""

_INSERTS = (
    """
    INSERT INTO instances
        (id, alias, ip, oem, oem_version, aleph_version, board, created_at, last_seen_at)
    SELECT id, '', '10.' || (n / 65536 % 256) || '.' || (n / 256 % 256) || '.' || (n % 256),
           'qemu', '', '3510.2.1', board, born, seen
    FROM fleet_hosts
    """,
    """
    INSERT INTO instance_apps
        (instance_id, app_id, group_id, track, version, status, boot_id, granted_version,
         granted_package_id, granted_at, status_changed_at, completed_at, last_check_at,
         last_error_code, last_error_at, hold_reason, held, created_at)
    SELECT id, :app_id, group_id, track, version, status,
           '{' || substr(id, 1, 8) || '-0000-4000-8000-' || substr(id, 21, 12) || '}',
           CASE WHEN granted THEN target END, CASE WHEN granted THEN package_id END,
           CASE WHEN granted THEN at END,
           at,
           CASE WHEN status = 'complete' THEN at END,
           seen,
           CASE WHEN status = 'error' THEN 7 END,
           CASE WHEN status IN ('error', 'rolled_back', 'timed_out') THEN now END,
           CASE WHEN held THEN 'host_hold' END, held, born
    FROM fleet_hosts
    """,
    # What Nebula records beside the hosts' states, derived from them as Nebula would have.
    """
    INSERT INTO grants (group_id, instance_id, version, granted_at)
    SELECT group_id, instance_id, granted_version, granted_at FROM instance_apps
    WHERE granted_version IS NOT NULL
    """,
    """
    INSERT INTO completions (group_id, version, instance_id, completed_at)
    SELECT group_id, granted_version, instance_id, completed_at FROM instance_apps
    WHERE status = 'complete'
    """,
    """
    INSERT INTO failures (group_id, version, instance_id, kind, code, first_at, last_at, count)
    SELECT group_id, granted_version, instance_id, status, last_error_code, last_error_at,
           last_error_at, 1 FROM instance_apps
    WHERE status IN ('error', 'rolled_back', 'timed_out')
    """,
)


async def _catalog(session: AsyncSession, now: datetime) -> list[tuple[Track, str, str]]:
    """Packages for every track's target and previous release, channels pointing at the
    targets; (track, group id, target package id) per track."""
    out = []
    made: dict[tuple[str, str], str] = {}
    for track in TRACKS:
        for version in (track.target, track.previous):
            key = (track.arch, version)
            if key in made:
                continue
            package = Package(
                id=str(uuid.uuid4()),
                app_id=FLATCAR_APP_ID,
                version=version,
                arch=track.arch,
                kind="full",
                base_url=f"https://cdn.example.invalid/{track.arch}-usr/{version}/",
                created_at=now,
                created_by="fleetsql",
            )
            package.files = [
                PackageFile(
                    position=0,
                    name="flatcar_production_update.gz",
                    size=400_000_000,
                    sha1=uuid.uuid4().hex + "0" * 8,
                    sha256=uuid.uuid4().hex * 2,
                    stored=False,
                )
            ]
            session.add(package)
            made[key] = package.id
        await session.flush()
        channel = (
            await session.execute(
                select(Channel).where(
                    Channel.app_id == FLATCAR_APP_ID,
                    Channel.name == track.channel,
                    Channel.arch == track.arch,
                )
            )
        ).scalar_one()
        channel.package_id = made[(track.arch, track.target)]
        group_id = (
            await session.execute(
                select(Group.id).where(
                    Group.app_id == FLATCAR_APP_ID,
                    Group.track == track.channel,
                    Group.arch == track.arch,
                )
            )
        ).scalar_one()
        out.append((track, group_id, made[(track.arch, track.target)]))
    return out


# The counts Nebula keeps, recounted from the hosts (shard 0: only their sum is ever read).
COUNTS_SQL = """
INSERT INTO status_counts (group_id, status, version, shard, count)
SELECT group_id, status, COALESCE(version, ''), 0, count(*) FROM instance_apps
WHERE group_id IS NOT NULL GROUP BY group_id, status, COALESCE(version, '')
"""


# Thirty days of rollout history (nebula.store.history) as a server that has run that long
# keeps it: a sample every four hours for 30 days, every hour for the last 7, every five
# minutes for the last day, each a copy of today's counts (what rollout history reads is their
# number, not their values), each with the grid its stamp lies on.
SAMPLES_SQL = """
INSERT INTO count_samples (group_id, at, status, version, hosts, grid)
SELECT c.group_id, t.at, c.status, c.version, sum(c.count),
       CASE WHEN CAST(extract(epoch FROM t.at) AS bigint) % 14400 = 0 THEN 14400
            WHEN CAST(extract(epoch FROM t.at) AS bigint) % 3600 = 0 THEN 3600 ELSE 0 END
FROM status_counts c,
     (SELECT DISTINCT at FROM (
          SELECT generate_series(to_timestamp(floor(extract(epoch FROM CAST(:now AS timestamptz))
                                                    / 14400) * 14400) - interval '30 days',
                                 CAST(:now AS timestamptz) - interval '7 days',
                                 interval '4 hours') AS at
          UNION ALL
          SELECT generate_series(date_trunc('hour', CAST(:now AS timestamptz)) - interval '7 days',
                                 CAST(:now AS timestamptz) - interval '1 day',
                                 interval '1 hour')
          UNION ALL
          SELECT generate_series(date_trunc('hour', CAST(:now AS timestamptz)) - interval '1 day',
                                 CAST(:now AS timestamptz),
                                 interval '5 minutes')) AS stamps) AS t
GROUP BY c.group_id, t.at, c.status, c.version HAVING sum(c.count) <> 0
"""


async def load(engine: AsyncEngine, hosts: int) -> None:
    """Fill a migrated, empty PostgreSQL database with `hosts` hosts, in one transaction."""
    now = datetime.now(UTC)
    async with db.transaction(db.session_factory(engine)) as session:
        await session.execute(text("SET LOCAL synchronous_commit = off"))
        tracks = await _catalog(session, now)
        await session.execute(text(_TRACKS_SQL))
        lo = 0
        for track, group_id, package_id in tracks:
            await session.execute(
                text(
                    "INSERT INTO fleet_tracks VALUES "
                    "(:lo, :hi, :g, :track, :board, :target, :previous, :older, :p)"
                ),
                {
                    "lo": lo,
                    "hi": lo + track.share,
                    "g": group_id,
                    "track": track.channel,
                    "board": f"{track.arch}-usr",
                    "target": track.target,
                    "previous": track.previous,
                    "older": track.older,
                    "p": package_id,
                },
            )
            lo += track.share
        await session.execute(text(_HOSTS_SQL), {"last": hosts - 1, "now": now})
        for statement in _INSERTS:
            await session.execute(text(statement), {"app_id": FLATCAR_APP_ID})
        await session.execute(text(COUNTS_SQL))
        await session.execute(text(SAMPLES_SQL), {"now": now})
    # Statistics and the visibility map, as autovacuum would leave a database in use.
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.exec_driver_sql("VACUUM ANALYZE")


RECOUNT_SQL = """
SELECT group_id, status, COALESCE(version, ''), count(*) FROM instance_apps
WHERE group_id IS NOT NULL GROUP BY group_id, status, COALESCE(version, '')
"""
STORED_SQL = """
SELECT group_id, status, version, sum(count) FROM status_counts
GROUP BY group_id, status, version HAVING sum(count) <> 0
"""
Tally = dict[tuple[str, str, str], int]


async def consistency(engine: AsyncEngine) -> tuple[Tally, Tally]:
    """(recounted from the hosts, as stored in status_counts): equal when consistent."""
    async with engine.connect() as conn:
        recount = {(g, s, v): int(n) for g, s, v, n in (await conn.execute(text(RECOUNT_SQL)))}
        stored = {(g, s, v): int(n) for g, s, v, n in (await conn.execute(text(STORED_SQL)))}
    return recount, stored
