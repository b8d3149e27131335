"""The Omaha v3 vocabulary of Nebula: frozen values for what a host asks and what Nebula answers.

Request side: `Request` (the `<request>` and its `<os>`), `AppRequest` (one `<app>`) and `Event`
(one `<event>`), as produced by `nebula.omaha.parse`. Response side: `Response`, `AppResponse`,
`UpdateCheckResult`, `Manifest` and `PackageFile`, as consumed by `nebula.omaha.build`. The status
enums hold the one table of status strings that go on the wire. `arch_of` tells a host's
architecture from what it sent.

Pure: imports only the standard library. No lxml here (parse and build own the XML), no database,
no web framework, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

__all__ = [
    "FLAG_DEV_IMAGE",
    "FLAG_RESUMED",
    "FLAG_SELF_HOSTED",
    "AppRequest",
    "AppResponse",
    "AppStatus",
    "Event",
    "EventResult",
    "EventType",
    "Manifest",
    "PackageFile",
    "Request",
    "Response",
    "UpdateCheckResult",
    "UpdateStatus",
    "arch_of",
]

# update_engine ORs these into every error code it reports (see the contract, §3).
_BASE_CODE_MASK = 0x0FFF_FFFF
_FLAGS_MASK = 0xF000_0000
FLAG_SELF_HOSTED = 1 << 28
"""Set whenever the host's SERVER is not Flatcar's public server: always set for Nebula."""
FLAG_DEV_IMAGE = 1 << 29
"""Set when the host runs a developer image."""
FLAG_RESUMED = 1 << 30
"""Set when the failed download had been resumed."""


class EventType(IntEnum):
    """The `eventtype` values update_engine sends. `Event.type` stays a plain int (clients may
    send others); these names only make comparisons readable."""

    UNKNOWN = 0
    DOWNLOAD_COMPLETE = 1
    INSTALL_COMPLETE = 2
    UPDATE_COMPLETE = 3
    UPDATE_DOWNLOAD_STARTED = 13
    UPDATE_DOWNLOAD_FINISHED = 14


class EventResult(IntEnum):
    """The `eventresult` values update_engine sends."""

    ERROR = 0
    SUCCESS = 1
    SUCCESS_REBOOT = 2


@dataclass(frozen=True, slots=True)
class Event:
    """One `<event>` of an app: what happened on the host since its last request."""

    type: int
    result: int
    error_code: int | None
    """`errorcode` as sent, flag bits included, as an unsigned 32-bit value; None if absent."""
    previous_version: str | None
    """`previousversion`: None if absent, "" if sent empty."""

    @property
    def base_code(self) -> int | None:
        """The error code without update_engine's flag bits (28..31), or None without a code."""
        if self.error_code is None:
            return None
        return self.error_code & _BASE_CODE_MASK

    @property
    def flags(self) -> int:
        """The flag bits of the error code (`FLAG_*`), 0 without a code."""
        if self.error_code is None:
            return 0
        return self.error_code & _FLAGS_MASK


@dataclass(frozen=True, slots=True)
class AppRequest:
    """One `<app>` of a request. Attributes are None when absent and "" when sent empty."""

    app_id: str
    """Normalized appid: surrounding whitespace and braces stripped, lowercase."""
    raw_app_id: str
    """The appid exactly as sent; the response echoes it."""
    version: str | None
    track: str | None
    boot_id: str | None
    """Normalized like `app_id`."""
    machine_id: str | None
    """Lowercase, surrounding whitespace and braces stripped; dashes are kept as sent."""
    machine_alias: str | None
    oem: str | None
    oem_version: str | None
    aleph_version: str | None
    board: str | None
    hardware_class: str | None
    lang: str | None
    delta_okay: bool
    ping: bool
    """A `<ping>` element is present (whatever its attributes)."""
    update_check: bool
    """An `<updatecheck>` element is present."""
    events: tuple[Event, ...]


@dataclass(frozen=True, slots=True)
class Request:
    """One `<request>`: the client, its `<os>` and its apps (at least one)."""

    protocol: str
    client_version: str | None
    """`request@version`, e.g. "update_engine-0.4.10" or "FlatcarUpdateEngine-0.1.0.0"."""
    updater_version: str | None
    install_source: str | None
    is_machine: bool
    os_version: str | None
    os_platform: str | None
    os_sp: str | None
    apps: tuple[AppRequest, ...]

    @property
    def is_stub(self) -> bool:
        """The request comes from `update_engine_stub` (diskless hosts)."""
        return self.client_version is not None and self.client_version.startswith(
            "FlatcarUpdateEngine"
        )


