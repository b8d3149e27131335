"""A HostSpec as a Butane config (YAML), the form people write and review.

`variant: flatcar`, `version: 1.1.0`: what `butane` turns into the same Ignition 3.4.0 that
nebula.provisioning.ignition writes (1.2.0 is experimental and no shipped Flatcar reads its
output). Fields are Butane's snake_case; modes are YAML octal (0644); inline contents are literal
blocks. The YAML is written here, not by a library: the plan holds only checked values, and a
scalar that YAML could read as something else is double-quoted (JSON's quoting is valid YAML).

Pure: imports only the standard library and nebula.provisioning.
"""

from __future__ import annotations

import json
import re

from nebula.provisioning.plan import FileNode, Plan, UnitNode, build_plan
from nebula.provisioning.spec import HostSpec

BUTANE_VARIANT = "flatcar"
BUTANE_VERSION = "1.1.0"

_PLAIN = re.compile(r"^[A-Za-z0-9/][A-Za-z0-9/_.=:@%+~,-]*$")
# Plain scalars YAML 1.1 or 1.2 could read as a bool, null or number (1:20 is sexagesimal in
# 1.1, 0x1f and 1e3 are numbers): quoted. Quoting more than needed is harmless.
_AMBIGUOUS = re.compile(
    r"^(?:y|n|yes|no|true|false|on|off|null|~|[-+.]?[0-9][0-9a-fA-FxXoO:._+-]*)$", re.I
)


def scalar(value: str) -> str:
    if _PLAIN.match(value) and not _AMBIGUOUS.match(value):
        return value
    return json.dumps(value)


def block(text: str, indent: int) -> str:
    """A literal block (`|`, or `|-` without a final newline), indented; a double-quoted string
    where a block cannot keep the text exactly (leading blank, tabs or other unprintable
    characters, trailing blank lines)."""
    printable = all(c == "\n" or c.isprintable() for c in text)
    if not text or text[0] in " \n" or not printable or text.endswith("\n\n"):
        return json.dumps(text)
    head = "|" if text.endswith("\n") else "|-"
    pad = " " * indent
    lines = [pad + line if line else "" for line in text.removesuffix("\n").split("\n")]
    return head + "\n" + "\n".join(lines)


def _file(node: FileNode) -> list[str]:
    out = []
    if node.note:
        out.append(f"    # {node.note}")
    out.append(f"    - path: {scalar(node.path)}")
    if node.overwrite:
        out.append("      overwrite: true")
    out.append(f"      mode: 0{node.mode:o}")  # YAML octal, as Butane reads modes
    out.append("      contents:")
    if node.text is not None:
        out.append(f"        inline: {block(node.text, 10)}")
    else:
        out.append(f"        source: {scalar(node.source or '')}")
        if node.sha256 is not None:
            out.append("        verification:")
            out.append(f"          hash: sha256-{node.sha256}")
    return out


def _unit(node: UnitNode) -> list[str]:
    out = [f"    - name: {scalar(node.name)}"]
    if node.enabled is not None:
        out.append(f"      enabled: {'true' if node.enabled else 'false'}")
    if node.dropins:
        out.append("      dropins:")
        for d in node.dropins:
            out.append(f"        - name: {scalar(d.name)}")
            out.append(f"          contents: {block(d.contents, 12)}")
    return out


def butane_text(plan: Plan) -> str:
    lines = [f"variant: {BUTANE_VARIANT}", f"version: {BUTANE_VERSION}"]
    if plan.files or plan.links:
        lines.append("storage:")
    if plan.files:
        lines.append("  files:")
        for f in plan.files:
            lines.extend(_file(f))
    if plan.links:
        lines.append("  links:")
        for link in plan.links:
            lines.append(f"    - path: {scalar(link.path)}")
            lines.append(f"      target: {scalar(link.target)}")
            lines.append("      hard: false")
    if plan.units:
        lines.append("systemd:")
        lines.append("  units:")
        for u in plan.units:
            lines.extend(_unit(u))
    if plan.kernel_arguments:
        lines.append("kernel_arguments:")
        lines.append("  should_exist:")
        lines.extend(f"    - {scalar(arg)}" for arg in plan.kernel_arguments)
    return "\n".join(lines) + "\n"


def render_butane(spec: HostSpec) -> str:
    """The Butane YAML of `spec`, ending in a newline."""
    return butane_text(build_plan(spec))
