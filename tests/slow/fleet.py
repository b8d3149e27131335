"""Real Nebula server processes for the slow suite: several `nebula serve` on one database.

Each server runs in the interpreter running the tests (so in the same virtualenv), listens on
its own free 127.0.0.1 port and writes its log to a file (a pipe nobody reads would fill up and
stall the server). `Fleet` is an async context manager: it starts every server and waits for
`/readyz`, and on the way out always stops them (SIGTERM, then SIGKILL after a grace period) and
prints their logs, which pytest shows with a failing test.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

# nebula.cli.main has no __main__ block; this runs its click group as the console script would.
_LAUNCH = "import sys; from nebula.cli.main import main; sys.argv[0] = 'nebula'; main()"
_STOP_GRACE = 10.0


def nebula_command(*args: str) -> list[str]:
    return [sys.executable, "-c", _LAUNCH, *args]


def child_env(**settings: object) -> dict[str, str]:
    """The environment of a child: this one without NEBULA_* settings, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEBULA_")}
    env.update({f"NEBULA_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def run_cli(*args: str, timeout: float = 60.0) -> str:
    """Run `nebula ARGS...` to completion; its stdout."""
    done = subprocess.run(
        nebula_command(*args),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"`nebula {' '.join(args[:2])}` exited {done.returncode}:\n{done.stderr[-3000:]}"
        )
    return done.stdout


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 right now (all held open while choosing)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Server:
    index: int
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, chars: int = 4000) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return text[-chars:]


class Fleet:
    """`count` server processes on `db_url`, sharing one payload directory."""

    def __init__(
        self,
        count: int,
        *,
        db_url: str,
        payload_dir: Path,
        key_file: Path,
        workdir: Path,
        cache_ttl: float = 1.0,
        pool_size: int = 10,
    ) -> None:
        self.count = count
        self.db_url = db_url
        self.payload_dir = payload_dir
        self.key_file = key_file
        self.workdir = workdir
        self.cache_ttl = cache_ttl
        self.pool_size = pool_size
        self.servers: list[Server] = []

    @property
    def bases(self) -> list[str]:
        return [s.base for s in self.servers]

    def _spawn(self, index: int, port: int, attempt: int) -> Server:
        log = self.workdir / f"server-{index}-{attempt}.log"
        base = f"http://127.0.0.1:{port}"
        args = nebula_command(
            "serve",
            "--db",
            self.db_url,
            "--listen",
            f"127.0.0.1:{port}",
            "--public-url",
            base,
            "--trusted-key",
            str(self.key_file),
            "--payload-dir",
            str(self.payload_dir),
            "--log-level",
            "warning",  # no access log: hundreds of lines per wave say nothing here
            # Each server is one replica, one process: the probes that wait for a replica's
            # catalog reach that process (workers are tested in tests/cli/test_workers.py).
            "--workers",
            "1",
        )
        env = child_env(cache_ttl=self.cache_ttl, db_pool_size=self.pool_size)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
            )
        return Server(index, port, log, proc)

    async def _wait_ready(
        self, http: aiohttp.ClientSession, server: Server, timeout: float
    ) -> bool:
        """True once /readyz answers 200; False if the process exited first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                return False
            try:
                async with http.get(f"{server.base}/readyz") as resp:
                    if resp.status == 200:
                        return True
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(
            f"server {server.index} on port {server.port} not ready after {timeout:.0f}s; "
            f"log:\n{server.tail()}"
        )

    async def start(self, timeout: float = 45.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.payload_dir.mkdir(parents=True, exist_ok=True)
        ports = free_ports(self.count)
        self.servers = [self._spawn(i, port, 0) for i, port in enumerate(ports)]
        timeouts = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeouts) as http:
            for attempt in range(1, 4):
                ready = await asyncio.gather(
                    *(self._wait_ready(http, s, timeout) for s in self.servers)
                )
                if all(ready):
                    return
                # An exited server: most likely its port was taken between choosing and
                # binding. Start it again on another port; give up after a few attempts.
                for i, ok in enumerate(ready):
                    if not ok:
                        if attempt == 3:
                            server = self.servers[i]
                            raise AssertionError(
                                f"server {i} exited with {server.proc.returncode} at start; "
                                f"log:\n{server.tail()}"
                            )
                        (port,) = free_ports(1)
                        self.servers[i] = self._spawn(i, port, attempt)

    def assert_alive(self) -> None:
        for s in self.servers:
            assert s.proc.poll() is None, (
                f"server {s.index} exited with {s.proc.returncode} during the test; "
                f"log:\n{s.tail()}"
            )

    def logs(self) -> str:
        return "\n".join(
            f"--- server {s.index} (port {s.port}, exit {s.proc.returncode}) ---\n{s.tail()}"
            for s in self.servers
        )

    def stop(self) -> None:
        """Stop every server: SIGTERM to all, then SIGKILL to any still there after the grace."""
        for s in self.servers:
            if s.proc.poll() is None:
                s.proc.terminate()
        deadline = time.monotonic() + _STOP_GRACE
        for s in self.servers:
            try:
                s.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait(timeout=_STOP_GRACE)

    async def __aenter__(self) -> Fleet:
        try:
            await self.start()
        except BaseException:
            self.stop()
            print(self.logs())
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        self.stop()
        # Captured output: pytest shows it only when the test failed.
        print(self.logs())
        return None
