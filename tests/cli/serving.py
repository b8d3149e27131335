"""`nebula serve` as a real subprocess for the CLI tests: started with flags (none of the test
runner's NEBULA_* settings leak in), its output in a file, waited for with bounded polls, and
always stopped (SIGTERM, then SIGKILL of its whole process group after a grace period)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.slow.fleet import child_env, nebula_command

START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


@dataclass
class Serve:
    proc: subprocess.Popen[bytes]
    log: Path
    base: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, what: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
        """Poll `what` until true; AssertionError with the log if the server exits first or it
        never becomes true within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if what():
                return
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"nebula serve exited {self.proc.returncode}:\n{self.output()}"
                )
            time.sleep(0.05)
        raise AssertionError(f"gave up waiting after {timeout:.0f} s:\n{self.output()[-4000:]}")

    def wait_listening(self) -> None:
        self.wait_for(lambda: "nebula listening on" in self.output())

    def get(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        """One GET on a connection of its own (so SO_REUSEPORT may pick any worker)."""
        req = urllib.request.Request(self.base + path, headers={"Connection": "close"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    def post(self, path: str, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        return self.post_from(path, body, None)

    def post_from(
        self, path: str, body: bytes, forwarded_for: str | None
    ) -> tuple[int, bytes, dict[str, str]]:
        """A POST as if through a proxy for `forwarded_for` (when the server trusts 127.0.0.1)."""
        headers = {"Content-Type": "text/xml", "Connection": "close"}
        if forwarded_for:
            headers["X-Forwarded-For"] = forwarded_for
        req = urllib.request.Request(self.base + path, data=body, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Signal the server and wait for it to exit; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"nebula serve did not stop:\n{self.output()[-4000:]}") from None

    def kill_worker(self, pid: int) -> None:
        """SIGKILL one worker of the server (a pid its X-Nebula-Worker header named)."""
        os.kill(pid, signal.SIGKILL)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def start_serve(work: Path, port: int, *args: str, **settings: object) -> Serve:
    """`nebula serve --listen 127.0.0.1:PORT ARGS...` with NEBULA_* `settings`, in `work`."""
    work.mkdir(parents=True, exist_ok=True)
    log = work / f"serve-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            nebula_command("serve", "--listen", f"127.0.0.1:{port}", *args),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env(**settings),
            cwd=work,
            start_new_session=True,  # so that kill() ends its workers too
        )
    return Serve(proc, log, f"http://127.0.0.1:{port}")


def run_serve(work: Path, port: int, *args: str, timeout: float = START_TIMEOUT) -> tuple[int, str]:
    """Run a `nebula serve` expected to fail at start: its exit status and output."""
    server = start_serve(work, port, *args)
    try:
        return server.proc.wait(timeout=timeout), server.output()
    except subprocess.TimeoutExpired:
        server.kill()
        raise AssertionError(f"nebula serve kept running:\n{server.output()}") from None
