"""SQLAlchemy 2 models: the whole schema of Nebula in one place.

Imports nothing of Nebula beyond this package. The migrations under migrations/ are the source of
truth for the database; these classes must match them (tests/store/test_schema.py compares).
Invariants live here as constraints too: hash lengths, positive sizes, one full package per
(app, arch, version), one delta per (app, arch, version, source version), foreign keys everywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a real bigint.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


RETIRE_AFTER_DEFAULT = 14 * 86400  # a host silent for two weeks is gone (migration 0009)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both databases (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: Nebula stores aware UTC times only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class Application(Base):
    __tablename__ = "applications"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # lower-case UUID, no braces
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]


class Package(Base):
    """One version of an application for one architecture: a full image, or a delta from one
    source version."""

    __tablename__ = "packages"
    __table_args__ = (
        CheckConstraint("kind IN ('full', 'delta')", name="kind"),
        CheckConstraint(
            "(kind = 'full' AND from_version IS NULL)"
            " OR (kind = 'delta' AND from_version IS NOT NULL)",
            name="delta_source",
        ),
        Index(
            "uq_packages_full",
            "app_id",
            "arch",
            "version",
            unique=True,
            sqlite_where=text("kind = 'full'"),
            postgresql_where=text("kind = 'full'"),
        ),
        Index(
            "uq_packages_delta",
            "app_id",
            "arch",
            "version",
            "from_version",
            unique=True,
            sqlite_where=text("kind = 'delta'"),
            postgresql_where=text("kind = 'delta'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("applications.id", ondelete="RESTRICT"))
    version: Mapped[str] = mapped_column(String(64))
    arch: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(8))
    from_version: Mapped[str | None] = mapped_column(String(64))
    # Set when the files are hosted elsewhere (CDN, Flatcar's release server): the codebase.
    base_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(100), default="")

    files: Mapped[list[PackageFile]] = relationship(
        back_populates="package",
        order_by="PackageFile.position",
        cascade="all, delete-orphan",
        lazy="selectin",
    )


class PackageFile(Base):
    """A payload file of a package; position 0 is the main payload, the rest are extensions."""

    __tablename__ = "package_files"
    __table_args__ = (
        UniqueConstraint("package_id", "position"),
        UniqueConstraint("package_id", "name"),
        CheckConstraint("size > 0", name="size_positive"),
        CheckConstraint("length(sha1) = 40", name="sha1_len"),
        CheckConstraint("length(sha256) = 64", name="sha256_len"),
        CheckConstraint("position >= 0", name="position"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    package_id: Mapped[str] = mapped_column(ForeignKey("packages.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha1: Mapped[str] = mapped_column(String(40))  # lower-case hex
    sha256: Mapped[str] = mapped_column(String(64), index=True)  # lower-case hex; the storage key
    stored: Mapped[bool] = mapped_column(Boolean, default=False)  # bytes in Nebula's payload store
    signer: Mapped[str | None] = mapped_column(String(64))  # fingerprint of the verifying key

    package: Mapped[Package] = relationship(back_populates="files")


class Channel(Base):
    """A named stream (alpha, beta, stable, lts, custom) per architecture, pointing at a package."""

    __tablename__ = "channels"
    __table_args__ = (UniqueConstraint("app_id", "name", "arch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("applications.id", ondelete="RESTRICT"))
    name: Mapped[str] = mapped_column(String(100))
    arch: Mapped[str] = mapped_column(String(16))
    package_id: Mapped[str | None] = mapped_column(ForeignKey("packages.id", ondelete="RESTRICT"))
    updated_at: Mapped[datetime]
    updated_by: Mapped[str] = mapped_column(String(100), default="")


class Group(Base):
    """Hosts that send the same track on the same architecture, with their rollout policy."""

    __tablename__ = "groups"
    __table_args__ = (
        UniqueConstraint("app_id", "track", "arch"),
        UniqueConstraint("app_id", "name", "arch"),
        CheckConstraint("percentage >= 0 AND percentage <= 100", name="percentage"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("applications.id", ondelete="RESTRICT"))
    name: Mapped[str] = mapped_column(String(100))
    track: Mapped[str] = mapped_column(String(100))
    arch: Mapped[str] = mapped_column(String(16))
    channel_id: Mapped[int | None] = mapped_column(ForeignKey("channels.id", ondelete="RESTRICT"))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    # Rollout policy (enforced by nebula.policy; see the rollout policy issue).
    updates_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    paused_reason: Mapped[str | None] = mapped_column(Text)
    paused_by: Mapped[str | None] = mapped_column(String(100))
    paused_at: Mapped[datetime | None]
    max_updates_per_period: Mapped[int | None] = mapped_column(Integer)
    period_seconds: Mapped[int | None] = mapped_column(Integer)
    max_concurrent: Mapped[int | None] = mapped_column(Integer)
    update_timeout_seconds: Mapped[int | None] = mapped_column(Integer)
    safe_mode: Mapped[bool] = mapped_column(Boolean, default=False)
    pause_on_failed_hosts: Mapped[int | None] = mapped_column(Integer)
    pause_on_failed_percent: Mapped[float | None] = mapped_column(Float)
    windows: Mapped[list[Any]] = mapped_column(JSON, default=list)
    percentage: Mapped[float] = mapped_column(Float, default=100.0)
    pin_version: Mapped[str | None] = mapped_column(String(64))
    allow_downgrade: Mapped[bool] = mapped_column(Boolean, default=False)
    # The failure gate counts failures and attempts since the last resume: an operator who
    # resumes after looking into a pause starts the count afresh.
    resumed_at: Mapped[datetime | None]
    # Hosts that installed an update and wait for their reboot (issue 12): past this they are
    # flagged as overdue (a warning, never a failure); and whether they hold a concurrency slot.
    reboot_timeout_seconds: Mapped[int | None] = mapped_column(Integer)
    installed_counts_as_updating: Mapped[bool] = mapped_column(
        Boolean, default=True, server_default=true()
    )
    # Hosts not seen this long are retired: out of every count until they check in again
    # (nebula.jobs.retirement). None: never.
    retire_after_seconds: Mapped[int | None] = mapped_column(
        Integer, default=RETIRE_AFTER_DEFAULT, server_default=text(str(RETIRE_AFTER_DEFAULT))
    )


class Instance(Base):
    """A host, keyed by its machine id; what it last told us about itself."""

    __tablename__ = "instances"
    __table_args__ = (
        # Hosts by last seen, ties by machine id: keyset pages (migration 0013), retirement.
        Index("ix_instances_last_seen_id", "last_seen_at", "id"),
        Index("ix_instances_alias", "alias"),  # search by alias
        Index("ix_instances_ip", "ip"),  # search by address
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # machine id
    alias: Mapped[str | None] = mapped_column(String(255))
    ip: Mapped[str | None] = mapped_column(String(64))
    oem: Mapped[str | None] = mapped_column(String(64))
    oem_version: Mapped[str | None] = mapped_column(String(64))
    aleph_version: Mapped[str | None] = mapped_column(String(64))
    board: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]


class InstanceApp(Base):
    """One host's update state for one application."""

    __tablename__ = "instance_apps"
    __table_args__ = (
        Index("ix_instance_apps_group_status", "group_id", "status"),
        Index("ix_instance_apps_group_version", "group_id", "version"),
        # Hosts by version, keyset pages of the admin API (migration 0013).
        Index("ix_instance_apps_version_key", "version", "instance_id", "app_id"),
        # The few hosts rollout status looks at one by one (nebula.store.rollouts).
        Index(
            "ix_instance_apps_held",
            "group_id",
            sqlite_where=text("held"),
            postgresql_where=text("held"),
        ),
        Index(
            "ix_instance_apps_hold_reason",
            "group_id",
            "hold_reason",
            sqlite_where=text("hold_reason IS NOT NULL"),
            postgresql_where=text("hold_reason IS NOT NULL"),
        ),
        Index(
            "ix_instance_apps_retired",
            "group_id",
            sqlite_where=text("retired_at IS NOT NULL"),
            postgresql_where=text("retired_at IS NOT NULL"),
        ),
        CheckConstraint(
            "status IN ('new', 'idle', 'granted', 'downloading', 'downloaded', 'installed', "
            "'complete', 'error', 'rolled_back', 'timed_out')",
            name="status",
        ),
    )

    instance_id: Mapped[str] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True
    )
    app_id: Mapped[str] = mapped_column(
        ForeignKey("applications.id", ondelete="RESTRICT"), primary_key=True
    )
    group_id: Mapped[str | None] = mapped_column(ForeignKey("groups.id", ondelete="SET NULL"))
    track: Mapped[str | None] = mapped_column(String(100))
    version: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="new")
    boot_id: Mapped[str | None] = mapped_column(String(64))
    granted_version: Mapped[str | None] = mapped_column(String(64))
    granted_package_id: Mapped[str | None] = mapped_column(
        ForeignKey("packages.id", ondelete="SET NULL")
    )
    granted_at: Mapped[datetime | None]
    # When it reported the update installed (3/1): how long it has waited for its reboot.
    installed_at: Mapped[datetime | None]
    status_changed_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]
    last_check_at: Mapped[datetime | None]
    last_error_code: Mapped[int | None] = mapped_column(BigInteger)
    last_error_at: Mapped[datetime | None]
    hold_reason: Mapped[str | None] = mapped_column(String(32))
    held: Mapped[bool] = mapped_column(Boolean, default=False)  # operator hold (per host)
    created_at: Mapped[datetime]
    # Not seen for its group's retire_after: left out of the maintained counts (and so of
    # rollout status, /metrics and the default instance list) until it checks in again.
    retired_at: Mapped[datetime | None]