_ARCH_BY_BOARD = {"amd64-usr": "amd64", "arm64-usr": "arm64"}
# `uname -m` itself may hold "_" (x86_64), so match whole suffixes rather than split.
_ARCH_BY_SP_SUFFIX = (("_x86_64", "amd64"), ("_aarch64", "arm64"))


def arch_of(request: Request, app: AppRequest) -> str | None:
    """The architecture ("amd64" or "arm64") of the host, or None when it cannot be told.

    `board` decides when it is a known board; otherwise the `uname -m` suffix of `os@sp`
    ("3815.2.0_x86_64"). update_engine_stub sends neither, so its hosts give None.
    """
    if app.board is not None:
        arch = _ARCH_BY_BOARD.get(app.board.lower())
        if arch is not None:
            return arch
    if request.os_sp is not None:
        sp = request.os_sp.lower()
        for suffix, arch in _ARCH_BY_SP_SUFFIX:
            if sp.endswith(suffix):
                return arch
    return None


class UpdateStatus(StrEnum):
    """`updatecheck@status`; the value is the exact wire string.

    update_engine treats anything but OK and NO_UPDATE as an invalid response (error 34) and
    reports a failure, so a held-back host gets NO_UPDATE, never an error.
    """

    OK = "ok"
    NO_UPDATE = "noupdate"
    INTERNAL = "error-internal"
    OS_NOT_SUPPORTED = "error-osnotsupported"
    HW_NOT_SUPPORTED = "error-hwnotsupported"
    # The host's track (GROUP in update.conf) names no group on its architecture. An error, not
    # noupdate: the host is misconfigured and its operator should see it fail loudly.
    UNKNOWN_TRACK = "error-unknownTrack"


class AppStatus(StrEnum):
    """`app@status`; the value is the exact wire string."""

    OK = "ok"
    RESTRICTED = "restricted"
    UNKNOWN_APP = "error-unknownApplication"
    INVALID_APP_ID = "error-invalidAppId"
    # An <app> Nebula cannot record (a machine id or version longer than any real host sends):
    # answered on its own, so that the request's other apps are still served.
    INVALID_REQUEST = "error-invalidRequest"
    INTERNAL = "error-internal"


@dataclass(frozen=True, slots=True)
class PackageFile:
    """One `<package>` of a manifest: a payload file under the codebase URL."""

    name: str
    size: int
    sha1_b64: str
    """Base64 of the SHA-1 of the whole file -> `package@hash`."""
    sha256_hex: str
    """Lowercase hex of the SHA-256 of the whole file -> `package@hash_sha256`."""
    required: bool


@dataclass(frozen=True, slots=True)
class Manifest:
    """What an OK update check offers: one version, where to fetch it, and its files."""

    version: str
    codebase: str
    """Base URL of the files; build appends a "/" when it is missing."""
    packages: tuple[PackageFile, ...]
    """The main payload first (required), then every extension payload (not required)."""
    sha256_b64: str
    """Base64 of the SHA-256 of the first package -> `action@sha256`."""
    is_delta: bool


@dataclass(frozen=True, slots=True)
class UpdateCheckResult:
    """The answer to one `<updatecheck>`."""

    status: UpdateStatus
    manifest: Manifest | None = None
    """Required when `status` is OK, forbidden otherwise."""
    poll_interval: int | None = None
    """Seconds until the next check -> `updatecheck@PollInterval` when set."""


@dataclass(frozen=True, slots=True)
class AppResponse:
    """The answer to one `<app>`."""

    raw_app_id: str
    status: AppStatus
    ping: bool
    """Answer a `<ping>`: true iff the request had one."""
    event_count: int
    """Number of `<event status="ok">` acknowledgements: one per event of the request."""
    update_check: UpdateCheckResult | None
    """None when the request had no `<updatecheck>`."""


@dataclass(frozen=True, slots=True)
class Response:
    """A whole `<response>`: one `AppResponse` per requested app, in request order."""

    apps: tuple[AppResponse, ...]
    server: str = "nebula"
    daystart_elapsed_seconds: int = 0
