"""sysext image file names and the SHA256SUMS index, as systemd-sysupdate reads them.

Images are named as sysext-bakery publishes them, `<ext>-<version>-<arch>.raw` with systemd's
`%a` for the arch (`x86-64` or `arm64`), because the transfer file on the host matches
`<ext>-@v-%a.raw`. The index is `sha256sum` output: 64 lower-case hex digits, two spaces, the
file name, and a newline after every line, the last one included.

Pure: imports only the standard library, nebula.errors and nebula.provisioning.spec (whose
name and version checks a host config applies, so every stored image can be named in one).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from nebula.errors import InvalidInputError
from nebula.provisioning.spec import SYSEXT_ARCH, parse_sysext

ARCHES = ("x86-64", "arm64")
# Nebula's arch (groups, host-config --arch) for each image arch.
NEBULA_ARCH = {v: k for k, v in SYSEXT_ARCH.items()}
INDEX = "SHA256SUMS"
FORM = "<ext>-<version>-<arch>.raw with arch x86-64 or arm64, e.g. kubernetes-v1.31.1-x86-64.raw"
# Where the version starts when the upload does not name the extension: the first '-' before a
# digit or a 'v' and a digit (docker-compose-2.34.0, kubernetes-v1.31.1).
_VERSION_START = re.compile(r"-(?=v?[0-9])")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class ImageName:
    name: str  # the extension, e.g. kubernetes
    version: str
    arch: str  # x86-64 or arm64

    @property
    def file_name(self) -> str:
        return f"{self.name}-{self.version}-{self.arch}.raw"


def check_image_arch(arch: str) -> str:
    if arch not in ARCHES:
        raise InvalidInputError(f"sysext arch must be x86-64 or arm64, got {arch!r}")
    return arch


def is_ext_name(name: str) -> bool:
    """Whether `name` can be an extension's name (what a host config accepts)."""
    try:
        parse_sysext(f"{name}=0")
    except InvalidInputError:
        return False
    return True


def parse_image_name(file_name: str, ext: str | None = None) -> ImageName:
    """The parts of an image's file name; InvalidInputError naming the expected form.

    `ext` says where the name ends when it is ambiguous (an extension whose own name has a
    '-' before a digit, such as nvidia-drivers-535-open)."""
    bad = InvalidInputError(f"sysext image {file_name!r}: name it {FORM}")
    stem = file_name.removesuffix(".raw")
    if stem == file_name:
        raise bad
    arch = next((a for a in ARCHES if stem.endswith(f"-{a}")), None)
    if arch is None:
        raise bad
    stem = stem[: -len(arch) - 1]
    if ext is not None:
        if not stem.startswith(f"{ext}-"):
            raise InvalidInputError(
                f"sysext image {file_name!r} does not start with {ext}-: name it {FORM}"
            )
        name, version = ext, stem[len(ext) + 1 :]
    else:
        m = _VERSION_START.search(stem)
        if m is None:
            raise bad
        name, version = stem[: m.start()], stem[m.end() :]
    try:
        parse_sysext(f"{name}={version}")
    except InvalidInputError as exc:
        raise InvalidInputError(f"sysext image {file_name!r}: name it {FORM} ({exc})") from None
    return ImageName(name, version, arch)


def render_index(entries: Iterable[tuple[str, str]]) -> str:
    """SHA256SUMS for (sha256 hex, file name) pairs, sorted by file name."""
    lines = []
    for sha256, file_name in sorted(entries, key=lambda e: e[1]):
        if not _HEX64.match(sha256) or "/" in file_name or "\n" in file_name:
            raise ValueError(f"not an index entry: {sha256!r} {file_name!r}")
        lines.append(f"{sha256}  {file_name}\n")
    return "".join(lines)
