"""Host onboarding: the Butane and Ignition configs that point a Flatcar host at Nebula.

    spec.py      the typed description of a host config and the checks of every option
    plan.py      spec -> the files, links, units and kernel arguments a host gets (one list,
                 so the two renderings below cannot disagree)
    dataurl.py   file contents as `data:` URLs that Ignition decodes byte for byte
    ignition.py  plan -> Ignition 3.4.0 JSON
    butane.py    plan -> Butane YAML (`variant: flatcar`, `version: 1.1.0`)

Pure: no database, no aiohttp, no clock, no environment; imports only the standard library and
nebula.errors. The CLI (`nebula host-config`) and the host route (`GET /v1/ignition/{group}`)
both build their answer here.
"""

from __future__ import annotations

from nebula.provisioning.butane import render_butane
from nebula.provisioning.ignition import render_ignition
from nebula.provisioning.spec import (
    REBOOT_STRATEGIES,
    HostSpec,
    RebootWindow,
    Sysext,
    build_spec,
    parse_sysext,
)

__all__ = [
    "REBOOT_STRATEGIES",
    "HostSpec",
    "RebootWindow",
    "Sysext",
    "build_spec",
    "parse_sysext",
    "render_butane",
    "render_ignition",
]
