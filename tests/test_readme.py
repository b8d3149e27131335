"""The README's walkthrough, run as written: the "Try it" commands, then the "Rollouts" example,
then "Your own application" (a custom app from nothing to a rollout with the CLI alone).

The shell blocks are taken from README.md itself and run by bash in a scratch directory that
looks like a checkout (`.venv` and `tests/` link to the real ones), with the one `nebula serve`
line started in the background. Only the port is changed (8000 may be taken on a shared
machine). A README whose commands fail, or whose rollout example applies half a change, fails
here rather than for the first operator who follows it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def _first_sh_block(text: str) -> str:
    match = re.search(r"```sh\n(.*?)```", text, re.S)
    assert match, "no sh block"
    return match.group(1)


def _script(port: int) -> str:
    try_it = _first_sh_block(_section("Try it"))
    rollouts = _first_sh_block(_section("Rollouts"))
    own_app = _first_sh_block(_section("Your own application"))
    serve_lines = [line for line in try_it.splitlines() if " serve " in line]
    assert len(serve_lines) == 1, serve_lines
    serve = serve_lines[0].split("#")[0].strip()
    started = (
        f"{serve} --listen 127.0.0.1:{port} > serve.log 2>&1 &\n"
        "echo $! > serve.pid\n"
        "for _ in $(seq 1 300); do\n"
        f"  curl -sf http://127.0.0.1:{port}/healthz > /dev/null && break; sleep 0.1\n"
        "done\n"
    )
    try_it = try_it.replace(serve_lines[0], started)
    body = "\n".join((try_it, rollouts, own_app)).replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    return "set -euo pipefail\ntrap 'kill $(cat serve.pid) 2>/dev/null || true' EXIT\n" + body


def test_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    """Catches a README command that fails (an option renamed, a floor whose package the
    walkthrough never uploads, a token written to another database than the server's), and
    a rollout example that leaves the policy other than it says."""
    (tmp_path / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    (tmp_path / "tests").symlink_to(ROOT / "tests", target_is_directory=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NEBULA_") and k not in ("VIRTUAL_ENV",)
    }
    env["PATH"] = f"{Path(sys.prefix) / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        ["bash", "-c", _script(free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = (tmp_path / "serve.log").read_text() if (tmp_path / "serve.log").exists() else ""
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\nserver:\n{log}"
    out = result.stdout
    # The update check was answered with the upload, extension after the main payload.
    assert '<manifest version="4152.2.3">' in out
    assert re.search(r'name="oem-azure.gz"[^>]*required="false"', out)
    # The rollout example's policy, as `policy show` printed it.
    assert re.search(r"updates per period\s+50 per 1h", out)
    assert re.search(r"floors\s+4081\.2\.0", out)
    assert re.search(r"percentage\s+25%", out)
    assert re.search(r"pause on failures\s+5 hosts or 10%", out)
    assert "dbff85b41ae14f41bde761eefbdafaac held" in out
    # The custom app's host was offered the app's package, and its rollout counts it.
    assert '<app appid="io.example.agent" status="ok">' in out
    assert '<manifest version="1.1.0">' in out
    assert "group agent-canary (amd64) -> 1.1.0: running" in out
    assert re.search(r"in progress\s+1\n", out)
    assert "groups: agent-canary (amd64)" in out
    assert "Traceback" not in result.stderr + log
