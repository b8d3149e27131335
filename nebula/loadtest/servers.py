"""The two servers of a bench run, each a subprocess on 127.0.0.1: `nebula serve` and the ceiling.

Each runs in a session (process group) of its own, so that stopping it ends its workers too, and
only what the bench started is ever signalled. Output goes to a log file whose tail is shown
when a server does not come up. Nebula is started as an operator would start it, with flags;
none of the caller's NEBULA_* variables leak into it.

Imports nothing of Nebula (the commands are strings).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT = 60.0  # seconds for a server to answer /healthz
STOP_TIMEOUT = 15.0  # seconds for a server to drain after SIGTERM before it is killed


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("NEBULA_")}


def start(name: str, argv: list[str], port: int, work: Path) -> Server:
    log = work / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_clean_env(),
            start_new_session=True,
        )
    return Server(name, f"http://{HOST}:{port}", process, log)


def nebula_argv(
    port: int, db_url: str, payload_dir: Path, key: Path, workers: int | None
) -> list[str]:
    argv = [
        sys.executable,
        "-c",
        "from nebula.cli.main import main; main()",
        "serve",
        "--db",
        db_url,
        "--listen",
        f"{HOST}:{port}",
        "--public-url",
        f"http://{HOST}:{port}",
        "--payload-dir",
        str(payload_dir),
        "--trusted-key",
        str(key),
        "--no-migrate",  # the bench migrated it
        # An access log line per request is an operator's choice; the bench measures the work.
        "--log-level",
        "warning",
    ]
    if workers is not None:
        argv += ["--workers", str(workers)]
    return argv


def ceiling_argv(port: int, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "nebula.loadtest.ceiling",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def wait_ready(server: Server, timeout: float = START_TIMEOUT) -> None:
    """Poll GET /healthz until it answers 200; RuntimeError if the server dies or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(server.url + "/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not answer within {timeout:.0f} s:\n{server.log_tail()}")


def post(server: Server, path: str, body: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """One POST from this process (outside any event loop): the status and the body."""
    request = urllib.request.Request(
        server.url + path, data=body, headers={"Content-Type": "text/xml"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def cpu_seconds(server: Server) -> float | None:
    """CPU time (user and system) used so far by the server's processes: its whole session,
    workers included, as /proc tells on Linux; None elsewhere. Work done per request is what a
    shared machine measures best: other jobs stretch wall time, not work."""
    session = server.process.pid
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        # The fields after the command (which may hold spaces) in parentheses: state is
        # field 3, the session field 6, utime and stime fields 14 and 15.
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[3]) == session:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def stop(server: Server) -> None:
    """SIGTERM to the server's process group, then SIGKILL if it has not gone in time."""
    if server.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(STOP_TIMEOUT)
    # Workers left behind by a parent that died first share its group: end them too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(server.process.pid, signal.SIGKILL)
