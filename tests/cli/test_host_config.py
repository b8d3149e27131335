"""`nebula host-config`: offline, every flag reaches the config, mistakes are one line."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml
from click.testing import CliRunner

from nebula.cli.main import main
from nebula.provisioning import build_spec, render_butane, render_ignition
from tests.provisioning.test_host_config import SCHEMA, text_of

SERVER = "https://updates.example.com"
SHA = "12" * 32


def run(*args: str, **env: str | None) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        main,
        ["host-config", *args],
        env={"NEBULA_URL": None, "NEBULA_TOKEN": None, **env},
        catch_exceptions=False,
    )
    return result.exit_code, result.stdout, result.stderr


def test_every_flag_reaches_the_ignition() -> None:
    code, out, err = run(
        "--group", "stable",
        "--server", SERVER,
        "--arch", "arm64",
        "--alias-from-hostname",
        "--reboot-strategy", "etcd-lock",
        "--reboot-window", "Thu 04:00",
        "--reboot-window-length", "1h",
        "--extension", "podman",
        "--extension", "python",
        "--sysext", "kubernetes=v1.31.1",
        "--sysext", f"tailscale=1.70.0:{SHA}",
        "--sysext-url", "https://images.example.com/x",
        "--release-server",
        "-o", "ignition",
    )  # fmt: skip
    assert code == 0, out + err
    config = json.loads(out)
    jsonschema.Draft4Validator(SCHEMA).validate(config)
    assert out == render_ignition(
        build_spec(
            group="stable",
            server=SERVER,
            arch="arm64",
            alias_from_hostname=True,
            reboot_strategy="etcd-lock",
            reboot_window="Thu 04:00",
            reboot_window_length="1h",
            extensions=["podman", "python"],
            sysexts=["kubernetes=v1.31.1", f"tailscale=1.70.0:{SHA}"],
            sysext_url="https://images.example.com/x",
            release_server=True,
        )
    )
    # Only the unverified download is warned about, on stderr (stdout stays a clean config).
    assert "kubernetes-v1.31.1-arm64.raw is downloaded without verification" in err
    assert "tailscale" not in err


def test_butane_is_the_default_and_server_comes_from_nebula_url() -> None:
    code, out, err = run("--group", "beta", NEBULA_URL=SERVER)
    assert code == 0, err
    assert out == render_butane(build_spec(group="beta", server=SERVER))
    doc = yaml.safe_load(out)
    assert (doc["variant"], doc["version"]) == ("flatcar", "1.1.0")
    assert doc["storage"]["files"][0]["contents"]["inline"] == (
        f"SERVER={SERVER}/v1/update/\nGROUP=beta\n"
    )
    assert err == ""


def test_sysexts_default_to_nebula() -> None:
    code, out, err = run(
        "--group", "stable", "--server", SERVER, "--sysext", "k=1", "-o", "ignition"
    )  # fmt: skip
    assert code == 0
    assert f"Path={SERVER}/v1/extensions/stable/k/\n" in text_of(
        json.loads(out), "/etc/sysupdate.k.d/k.conf"
    )
    # Offline (no token): the one warning is the unverified first download.
    assert (
        err
        == "warning: k-1-x86-64.raw is downloaded without verification (give --sysext k=1:SHA256)\n"
    )


def test_mistakes_are_one_line_without_output() -> None:
    for args, word in [
        (["--group", "stable"], "--server"),
        (["--group", "st able", "--server", SERVER], "group"),
        (["--group", "stable", "--server", SERVER, "--reboot-window", "Thu 04:00"], "both"),
        (["--group", "stable", "--server", SERVER, "--sysext", "k8s"], "NAME=VERSION"),
        (["--group", "stable", "--server", SERVER, "--reboot-strategy", "now"], "now"),
    ]:
        code, out, err = run(*args)
        assert code == 2, (args, out, err)
        assert out == ""  # nothing half-written to a file redirected from stdout
        assert word in err and "Traceback" not in err


def test_imports_nothing_heavy() -> None:
    """The command must not pull in the server (aiohttp, SQLAlchemy, lxml) to print a file."""
    code = (
        "import sys, nebula.cli.hostconfig; "
        "print(' '.join(m for m in ('aiohttp', 'sqlalchemy', 'lxml', 'nebula.web', "
        "'nebula.store') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == ""


def test_readme_host_config_commands_run() -> None:
    """Every `nebula host-config` line of the README's guide runs as written (catches a flag
    renamed in the code but not in the guide)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    guide = re.search(r"^## Hosts from first boot\n(.*?)(?=^## )", readme, re.S | re.M)
    assert guide is not None
    blocks = re.findall(r"```sh\n(.*?)```", guide.group(1), re.S)
    commands = [
        line.split(">")[0]
        for block in blocks
        for line in block.replace("\\\n", " ").splitlines()
        if line.startswith("nebula host-config")
    ]
    assert len(commands) >= 3
    for command in commands:
        code, out, err = run(*shlex.split(command)[2:])
        assert code == 0, (command, err)
        assert out.startswith(("variant: flatcar", "{"))
