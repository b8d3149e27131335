"""`nebula package upload` shows a progress bar on a terminal and nothing on a pipe (issue 9,
item 4): the real command in a child process, its stderr a pseudo-terminal or a pipe, against a
real server.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from tests.factories import payload_file
from tests.slow.fleet import child_env, nebula_command

MAIN = "flatcar_production_update.gz"


async def _upload(
    server: str, token: str, payload: Path, version: str, tty: bool
) -> tuple[int, str, str]:
    """Run the upload; (exit code, stdout, stderr), stderr read from a pty when `tty`."""
    master, slave = pty.openpty() if tty else (-1, -1)
    proc = await asyncio.create_subprocess_exec(
        *nebula_command("package", "upload", str(payload), "--version", version, "--arch", "amd64"),
        "-o",
        "json",
        env=child_env(url=server, token=token),
        stdout=asyncio.subprocess.PIPE,
        stderr=slave if tty else asyncio.subprocess.PIPE,
    )
    if tty:
        os.close(slave)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = err.decode(errors="replace") if err else ""
    if tty:
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child's side is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(master)
        text = b"".join(chunks).decode(errors="replace")
    return proc.returncode or 0, out.decode(), text


async def test_progress_on_a_terminal_nothing_on_a_pipe(
    server: str, admin_token: str, tmp_path: Path, signing_key: RSAPrivateKey
) -> None:
    """Catches a bar drawn into a pipe (or logs), no bar on a terminal, and a bar that breaks
    the upload or its JSON answer on stdout."""
    payload = payload_file(tmp_path, MAIN, signing_key, size=256 * 1024)
    code, out, err = await _upload(server, admin_token, payload, "4152.2.3", tty=True)
    assert code == 0, err
    assert json.loads(out)["version"] == "4152.2.3"
    assert "uploading" in err and "100%" in err, err
    code, out, err = await _upload(server, admin_token, payload, "4152.2.4", tty=False)
    assert code == 0, err
    assert json.loads(out)["version"] == "4152.2.4"
    assert err == "", err
