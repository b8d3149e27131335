"""What a non-editable install ships (`pip install .`, as the container image does): every
package of nebula/ must be named in pyproject.toml's explicit package list, or it is missing
from the wheel while every editable test run still passes. Catches a new package (a new
domain's folder) that was not added there."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_of_nebula_is_in_the_wheel() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "nebula").rglob("__init__.py")
    }
    assert on_disk - listed == set()
    assert {"nebula._migrations", "nebula._migrations.versions"} <= listed
