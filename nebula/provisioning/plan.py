"""What a host gets from a HostSpec: files, links, units and kernel arguments, in one list.

Both renderings (Ignition JSON, Butane YAML) are written from this plan, so they cannot say
different things. What goes where follows Flatcar and the sysext-bakery:

- /etc/flatcar/update.conf: SERVER, GROUP, and locksmithd's REBOOT_STRATEGY and reboot window.
  Every host has that file already (empty), so it is written with overwrite.
- --alias-from-hostname: MACHINE_ALIAS is rewritten from the host name each time update_engine
  starts (a drop-in), since the name is often not known when Ignition runs (DHCP, metadata).
- /etc/flatcar/enabled-sysext.conf: Flatcar's own extensions, one name a line.
- per sysext image: the first image under /opt/extensions/NAME/, the link /etc/extensions/
  NAME.raw to it, the transfer file /etc/sysupdate.NAME.d/NAME.conf, a drop-in that runs
  `systemd-sysupdate -C NAME update` from systemd-sysupdate.service (and flags
  /run/reboot-required when the image changed), plus once: the timer and the noop transfer
  that keeps the plain `systemd-sysupdate` run from failing on an empty /etc/sysupdate.d.
- --release-server: the kernel argument flatcar.release_file_server_url.

Pure: imports only the standard library and nebula.provisioning.spec.
"""

from __future__ import annotations

from dataclasses import dataclass

from nebula.provisioning.spec import HostSpec, Sysext

MODE_FILE = 0o644  # 420 in Ignition's decimal


@dataclass(frozen=True, slots=True)
class FileNode:
    path: str
    mode: int
    text: str | None = None  # inline contents
    source: str | None = None  # a URL Ignition downloads instead
    sha256: str | None = None  # hex, verifies `source`
    overwrite: bool = False
    note: str | None = None  # said beside it in Butane (and on the CLI's stderr)


@dataclass(frozen=True, slots=True)
class LinkNode:
    path: str
    target: str


@dataclass(frozen=True, slots=True)
class Dropin:
    name: str
    contents: str


@dataclass(frozen=True, slots=True)
class UnitNode:
    name: str
    enabled: bool | None = None
    dropins: tuple[Dropin, ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    files: tuple[FileNode, ...]
    links: tuple[LinkNode, ...]
    units: tuple[UnitNode, ...]
    kernel_arguments: tuple[str, ...]

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(f.note for f in self.files if f.note)


def update_conf(spec: HostSpec) -> str:
    lines = [f"SERVER={spec.update_url}", f"GROUP={spec.group}"]
    if spec.reboot_strategy is not None:
        lines.append(f"REBOOT_STRATEGY={spec.reboot_strategy}")
    if spec.reboot_window is not None:
        # locksmithd wants the start quoted (it holds a space).
        lines.append(f'LOCKSMITHD_REBOOT_WINDOW_START="{spec.reboot_window.start}"')
        lines.append(f"LOCKSMITHD_REBOOT_WINDOW_LENGTH={spec.reboot_window.length}")
    return "".join(line + "\n" for line in lines)


# `$$` is a literal `$` for systemd; the host name is read when the unit starts, not when
# systemd loads it (`%H` would be the name at load time, often still "localhost").
ALIAS_DROPIN = (
    "[Service]\n"
    "# MACHINE_ALIAS (shown by Nebula) follows the host name, read before update_engine starts.\n"
    'ExecStartPre=/bin/sh -c \'sed -i "/^MACHINE_ALIAS=/d" /etc/flatcar/update.conf && '
    'echo "MACHINE_ALIAS=$$(cat /proc/sys/kernel/hostname)" >> /etc/flatcar/update.conf\'\n'
)

NOOP_TRANSFER = (
    "[Source]\n"
    "Type=regular-file\n"
    "Path=/\n"
    "MatchPattern=invalid@v.raw\n"
    "[Target]\n"
    "Type=regular-file\n"
    "Path=/\n"
)


def transfer(spec: HostSpec, sysext: Sysext) -> str:
    name = sysext.name
    return (
        "[Transfer]\n"
        "Verify=false\n"
        "[Source]\n"
        "Type=url-file\n"
        f"Path={spec.sysext_base}/{name}/\n"
        f"MatchPattern={name}-@v-%a.raw\n"
        "[Target]\n"
        "InstancesMax=3\n"
        "Type=regular-file\n"
        f"Path=/opt/extensions/{name}/\n"
        f"CurrentSymlink=/etc/extensions/{name}.raw\n"
    )


def sysupdate_dropin(sysext: Sysext) -> str:
    name = sysext.name
    before = f"/run/nebula-sysext-{name}.before"
    return (
        "[Service]\n"
        f"ExecStartPre=/bin/sh -c 'readlink -f /etc/extensions/{name}.raw > {before}'\n"
        f"ExecStartPre=/usr/lib/systemd/systemd-sysupdate -C {name} update\n"
        "# A new image is merged at the next boot: say that one is due (kured and the like).\n"
        f'ExecStartPost=/bin/sh -c \'[ "$$(readlink -f /etc/extensions/{name}.raw)" = '
        f'"$$(cat {before})" ] || touch /run/reboot-required\'\n'
    )


def build_plan(spec: HostSpec) -> Plan:
    files = [FileNode("/etc/flatcar/update.conf", MODE_FILE, update_conf(spec), overwrite=True)]
    units: list[UnitNode] = []
    links: list[LinkNode] = []
    if spec.alias_from_hostname:
        units.append(
            UnitNode(
                "update-engine.service", dropins=(Dropin("50-nebula-alias.conf", ALIAS_DROPIN),)
            )
        )
    if spec.extensions:
        text = "".join(name + "\n" for name in spec.extensions)
        files.append(FileNode("/etc/flatcar/enabled-sysext.conf", MODE_FILE, text, overwrite=True))
    for sysext in spec.sysexts:
        image = sysext.image(spec.arch)
        path = f"/opt/extensions/{sysext.name}/{image}"
        note = None
        if sysext.sha256 is None:
            note = f"{image}: no SHA-256 given, so its first download is not verified"
        files.append(
            FileNode(
                path,
                MODE_FILE,
                source=f"{spec.sysext_base}/{sysext.name}/{image}",
                sha256=sysext.sha256,
                note=note,
            )
        )
        files.append(
            FileNode(
                f"/etc/sysupdate.{sysext.name}.d/{sysext.name}.conf",
                MODE_FILE,
                transfer(spec, sysext),
            )
        )
        links.append(LinkNode(f"/etc/extensions/{sysext.name}.raw", path))
    if spec.sysexts:
        files.append(FileNode("/etc/sysupdate.d/noop.conf", MODE_FILE, NOOP_TRANSFER))
        units.append(UnitNode("systemd-sysupdate.timer", enabled=True))
        units.append(
            UnitNode(
                "systemd-sysupdate.service",
                dropins=tuple(Dropin(f"{s.name}.conf", sysupdate_dropin(s)) for s in spec.sysexts),
            )
        )
    kargs = (f"flatcar.release_file_server_url={spec.release_url}",) if spec.release_server else ()
    return Plan(tuple(files), tuple(links), tuple(units), kargs)
