"""The typed description of a host config, and the checks that turn raw options into one.

`build_spec` takes the options as an operator writes them (CLI flags, or the query of
`GET /v1/ignition/{group}`) and returns a `HostSpec`, or raises `InvalidInputError` naming the
option and the fix. Everything that ends up in a file, a unit or on the kernel command line
passes a check here first, so the renderers never need to escape shell or YAML syntax.

Pure: imports only the standard library and nebula.errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from nebula.errors import InvalidInputError

REBOOT_STRATEGIES = ("reboot", "etcd-lock", "off")
# Nebula's architectures and systemd's `%a` for them, as sysext image names spell it.
SYSEXT_ARCH = {"amd64": "x86-64", "arm64": "arm64"}

# A track as update_engine sends it (GROUP=); Nebula's groups allow no more than this.
_GROUP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Names in enabled-sysext.conf: podman, zfs, nvidia-drivers-535-open; "-NAME" disables one.
_EXTENSION = re.compile(r"^-?[a-z0-9][a-z0-9_-]{0,63}$")
_SYSEXT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# Versions as published upstream (v1.31.1, 2.34.0, 1.0.0-rc1); no '/' or spaces, no ':'.
_SYSEXT_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
# locksmithd: "[Day ]HH:MM", and a Go duration (time.ParseDuration: no "d").
_WINDOW_START = re.compile(r"^(?:(mon|tue|wed|thu|fri|sat|sun) )?([01][0-9]|2[0-3]):([0-5][0-9])$")
_GO_DURATION = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?(?:h|m|s|ms|us|ns))+$")
# What a URL may hold here: it is written into update.conf, unit files and the kernel
# command line, where a space, a quote or a '$' would change its meaning.
_URL_CHARS = re.compile(r"^[A-Za-z0-9._~:/?#\[\]@!&()*+,;=%-]+$")


@dataclass(frozen=True, slots=True)
class RebootWindow:
    start: str  # "Thu 04:00", or "04:00" for every day
    length: str  # a Go duration, e.g. "1h"


@dataclass(frozen=True, slots=True)
class Sysext:
    """A systemd-sysext image kept current by systemd-sysupdate (sysext-bakery's layout)."""

    name: str
    version: str
    # Hex SHA-256 of the first image for this host's arch. None: Ignition downloads it without
    # verification (with_hashes fills it in from the images Nebula hosts, where it can).
    sha256: str | None = None

    def image(self, arch: str) -> str:
        return f"{self.name}-{self.version}-{SYSEXT_ARCH[arch]}.raw"


@dataclass(frozen=True, slots=True)
class HostSpec:
    group: str
    server: str  # Nebula's public base URL, no trailing '/'
    arch: str = "amd64"
    alias_from_hostname: bool = False
    reboot_strategy: str | None = None
    reboot_window: RebootWindow | None = None
    extensions: tuple[str, ...] = ()
    sysexts: tuple[Sysext, ...] = ()
    # Where `<name>/SHA256SUMS` and the images of each sysext live (no trailing '/'); None:
    # Nebula's own `/v1/extensions/<group>`.
    sysext_url: str | None = None
    release_server: bool = False

    @property
    def update_url(self) -> str:
        """SERVER= of update.conf: POSTed to as written, so with the trailing '/'."""
        return f"{self.server}/v1/update/"

    @property
    def release_url(self) -> str:
        """flatcar.release_file_server_url: the initrd appends `/<board>/<version>/<file>`."""
        return f"{self.server}/v1/release"

    @property
    def sysext_base(self) -> str:
        return self.sysext_url or f"{self.server}/v1/extensions/{self.group}"

    def with_hashes(self, known: Mapping[str, str]) -> HostSpec:
        """The spec with the SHA-256 of each sysext image whose hash is not given taken from
        `known` (image file name -> hex), as Nebula's sysext store supplies them."""
        filled = tuple(
            s
            if s.sha256 is not None or s.image(self.arch) not in known
            else replace(s, sha256=known[s.image(self.arch)].lower())
            for s in self.sysexts
        )
        return replace(self, sysexts=filled)


def check_group(group: str) -> str:
    if not _GROUP.match(group):
        raise InvalidInputError(
            f"group {group!r}: use the group's track, letters, digits, '.', '_', '-'"
        )
    return group


def check_url(raw: str, what: str) -> str:
    """An http(s) URL without query or fragment, with its trailing '/' removed."""
    url = raw.strip()
    parts = urlsplit(url) if _URL_CHARS.match(url) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInputError(
            f"{what} {raw!r}: give an http:// or https:// URL such as https://updates.example.com"
        )
    if parts.query or parts.fragment or "#" in url:
        raise InvalidInputError(f"{what} {raw!r}: a base URL has no query or fragment")
    return url.rstrip("/")


def check_server(raw: str) -> str:
    """Nebula's base URL; the Omaha path ("/v1/update/") is added here, so it is taken off
    when an operator copies SERVER= from an update.conf."""
    return check_url(raw, "server").removesuffix("/v1/update")  # check_url took the '/' off


def parse_sysext(raw: str) -> Sysext:
    """NAME=VERSION[:SHA256], e.g. kubernetes=v1.31.1 or kubernetes=v1.31.1:<64 hex>."""
    name, eq, rest = raw.strip().partition("=")
    version, colon, sha = rest.partition(":")
    hint = "write NAME=VERSION or NAME=VERSION:SHA256, e.g. kubernetes=v1.31.1"
    if not eq:
        raise InvalidInputError(f"sysext {raw!r}: {hint}")
    if not _SYSEXT_NAME.match(name):
        raise InvalidInputError(
            f"sysext {raw!r}: name {name!r}: use lower-case letters, digits, '-', '_' ({hint})"
        )
    if not _SYSEXT_VERSION.match(version):
        raise InvalidInputError(
            f"sysext {raw!r}: version {version!r}: letters, digits, '.', '_', '+', '~', '-' "
            f"({hint})"
        )
    if colon and not _SHA256.match(sha):
        raise InvalidInputError(f"sysext {raw!r}: the SHA-256 must be 64 hex digits")
    return Sysext(name, version, sha.lower() if colon else None)


def check_extension(name: str) -> str:
    if name.startswith(("flatcar-", "-flatcar-")) or name.endswith((".gz", ".raw")):
        raise InvalidInputError(
            f"extension {name!r}: give the bare name as enabled-sysext.conf lists it, e.g. podman"
        )
    if not _EXTENSION.match(name):
        raise InvalidInputError(
            f"extension {name!r}: use lower-case letters, digits, '-', '_' "
            "(a leading '-' disables a default one)"
        )
    return name


def check_reboot_window(start: str | None, length: str | None) -> RebootWindow | None:
    if start is None and length is None:
        return None
    if start is None or length is None:
        raise InvalidInputError(
            "reboot window: give both its start and its length (locksmithd needs both), "
            'e.g. --reboot-window "Thu 04:00" --reboot-window-length 1h'
        )
    m = _WINDOW_START.match(start.strip().lower())
    if m is None:
        raise InvalidInputError(
            f'reboot window {start!r}: write "Thu 04:00" (a day Mon..Sun, then HH:MM), '
            'or "04:00" for every day'
        )
    day, hour, minute = m.groups()
    normalized = f"{day.capitalize()} {hour}:{minute}" if day else f"{hour}:{minute}"
    text = length.strip()
    if not _GO_DURATION.match(text) or not re.search(r"[1-9]", text):
        raise InvalidInputError(
            f"reboot window length {length!r}: a positive duration like 1h, 90m or 1h30m"
        )
    return RebootWindow(normalized, text)


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def build_spec(
    *,
    group: str,
    server: str,
    arch: str = "amd64",
    alias_from_hostname: bool = False,
    reboot_strategy: str | None = None,
    reboot_window: str | None = None,
    reboot_window_length: str | None = None,
    extensions: Iterable[str] = (),
    sysexts: Iterable[str] = (),
    sysext_url: str | None = None,
    release_server: bool = False,
) -> HostSpec:
    """A checked HostSpec from options as written; InvalidInputError names what is wrong."""
    if arch not in SYSEXT_ARCH:
        raise InvalidInputError(f"arch must be one of {', '.join(SYSEXT_ARCH)}, got {arch!r}")
    if reboot_strategy is not None and reboot_strategy not in REBOOT_STRATEGIES:
        raise InvalidInputError(
            f"reboot strategy {reboot_strategy!r}: one of {', '.join(REBOOT_STRATEGIES)}"
        )
    parsed = [parse_sysext(s) for s in sysexts]
    names = [s.name for s in parsed]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidInputError(
            f"sysext {', '.join(twice)} given twice: a host starts with one version of each"
        )
    return HostSpec(
        group=check_group(group),
        server=check_server(server),
        arch=arch,
        alias_from_hostname=alias_from_hostname,
        reboot_strategy=reboot_strategy,
        reboot_window=check_reboot_window(reboot_window, reboot_window_length),
        extensions=_unique(check_extension(e.strip()) for e in extensions),
        sysexts=tuple(parsed),
        sysext_url=check_url(sysext_url, "sysext URL") if sysext_url else None,
        release_server=release_server,
    )