class Event(Base):
    """The event log: every event a host sent, with its error code decoded."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_instance_time", "instance_id", "created_at"),
        Index("ix_events_group_time", "group_id", "created_at"),
        Index("ix_events_time_id", "created_at", "id"),  # the fleet's events, newest first
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime]
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    app_id: Mapped[str] = mapped_column(ForeignKey("applications.id", ondelete="RESTRICT"))
    group_id: Mapped[str | None] = mapped_column(ForeignKey("groups.id", ondelete="SET NULL"))
    event_type: Mapped[int] = mapped_column(Integer)
    event_result: Mapped[int] = mapped_column(Integer)
    error_code: Mapped[int | None] = mapped_column(BigInteger)  # as sent, flags included
    base_code: Mapped[int | None] = mapped_column(Integer)  # error_code & 0x0fffffff
    flags: Mapped[int | None] = mapped_column(BigInteger)  # error_code & 0xf0000000
    version: Mapped[str | None] = mapped_column(String(64))
    previous_version: Mapped[str | None] = mapped_column(String(64))
    boot_id: Mapped[str | None] = mapped_column(String(64))


class ApiToken(Base):
    """An admin API token. Only its SHA-256 is kept: the token itself is shown once, at creation."""

    __tablename__ = "api_tokens"
    __table_args__ = (CheckConstraint("role IN ('admin', 'viewer')", name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class ConfigStamp(Base):
    """A single row bumped by every admin change, so that every replica drops its cache."""

    __tablename__ = "config_stamp"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stamp: Mapped[int] = mapped_column(BigInteger, default=0)


class Grant(Base):
    """Every new grant: the rate limit counts these in a sliding window, and status reports read
    the pace of a rollout from them."""

    __tablename__ = "grants"
    __table_args__ = (
        Index("ix_grants_group_time", "group_id", "granted_at"),
        Index("ix_grants_instance_time", "instance_id", "granted_at"),  # a host's history
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    group_id: Mapped[str] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"))
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(64))
    granted_at: Mapped[datetime]


class ChannelFloor(Base):
    """A version every host of the channel must pass through on its way to newer ones."""

    __tablename__ = "channel_floors"
    __table_args__ = (UniqueConstraint("channel_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(100), default="")


class Activity(Base):
    """The activity log: pauses, resumes (automatic and manual), policy and channel changes."""

    __tablename__ = "activity"
    __table_args__ = (
        Index("ix_activity_group_time", "group_id", "created_at"),
        Index("ix_activity_time_id", "created_at", "id"),  # the fleet-wide log, newest first
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime]
    group_id: Mapped[str | None] = mapped_column(ForeignKey("groups.id", ondelete="SET NULL"))
    actor: Mapped[str] = mapped_column(String(100))  # a token's name, or "nebula" for automatic
    action: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Failure(Base):
    """A host that failed to update a group to a version (error, rollback or timeout), kept even
    when the host retries: the failure gate counts hosts that failed, not hosts failed right now."""

    __tablename__ = "failures"
    __table_args__ = (
        UniqueConstraint("group_id", "version", "instance_id"),
        CheckConstraint("kind IN ('error', 'rolled_back', 'timed_out')", name="kind"),
        Index("ix_failures_instance", "instance_id"),  # a host's history
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    group_id: Mapped[str] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(64))
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    code: Mapped[int | None] = mapped_column(BigInteger)  # base error code, when one was sent
    first_at: Mapped[datetime]
    last_at: Mapped[datetime]
    count: Mapped[int] = mapped_column(Integer, default=1)


class CountSample(Base):
    """The status counts of a group at one moment (nebula.store.history): the rollup that
    rollout history and dashboards read, taken from the maintained counts every few minutes,
    thinned to one an hour after a day, to one every four hours after a week, and pruned after
    history_retention (nebula.store.history)."""

    __tablename__ = "count_samples"
    # Taking, thinning and pruning samples select by time across groups.
    __table_args__ = (Index("ix_count_samples_at", "at"),)

    group_id: Mapped[str] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )
    at: Mapped[datetime] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    hosts: Mapped[int] = mapped_column(Integer)
    # The coarsest grid the stamp lies on, in seconds: 14400 (every four hours, UTC), 3600 (on
    # the hour) or 0. Thinning keeps the samples on the grid their age calls for.
    grid: Mapped[int] = mapped_column(Integer, server_default="0")


class StatusCount(Base):
    """How many hosts of a group are in each status on each version, kept up to date in the same
    transaction as every change of either, so that /metrics, dashboards and rollout status never
    scan the hosts. The version is '' for hosts that have not named one.

    Each (group, status) is spread over a few shard rows, picked by the host's machine id, and
    read as their sum: thousands of new hosts checking in at once would otherwise all queue on
    one row lock."""

    __tablename__ = "status_counts"

    group_id: Mapped[str] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True, server_default="")
    shard: Mapped[int] = mapped_column(Integer, primary_key=True, default=0)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class Completion(Base):
    """A host that completed an update to a version in a group, kept whatever the host does
    next: safe mode's canary has passed once one host completed the version, even when that
    host has since moved on to the next floor or the target."""

    __tablename__ = "completions"
    __table_args__ = (
        UniqueConstraint("group_id", "version", "instance_id"),
        Index("ix_completions_instance", "instance_id"),  # a host's history
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    group_id: Mapped[str] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(64))
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    completed_at: Mapped[datetime]


class SysextImage(Base):
    """A systemd-sysext image (`<name>-<version>-<arch>.raw`, sysext-bakery's naming) kept in
    the payload store by its SHA-256, for hosts' systemd-sysupdate (nebula.sysext)."""

    __tablename__ = "sysext_images"
    __table_args__ = (
        UniqueConstraint("name", "version", "arch"),
        CheckConstraint("arch IN ('x86-64', 'arm64')", name="arch"),
        CheckConstraint("size > 0", name="size_positive"),
        CheckConstraint("length(sha256) = 64", name="sha256_len"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    arch: Mapped[str] = mapped_column(String(8))  # systemd's %a: x86-64 or arm64
    sha256: Mapped[str] = mapped_column(String(64), index=True)  # lower-case hex; the storage key
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(100), default="")


class SysextPromotion(Base):
    """A sysext image offered to the hosts of a track (GROUP= in update.conf; one track names
    a group on each architecture, and the image's arch says which hosts can use it). Keyed by
    the track, the name hosts use in the URL, rather than by group row; an image cannot be
    deleted while it is promoted (RESTRICT)."""

    __tablename__ = "sysext_promotions"
    __table_args__ = (UniqueConstraint("track", "image_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    track: Mapped[str] = mapped_column(String(100))
    image_id: Mapped[int] = mapped_column(
        ForeignKey("sysext_images.id", ondelete="RESTRICT"), index=True
    )
    promoted_at: Mapped[datetime]
    promoted_by: Mapped[str] = mapped_column(String(100), default="")
