"""Packages and their payload files: create, list, find, delete.

Query functions take the session first and never commit. Imports nebula.store.models,
nebula.errors and nebula.versions.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from nebula.errors import ConflictError, InvalidInputError, NotFoundError
from nebula.store.models import Channel, Group, Package, PackageFile
from nebula.versions import is_valid_version

ARCHES = ("amd64", "arm64")
# Hosts look files up by name (oem-azure.gz, flatcar-podman.gz): plain names only.
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,254}$")


def is_file_name(name: str) -> bool:
    """Whether `name` could be a package file's name (what check_file_name accepts)."""
    return _FILE_NAME.match(name) is not None and name not in (".", "..")


_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_FILE_SIZE = 1 << 63  # the size column is a signed 64-bit integer


@dataclass(frozen=True, slots=True)
class FileSpec:
    name: str
    size: int
    sha1: str  # hex
    sha256: str  # hex
    stored: bool
    signer: str | None = None


def check_file_name(name: str) -> str:
    if not _FILE_NAME.match(name) or name in (".", ".."):
        raise InvalidInputError(
            f"file name {name!r}: use letters, digits, '.', '_', '+', '-' (hosts fetch it by name)"
        )
    return name


def check_arch(arch: str) -> str:
    if arch not in ARCHES:
        raise InvalidInputError(f"arch must be one of {', '.join(ARCHES)}, got {arch!r}")
    return arch


def check_version(version: object, what: str = "version") -> str:
    # Exactly as stored and sent to hosts: a string, and no whitespace around it (the parser
    # tolerates that, but " 4152.2.3" would then be a different package from "4152.2.3").
    if not isinstance(version, str) or version != version.strip() or not is_valid_version(version):
        raise InvalidInputError(f"{what} {version!r} is not a version like 4152.2.3")
    return version


def check_file_spec(spec: FileSpec) -> FileSpec:
    check_file_name(spec.name)
    if not 0 < spec.size < MAX_FILE_SIZE:
        raise InvalidInputError(f"{spec.name}: size must be positive and below 2**63 bytes")
    if not _HEX40.match(spec.sha1):
        raise InvalidInputError(f"{spec.name}: sha1 must be 40 lower-case hex digits")
    if not _HEX64.match(spec.sha256):
        raise InvalidInputError(f"{spec.name}: sha256 must be 64 lower-case hex digits")
    return spec


async def find_package(
    session: AsyncSession, app_id: str, arch: str, version: str, from_version: str | None = None
) -> Package | None:
    stmt = select(Package).where(
        Package.app_id == app_id,
        Package.arch == arch,
        Package.version == version,
        Package.kind == ("delta" if from_version else "full"),
    )
    if from_version:
        stmt = stmt.where(Package.from_version == from_version)
    return (await session.execute(stmt)).scalar_one_or_none()


async def check_new_package(
    session: AsyncSession, app_id: str, arch: str, version: str, from_version: str | None
) -> None:
    """Raise ConflictError if a package for this version (or delta) and arch exists."""
    if await find_package(session, app_id, arch, version, from_version) is not None:
        what = f"delta {from_version} -> {version}" if from_version else f"version {version}"
        raise ConflictError(f"a package for {what} ({arch}) exists already")


async def add_package(
    session: AsyncSession,
    *,
    app_id: str,
    version: str,
    arch: str,
    from_version: str | None,
    base_url: str | None,
    files: Sequence[FileSpec],
    actor: str,
    now: datetime,
) -> Package:
    check_version(version)
    check_arch(arch)
    if from_version is not None:
        check_version(from_version, "from-version")
    if not files:
        raise InvalidInputError("a package needs at least its main payload file")
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"file names must differ within a package: {names}")
    for spec in files:
        check_file_spec(spec)
    await check_new_package(session, app_id, arch, version, from_version)
    package = Package(
        id=str(uuid.uuid4()),
        app_id=app_id,
        version=version,
        arch=arch,
        kind="delta" if from_version else "full",
        from_version=from_version,
        base_url=base_url,
        created_at=now,
        created_by=actor,
        files=[
            PackageFile(
                position=i,
                name=f.name,
                size=f.size,
                sha1=f.sha1,
                sha256=f.sha256,
                stored=f.stored,
                signer=f.signer,
            )
            for i, f in enumerate(files)
        ],
    )
    session.add(package)
    await session.flush()
    return package


