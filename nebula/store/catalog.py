"""The catalog: an immutable in-memory snapshot of applications, groups, channels and packages.

Every Omaha request reads it; none queries these tables. A snapshot is rebuilt when the single-row
config stamp changes: an admin change bumps the stamp in its own transaction, drops this
process's snapshot at once, and every other replica notices within `cache_ttl` seconds (it polls
the stamp, one indexed single-row read). Imports nebula.store, nebula.omaha.model, nebula.policy
and nebula.versions.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nebula.omaha.model import Manifest, PackageFile
from nebula.policy import GroupPolicy, HostState, choose_target, hold_now
from nebula.store.changes import CATALOG_CHANNEL
from nebula.store.db import run_again_if_lost
from nebula.store.models import Application, Channel, ChannelFloor, ConfigStamp, Group, Package
from nebula.store.models import PackageFile as StoredFile
from nebula.store.rollouts import policy_of
from nebula.versions import parse_version, try_parse_version


@dataclass(frozen=True, slots=True)
class PackageEntry:
    id: str
    version: str
    arch: str
    kind: str
    from_version: str | None
    manifest: Manifest


# Every check-in asks it, and a fleet runs a handful of versions: remembered, bounded (hosts
# may send any version string).
_target = functools.lru_cache(maxsize=4096)(choose_target)


@dataclass(frozen=True, slots=True)
class GroupEntry:
    id: str
    app_id: str
    name: str
    track: str
    arch: str
    channel_name: str | None
    policy: GroupPolicy
    pin_version: str | None
    target: PackageEntry | None  # the full package hosts of this group are offered
    # Floors below the target that have a full package: stepping stones, lowest first.
    floors: tuple[str, ...] = ()
    # Full packages by version: the target and the floors.
    stops: dict[str, PackageEntry] = field(default_factory=dict)
    # Deltas into each stop, keyed by the stop's version, then by the version they apply to.
    deltas: dict[str, dict[str, PackageEntry]] = field(default_factory=dict)

    @property
    def final(self) -> str | None:
        """The version the group rolls out (its channel's or its pin), floors aside."""
        return self.target.version if self.target is not None else None

    def target_for(self, host_version: str | None) -> str | None:
        """The version a host on `host_version` goes to next: the lowest floor between it and
        the group's target, else the target."""
        return _target(host_version, self.final, self.floors) if self.target else None

    def hold_for(self, host: HostState, recorded: str | None, now: datetime) -> str | None:
        """Why the group's policy in force holds `host` back now (nebula.policy.hold_now)."""
        return hold_now(host, self.policy, self.target_for(host.version), now, self.final, recorded)

    def package_for(
        self, version: str, host_version: str | None, delta_okay: bool
    ) -> PackageEntry | None:
        """The package that takes a host from `host_version` to `version`: a delta when the host
        takes deltas and one exists for its exact version, else the full package."""
        if delta_okay and host_version:
            delta = self.deltas.get(version, {}).get(host_version)
            if delta is not None:
                return delta
        return self.stops.get(version)


@dataclass(frozen=True, slots=True)
class Catalog:
    stamp: int
    apps: frozenset[str]
    # (app_id, track, arch) -> group; tracks are matched as sent, and group ids are tracks too.
    groups: dict[tuple[str, str, str], GroupEntry]
    # (app_id, track) -> the arches that have such a group, for hosts that do not say theirs.
    track_arches: dict[tuple[str, str], tuple[str, ...]]
    # (package_id, file name) -> SHA-256 hex of every file in Nebula's payload store: the
    # payload route serves a known file without a query.
    stored_files: dict[tuple[str, str], str] = field(default_factory=dict)
    # (app_id, arch, version, file name) -> SHA-256 hex of every stored extension payload
    # (oem-*.gz, flatcar-*.gz): the release-file route serves first boots from it, no query.
    release_files: dict[tuple[str, str, str, str], str] = field(default_factory=dict)

    def find_group(self, app_id: str, track: str, arch: str | None) -> GroupEntry | None:
        if arch is None:
            arches = self.track_arches.get((app_id, track), ())
            # A host that does not name its architecture (update_engine_stub) gets the one group
            # of its track, or amd64's when the track exists for several.
            arch = arches[0] if len(arches) == 1 else "amd64"
        return self.groups.get((app_id, track, arch))


def payload_codebase(base_url: str, package_id: str) -> str:
    """Where Nebula serves a stored package's files: stable, and ending in '/'."""
    return f"{base_url}/v1/payloads/{package_id}/"


def _codebase(package: Package, base_url: str) -> str:
    codebase = package.base_url or payload_codebase(base_url, package.id)
    return codebase if codebase.endswith("/") else codebase + "/"


def to_manifest(
    package: Package, base_url: str, files: Sequence[StoredFile] | None = None
) -> Manifest:
    """The manifest of `package`: its own files, or `files` (the main payload first)."""
    chosen = list(package.files) if files is None else list(files)
    return Manifest(
        version=package.version,
        codebase=_codebase(package, base_url),
        packages=tuple(
            PackageFile(
                name=f.name,
                size=f.size,
                sha1_b64=base64.b64encode(bytes.fromhex(f.sha1)).decode(),
                sha256_hex=f.sha256,
                required=n == 0,
            )
            for n, f in enumerate(chosen)
        ),
        sha256_b64=base64.b64encode(bytes.fromhex(chosen[0].sha256)).decode(),
        is_delta=package.kind == "delta",
    )


def delta_files(delta: Package, full: Package | None) -> list[StoredFile] | None:
    """The files a delta into `full`'s version is offered with: its main payload, then every
    extension payload of the full package (the delta's own file where it has one of that name,
    then any others it brought), or None when one of them cannot be served beside it.

    Post-install looks its extensions up in the response it was given (contract §6), so a
    delta is offered with the target's; they must be under the delta's codebase: either Nebula
    serves both (the payload route serves the full package's stored extension under the
    delta's URL, see `delta_aliases`), or both are registered under one external base URL.
    A delta that cannot list them is left out and hosts get the full package instead.
    """
    own = {f.name: f for f in delta.files[1:]}
    wanted = list(full.files[1:]) if full is not None else []
    files: list[StoredFile] = [delta.files[0]]
    for f in wanted:
        if f.name in own:
            files.append(own.pop(f.name))
        elif _beside(delta, full, f):
            files.append(f)
        else:
            return None
    files.extend(own.values())
    return files


def _beside(delta: Package, full: Package | None, file: StoredFile) -> bool:
    """Whether the full package's `file` is reachable under the delta's codebase."""
    if full is None:
        return False
    if delta.base_url is None:
        return bool(file.stored)
    return full.base_url is not None and _codebase(full, "") == _codebase(delta, "")


def delta_aliases(delta: Package, files: Sequence[StoredFile]) -> dict[tuple[str, str], str]:
    """(delta id, name) -> SHA-256 of the full package's stored extensions offered with a
    delta Nebula serves: the payload route finds them under the delta's codebase."""
    if delta.base_url is not None:
        return {}
    own = {f.name for f in delta.files}
    return {(delta.id, f.name): f.sha256 for f in files if f.name not in own and f.stored}


def _entry(
    package: Package, base_url: str, files: Sequence[StoredFile] | None = None
) -> PackageEntry:
    return PackageEntry(
        id=package.id,
        version=package.version,
        arch=package.arch,
        kind=package.kind,
        from_version=package.from_version,
        manifest=to_manifest(package, base_url, files),
    )


def _complete_deltas(
    deltas: dict[str, PackageEntry], target: PackageEntry
) -> dict[str, PackageEntry]:
    """The deltas that list every extension payload of the full target (all do, by
    `delta_files`; kept as the last check before an offer).

    Post-install looks extensions up in the response the host was given (contract §6); a delta
    offered without them would send an air-gapped host to Flatcar's server (error 5), so such a
    host gets the full package instead.
    """
    needed = {f.name for f in target.manifest.packages[1:]}
    return {
        source: delta
        for source, delta in deltas.items()
        if needed <= {f.name for f in delta.manifest.packages[1:]}
    }


async def read_stamp(session: AsyncSession) -> int:
    return int((await session.execute(select(ConfigStamp.stamp))).scalar_one())


# Every process's CatalogCache re-reads the stamp when it hears this (nebula.store.changes).
_NOTIFY_CATALOG = text(f"NOTIFY {CATALOG_CHANNEL}")


async def bump_stamp(session: AsyncSession) -> None:
    """Call in every transaction that changes what the catalog holds. On PostgreSQL the other
    processes hear of it at commit, so they need not wait for their cache's ttl."""
    await session.execute(update(ConfigStamp).values(stamp=ConfigStamp.stamp + 1))
    if session.bind.dialect.name == "postgresql":
        await session.execute(_NOTIFY_CATALOG)


async def load_catalog(session: AsyncSession, base_url: str) -> Catalog:
    stamp = await read_stamp(session)
    apps = frozenset((await session.execute(select(Application.id))).scalars())
    channels = {c.id: c for c in (await session.execute(select(Channel))).scalars()}
    floors_by_channel: dict[int, list[str]] = {}
    for floor in (await session.execute(select(ChannelFloor))).scalars():
        floors_by_channel.setdefault(floor.channel_id, []).append(floor.version)
    packages = list((await session.execute(select(Package))).scalars())
    by_id = {p.id: p for p in packages}
    full = {(p.app_id, p.arch, p.version): p for p in packages if p.kind == "full"}
    deltas: dict[tuple[str, str, str], dict[str, PackageEntry]] = {}
    aliases: dict[tuple[str, str], str] = {}
    for p in packages:
        if p.kind == "delta" and p.files and p.from_version is not None:
            key = (p.app_id, p.arch, p.version)
            offered = delta_files(p, full.get(key))
            if offered is None:
                continue
            deltas.setdefault(key, {})[p.from_version] = _entry(p, base_url, offered)
            aliases.update(delta_aliases(p, offered))
    groups: dict[tuple[str, str, str], GroupEntry] = {}
    arches: dict[tuple[str, str], list[str]] = {}
    for g in (await session.execute(select(Group))).scalars():
        channel = channels.get(g.channel_id) if g.channel_id is not None else None
        target_pkg: Package | None = None
        if g.pin_version:
            target_pkg = full.get((g.app_id, g.arch, g.pin_version))
        elif channel is not None and channel.package_id is not None:
            target_pkg = by_id.get(channel.package_id)
        target = _entry(target_pkg, base_url) if target_pkg and target_pkg.files else None
        stops: dict[str, PackageEntry] = {}
        floor_versions: list[str] = []
        if target is not None:
            stops[target.version] = target
            want = parse_version(target.version)
            for version in floors_by_channel.get(g.channel_id or -1, []):
                floor_pkg = full.get((g.app_id, g.arch, version))
                parsed = try_parse_version(version)
                if floor_pkg and floor_pkg.files and parsed is not None and parsed < want:
                    stops[version] = _entry(floor_pkg, base_url)
                    floor_versions.append(version)
        floor_versions.sort(key=parse_version)
        entry = GroupEntry(
            id=g.id,
            app_id=g.app_id,
            name=g.name,
            track=g.track,
            arch=g.arch,
            channel_name=channel.name if channel else None,
            policy=policy_of(g),
            pin_version=g.pin_version,
            target=target,
            floors=tuple(floor_versions),
            stops=stops,
            deltas={
                version: _complete_deltas(deltas.get((g.app_id, g.arch, version), {}), stop)
                for version, stop in stops.items()
            },
        )
        # A group answers to its track and to its id (the legacy CoreOS group UUIDs).
        for track in (g.track, g.id):
            groups[(g.app_id, track, g.arch)] = entry
            arches.setdefault((g.app_id, track), []).append(g.arch)
    return Catalog(
        stamp=stamp,
        apps=apps,
        groups=groups,
        track_arches={k: tuple(sorted(v)) for k, v in arches.items()},
        stored_files={
            **aliases,
            **{(p.id, f.name): f.sha256 for p in packages for f in p.files if f.stored},
        },
        release_files=release_files(packages),
    )


def release_files(packages: list[Package]) -> dict[tuple[str, str, str, str], str]:
    """The stored extension payloads by (app, arch, version, name). Those uploaded with a full
    package win over a delta's of the same name (they are the same signed file anyway)."""
    files: dict[tuple[str, str, str, str], str] = {}
    for p in sorted(packages, key=lambda p: p.kind == "full"):  # deltas first, fulls override
        for f in p.files:
            if f.position > 0 and f.stored:
                files[(p.app_id, p.arch, p.version, f.name)] = f.sha256
    return files


class CatalogCache:
    """Hands out the current snapshot; re-reads the stamp at most every `ttl` seconds.

    Requests never wait on each other for a refresh beyond one stamp read: a single task does
    the reload while the others keep using the snapshot they have.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        base_url: str,
        ttl: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._base_url = base_url
        self._ttl = ttl
        self._monotonic = monotonic  # seconds since boot; injected by tests
        self._snapshot: Catalog | None = None
        # Never 0.0 for "stale": time.monotonic() counts from boot, so on a machine up for less
        # than `ttl` a zero would still look fresh and an expiry would be ignored.
        self._checked_at = -math.inf
        self._lock = asyncio.Lock()

    async def get(self) -> Catalog:
        snapshot = self._snapshot
        if snapshot is not None and self._monotonic() - self._checked_at < self._ttl:
            return snapshot
        if snapshot is not None and self._lock.locked():
            return snapshot  # somebody is refreshing; this one is at most `ttl` old
        async with self._lock:
            if self._snapshot is not None and self._monotonic() - self._checked_at < self._ttl:
                return self._snapshot
            self._snapshot = await run_again_if_lost(self._refresh)
            self._checked_at = self._monotonic()
            return self._snapshot

    async def _refresh(self) -> Catalog:
        async with self._sessions() as session:
            stamp = await read_stamp(session)
            if self._snapshot is None or stamp != self._snapshot.stamp:
                return await load_catalog(session, self._base_url)
            return self._snapshot

    def expire(self) -> None:
        """Re-read the stamp at the next request (another process changed the catalog, or may
        have while this one could not hear it); the snapshot serves until then."""
        self._checked_at = -math.inf

    def invalidate(self) -> None:
        """Drop the snapshot: the next request reloads (after an admin change in this process)."""
        self._checked_at = -math.inf
        self._snapshot = None
