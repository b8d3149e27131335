"""A HostSpec as an Ignition 3.4.0 config (JSON), the form a host's initrd reads.

Spec 3.4.0, because every supported Flatcar channel accepts it (LTS ships Ignition 2.19, which
reads up to 3.4.0). Modes are decimal integers (0644 is 420); inline contents are `data:` URLs
(nebula.provisioning.dataurl); downloads carry `sha256-<hex>` verification when the hash is
known. Keys appear in a fixed order so the same spec always gives the same bytes.

Pure: imports only the standard library and nebula.provisioning.
"""

from __future__ import annotations

import json
from typing import Any

from nebula.provisioning.dataurl import data_url
from nebula.provisioning.plan import FileNode, Plan, UnitNode, build_plan
from nebula.provisioning.spec import HostSpec

IGNITION_VERSION = "3.4.0"


def _file(node: FileNode) -> dict[str, Any]:
    out: dict[str, Any] = {"path": node.path}
    if node.overwrite:
        out["overwrite"] = True
    out["mode"] = node.mode  # an int: json writes it in decimal, as Ignition wants
    contents: dict[str, Any] = {
        "source": data_url(node.text) if node.text is not None else node.source
    }
    if node.sha256 is not None:
        contents["verification"] = {"hash": f"sha256-{node.sha256}"}
    out["contents"] = contents
    return out


def _unit(node: UnitNode) -> dict[str, Any]:
    out: dict[str, Any] = {"name": node.name}
    if node.enabled is not None:
        out["enabled"] = node.enabled
    if node.dropins:
        out["dropins"] = [{"name": d.name, "contents": d.contents} for d in node.dropins]
    return out


def ignition_config(plan: Plan) -> dict[str, Any]:
    config: dict[str, Any] = {"ignition": {"version": IGNITION_VERSION}}
    storage: dict[str, Any] = {}
    if plan.files:
        storage["files"] = [_file(f) for f in plan.files]
    if plan.links:
        storage["links"] = [
            {"path": link.path, "target": link.target, "hard": False} for link in plan.links
        ]
    if storage:
        config["storage"] = storage
    if plan.units:
        config["systemd"] = {"units": [_unit(u) for u in plan.units]}
    if plan.kernel_arguments:
        config["kernelArguments"] = {"shouldExist": list(plan.kernel_arguments)}
    return config


def render_ignition(spec: HostSpec) -> str:
    """The Ignition JSON of `spec`, indented, ending in a newline."""
    return json.dumps(ignition_config(build_plan(spec)), indent=2) + "\n"