async def list_packages(
    session: AsyncSession,
    app_id: str | None = None,
    arch: str | None = None,
    version: str | None = None,
) -> list[Package]:
    stmt = select(Package).order_by(Package.created_at, Package.id)
    if app_id:
        stmt = stmt.where(Package.app_id == app_id)
    if arch:
        stmt = stmt.where(Package.arch == arch)
    if version:
        stmt = stmt.where(Package.version == version)
    return list((await session.execute(stmt)).scalars())


async def get_package(session: AsyncSession, package_id: str) -> Package:
    package = await session.get(Package, package_id)
    if package is None:
        raise NotFoundError(f"no package {package_id}")
    return package


async def delete_package(session: AsyncSession, package_id: str) -> Package:
    package = await get_package(session, package_id)
    channels = [
        f"{name} ({arch})"
        for name, arch in await session.execute(
            select(Channel.name, Channel.arch)
            .where(Channel.package_id == package_id)
            .order_by(Channel.name)
        )
    ]
    if channels:
        raise ConflictError(
            f"package {package.version} ({package.arch}) is what "
            f"{'channel' if len(channels) == 1 else 'channels'} {', '.join(channels)} "
            "offer: point them elsewhere first"
        )
    pinned = (
        await session.execute(
            select(Group.name)
            .where(
                Group.app_id == package.app_id,
                Group.arch == package.arch,
                Group.pin_version == package.version,
            )
            .limit(1)
        )
    ).scalar_one_or_none()
    if pinned is not None and package.kind == "full":
        raise ConflictError(f"group {pinned} is pinned to {package.version}; unpin it first")
    await session.delete(package)
    return package


async def find_file(session: AsyncSession, package_id: str, name: str) -> PackageFile | None:
    stmt = select(PackageFile).where(PackageFile.package_id == package_id, PackageFile.name == name)
    return (await session.execute(stmt)).scalar_one_or_none()


async def stored_files(session: AsyncSession) -> list[tuple[Package, PackageFile]]:
    """Every file whose bytes Nebula keeps (not external packages'), with its package."""
    stmt = (
        select(Package, PackageFile)
        .join(PackageFile, PackageFile.package_id == Package.id)
        .where(PackageFile.stored)
        .order_by(Package.created_at, Package.id, PackageFile.position)
    )
    return [(p, f) for p, f in (await session.execute(stmt)).all()]


async def blob_in_use(session: AsyncSession, sha256: str) -> bool:
    stmt = select(PackageFile.id).where(PackageFile.sha256 == sha256, PackageFile.stored).limit(1)
    return (await session.execute(stmt)).first() is not None


async def find_release_file(
    session: AsyncSession, app_id: str, arch: str, version: str, name: str
) -> str | None:
    """The SHA-256 of the stored extension payload `name` of `version` (a full package's
    first, else a delta's), or None."""
    stmt = (
        select(PackageFile.sha256)
        .join(Package, PackageFile.package_id == Package.id)
        .where(
            Package.app_id == app_id,
            Package.arch == arch,
            Package.version == version,
            PackageFile.name == name,
            PackageFile.position > 0,
            PackageFile.stored,
        )
        .order_by(Package.kind.desc())  # 'full' before 'delta'
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def find_delta_extension(session: AsyncSession, package_id: str, name: str) -> str | None:
    """The SHA-256 of the stored extension `name` of the full package a delta Nebula serves
    leads to: offered with that delta and served under its codebase
    (nebula.store.catalog.delta_files), or None."""
    delta = await session.get(Package, package_id)
    if delta is None or delta.kind != "delta" or delta.base_url is not None:
        return None
    stmt = (
        select(PackageFile.sha256)
        .join(Package, PackageFile.package_id == Package.id)
        .where(
            Package.app_id == delta.app_id,
            Package.arch == delta.arch,
            Package.version == delta.version,
            Package.kind == "full",
            PackageFile.name == name,
            PackageFile.position > 0,
            PackageFile.stored,
        )
    )
    return (await session.execute(stmt)).scalar_one_or_none()
